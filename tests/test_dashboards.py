"""`fleetwatch dashboards`: committed files match the generator, pass Grafana's own schema (tsc
against @grafana/schema), and follow the import rules. tests/test_e2e.py runs every panel query
against a real Prometheus."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from exporter.catalogue import ENGINE_SEEN

from exporter.engines import ENGINES
from exporter.render.dashboards import PROCESS_SERIES, QUERY_VARIABLES, build, scoped

from conftest import need

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "grafana"
SCHEMA = ROOT / "tests" / "grafana-schema"  # package.json pins @grafana/schema and typescript; `npm ci` there
BOARDS = {name: json.loads(text) for name, text in build().items()}


NO_SCHEMA = "@grafana/schema and typescript not installed (npm ci --prefix tests/grafana-schema; needs Node.js and npm)"


def fleetwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in board["panels"]:
        yield p
        yield from p.get("panels", [])


def queries(board: dict[str, Any]) -> Iterator[str]:
    for p in panels(board):
        for t in p.get("targets", []):
            yield t["expr"]


def test_committed_dashboards_match_the_generator(tmp_path: Path) -> None:
    r = fleetwatch("dashboards", "-o", "grafana", "--check")
    assert r.returncode == 0, r.stderr
    shutil.copytree(GRAFANA, tmp_path / "grafana")
    f = tmp_path / "grafana" / "fleetwatch-tier.json"
    f.write_text(f.read_text().replace("$__rate_interval", "5m", 1))
    r = fleetwatch("dashboards", "-o", str(tmp_path / "grafana"), "--check")
    assert r.returncode == 1 and "fleetwatch-tier.json: differs" in r.stderr


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_dashboards_follow_the_import_rules(name: str) -> None:
    board = BOARDS[name]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert set(QUERY_VARIABLES) <= set(variables)
    assert re.fullmatch(r"fleetwatch-[a-z]+", board["uid"])
    for p in panels(board):
        if p["type"] == "row":
            continue
        assert p.get("description"), f"{name}: panel {p['title']!r} has no description"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["fieldConfig"]["defaults"].get("unit"), f"{name}: panel {p['title']!r} has no unit"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
    for expr in queries(board):
        # rates over $__rate_interval; the one fixed range is the lookback that says which engines are deployed
        windows = re.findall(r"(\w+)\([^()\[]*\[([^\]]+)\]", expr)
        assert len(windows) == expr.count("["), (name, expr)  # every range is some function's
        assert all(w == "$__rate_interval" or (f == "last_over_time" and w == ENGINE_SEEN) for f, w in windows), (
            name, expr)
        # fleetwatch's own process series have no tier: a query of them alone is about fleetwatch itself
        tierless = set(re.findall(r"fleetwatch_\w+", expr)) <= set(PROCESS_SERIES) and "fleetwatch_" in expr
        assert "$tier" in expr or tierless, f"{name}: a query not narrowed to the selected tiers: {expr}"


ENGINE_NAMES = sorted({n for e in ENGINES for names in e.names.values() for n in names}, key=len, reverse=True)
SCOPE = ('cluster=~"$cluster"', 'namespace=~"$namespace"', 'model_name=~"$model"')


def selectors_of_engines(expr: str) -> list[str]:
    """The label matchers of every selector of an engine series in ``expr``: after a name written out, or
    holding the name in a __name__ matcher."""
    named = re.findall(r'\{([^{}]*__name__=~"([^"]*)"[^{}]*)\}', expr)
    out = [body for body, names in named if set(names.split("|")) & set(ENGINE_NAMES)]
    outside = re.sub(r'__name__=~"[^"]*"', "", expr)
    for m in re.finditer(r'(?<![\w:"|])(' + "|".join(map(re.escape, ENGINE_NAMES)) + r')(?:_bucket|_sum|_count)?'
                         r'(?![\w:])(\{[^{}]*\})?', outside):
        out.append(m[2] or "")
    return out


def test_every_engine_series_is_narrowed_by_every_variable() -> None:
    """cluster, namespace, model and tier narrow every engine selector of every panel and variable: a selector left
    out would mix in another namespace's or model's engines once the operator picks one."""
    checked = 0
    for name, board in BOARDS.items():
        exprs = [*queries(board), *(v["query"]["query"] for v in board["templating"]["list"]
                                   if v["name"] == "instance")]
        for expr in exprs:
            for body in selectors_of_engines(expr):
                checked += 1
                assert all(m in body for m in SCOPE) and "$tier" in body, (name, body, expr)
    assert checked > 100, checked


def test_scoping_leaves_strings_and_recorded_series_alone() -> None:
    text = '"vllm:num_requests_running"'
    expr = (f'label_replace(vllm:num_requests_running, "from", {text}, "", "") and on (tier) '
            f'tier:fleetwatch_instances:count and DCGM_FI_DEV_GPU_UTIL{{pod=""}}')
    out = scoped(expr)
    assert out.count(text) == 1 and "tier:fleetwatch_instances:count and" in out
    assert selectors_of_engines(out) and all(m in b for b in selectors_of_engines(out) for m in SCOPE)
    dcgm = re.search(r"DCGM_FI_DEV_GPU_UTIL\{([^}]*)\}", out)
    assert dcgm and 'pod=""' in dcgm[1] and SCOPE[0] in dcgm[1] and "namespace" not in dcgm[1]
    # a label the selector already matches keeps its matcher
    assert scoped('vllm:num_requests_running{tier="a"}').count("tier=") == 1


def test_each_variable_reads_only_the_ones_before_it() -> None:
    """Grafana resolves chained variables in order: a variable reading itself or a later one never resolves."""
    for name, board in BOARDS.items():
        names = [v["name"] for v in board["templating"]["list"]]
        assert [n for n in names if n in QUERY_VARIABLES] == list(QUERY_VARIABLES), name
        for v in board["templating"]["list"]:
            if v["type"] != "query":
                continue
            used = set(re.findall(r"\$(\w+)", v["query"]["query"]))
            assert used <= set(names[:names.index(v["name"])]), (name, v["name"], used)


# what a description must say for each unit: a reader of the description alone knows what the numbers count
UNIT_SAID = {"s": r"\bseconds\b", "percentunit": r"\bpercent\b", "reqps": r"\bper second\b", "currencyUSD": r"\bUSD\b",
             "watt": r"\bwatts\b", "celsius": r"\bCelsius\b", "hertz": r"\bMHz\b",
             "short": r"\b(requests|tokens|instances|per second|exporters|seconds|one row per finding)\b"}


def test_every_description_says_its_unit() -> None:
    said = 0
    for name, board in BOARDS.items():
        for p in panels(board):
            if p["type"] == "row":
                continue
            unit = p["fieldConfig"]["defaults"]["unit"]
            assert re.search(UNIT_SAID[unit], p["description"]), (name, p["title"], unit, p["description"])
            said += 1
    assert said > 40, said


def test_uids_are_unique_and_stable() -> None:
    uids = [b["uid"] for b in BOARDS.values()]
    assert len(set(uids)) == len(uids)
    assert {json.loads((GRAFANA / n).read_text())["uid"] for n in BOARDS} == set(uids)
    for b in BOARDS.values():
        ids = [p["id"] for p in panels(b)]
        assert len(set(ids)) == len(ids)


def _enums() -> dict[str, dict[str, str]]:
    """The string enums of Grafana's dashboard types: enum -> value -> member."""
    d_ts = (SCHEMA / "node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts").read_text()
    out = {}
    for name, body in re.findall(r"export declare enum (\w+) \{([^}]*)\}", d_ts):
        out[name] = {v: m for m, v in re.findall(r'(\w+) = "([^"]*)"', body)}
    return out


# string-enum fields of the JSON model (TypeScript does not take a string literal for a string enum)
_ENUM_FIELDS = {("thresholds", "mode"): "ThresholdsMode", ("color", "mode"): "FieldColorModeId"}


# An annotation's target is the data source's own query type; @grafana/schema types it as the bare DataQuery and
# does not ship Prometheus's, so it is checked against this one (strictly: no other keys) and then used as DataQuery.
PROM_QUERY = "type PromQuery = DataQuery & { expr: string; legendFormat?: string };"


def _ts(v: Any, enums: dict[str, dict[str, str]], parent: str = "", key: str = "") -> str:
    if isinstance(v, dict) and (parent, key) == ("list", "target"):
        body = "{" + ", ".join(f"{json.dumps(k)}: {_ts(x, enums, key, k)}" for k, x in v.items()) + "}"
        return f"({body} satisfies PromQuery) as DataQuery"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_ts(x, enums, key, k)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_ts(x, enums, parent, key) for x in v) + "]"
    enum = _ENUM_FIELDS.get((parent, key))
    if enum and isinstance(v, str) and v in enums.get(enum, {}):
        return f"{enum}.{enums[enum][v]}"
    return json.dumps(v)  # a value outside the enum stays a string, and tsc rejects it


def _tsc(name: str, source: str) -> subprocess.CompletedProcess[str]:
    """tsc --noEmit --strict on ``source``, written beside tests/grafana-schema/node_modules."""
    tsc = SCHEMA / "node_modules" / ".bin" / "tsc"
    need(tsc.exists(), NO_SCHEMA)
    check = SCHEMA / name
    check.write_text(source)
    try:
        return subprocess.run([str(tsc), "--noEmit", "--strict", "--module", "esnext", "--moduleResolution", "bundler",
                               "--target", "es2020", check.name], cwd=SCHEMA, capture_output=True, text=True,
                              timeout=300)
    finally:
        check.unlink()


@pytest.mark.integration
def test_every_dashboard_type_checks_against_grafanas_schema() -> None:
    need((SCHEMA / "node_modules").exists(), NO_SCHEMA)
    enums = _enums()
    lines = ["import type { Dashboard, DataQuery } from '@grafana/schema';",
             f"import {{ {', '.join(sorted(set(_ENUM_FIELDS.values())))} }} from '@grafana/schema';", PROM_QUERY]
    for i, (name, board) in enumerate(sorted(BOARDS.items())):
        lines.append(f"// {name}\nexport const d{i}: Dashboard = {_ts(board, enums)};")
    r = _tsc("check.generated.ts", "\n".join(lines) + "\n")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]


@pytest.mark.integration
def test_the_schema_check_catches_a_bad_field() -> None:
    """The check above can fail: a dashboard whose field has a type Grafana's does not allow."""
    need((SCHEMA / "node_modules").exists(), NO_SCHEMA)
    bad = dict(BOARDS["fleetwatch-plan.json"], graphTooltip="shared")
    r = _tsc("bad.generated.ts", "import type { Dashboard } from '@grafana/schema';\n"
                                 f"export const d: Dashboard = {_ts(bad, _enums())};\n")
    assert r.returncode != 0 and "DashboardCursorSync" in r.stdout, r.stdout
    # and an alert annotation whose query is not a Prometheus query (a misspelt key)
    plan = BOARDS["fleetwatch-plan.json"]
    anno = dict(plan["annotations"]["list"][0], target={"refId": "alerts", "exprs": "ALERTS"})
    bad = dict(plan, annotations={"list": [anno]})
    r = _tsc("bad.generated.ts", "import type { Dashboard, DataQuery } from '@grafana/schema';\n" + PROM_QUERY
             + f"\nexport const d: Dashboard = {_ts(bad, _enums())};\n")
    assert r.returncode != 0 and "exprs" in r.stdout, r.stdout


REFERENCE = ROOT / "tests" / "fixtures" / "reference" / "dashboards"
BOARD_TITLES = {"Fleet overview": "fleetwatch-fleet.json", "Tier drill-down": "fleetwatch-tier.json",
                "Plan validation": "fleetwatch-plan.json"}


def _readme_block(name: str) -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split(f"<!-- {name} -->\n", 1)[1].split(f"<!-- /{name} -->", 1)[0]


def test_readme_lists_every_fleetwatch_panel_as_generated() -> None:
    from exporter.render.dashboards import panel_table

    assert _readme_block("panel table") == panel_table()


def test_every_panel_of_the_dashboards_operators_run_is_covered_or_explained() -> None:
    """vLLM's, vLLM production-stack's and NVIDIA's dashboards: each panel has a line naming fleetwatch's panel that covers it
    (which must exist) or saying why none does."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in _readme_block("panel coverage").splitlines()[2:]]
    listed = {(board, panel): why for board, panel, why in rows}
    titles = {name: {p["title"] for p in panels(b) if p["type"] != "row"} for name, b in BOARDS.items()}
    for f in sorted(REFERENCE.rglob("*.json")):
        ref = json.loads(f.read_text())
        for p in panels(ref):
            if p.get("type") == "row":
                continue
            why = listed.get((ref["title"], p["title"]))
            assert why, f"{f.name}: {p['title']!r} is not in the README's coverage table"
            named = re.findall(r"`(Fleet overview|Tier drill-down|Plan validation): ([^`]+)`", why)
            assert named or why.startswith(("not covered", "not shown", "not yet")), (p["title"], why)
            for board, panel in named:
                assert panel in titles[BOARD_TITLES[board]], f"no fleetwatch panel {board}: {panel} ({why})"
    assert len(listed) == len(rows)  # one line per panel


def test_runbook_links_name_alerts_the_rules_raise() -> None:
    """Each panel's runbook link opens the entry of an alert the generated rules have, under the runbook variable."""
    import yaml

    from exporter.config import load_config
    from exporter.render.rules import build

    rules = yaml.safe_load(build(load_config(str(ROOT / "examples" / "fleet.yaml")))["fleetwatch.rules.yml"])
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    linked = [(p["title"], link["url"]) for b in BOARDS.values() for p in panels(b) for link in p.get("links", [])
              if link["title"].startswith("Runbook: ")]
    assert len(linked) >= 10, linked
    anchors = {a.lower(): a for a in alerts}
    for title, url in linked:
        base, _, anchor = url.partition("#")
        assert base == "${runbook}" and anchor in anchors, (title, url)
    board = BOARDS["fleetwatch-fleet.json"]
    assert any(v["name"] == "runbook" for v in board["templating"]["list"])


def test_preview_and_out_flags_say_what_is_missing(tmp_path: Path) -> None:
    bad = fleetwatch("dashboards", "--preview", str(tmp_path / "p"), "--prometheus", "ftp://x")
    assert bad.returncode == 2 and "http:// or https://" in bad.stderr and len(bad.stderr.splitlines()) == 1
    down = fleetwatch("dashboards", "--preview", str(tmp_path / "p"), "--prometheus", "http://127.0.0.1:9")
    assert down.returncode == 2 and "http://127.0.0.1:9" in down.stderr and len(down.stderr.splitlines()) == 1
    none = fleetwatch("dashboards")
    assert none.returncode == 2 and "-o DIR" in none.stderr
