"""`fleetwatch rules`: committed outputs match the generator; promtool accepts and tests them;
the PrometheusRule rendering validates against the operator's CRD schema."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from exporter.config import load_config

from conftest import REFERENCE, binary

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules"
EXAMPLE = ROOT / "examples" / "fleet.yaml"


def fleetwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_committed_rules_and_runbook_match_the_generator(tmp_path: Path) -> None:
    r = fleetwatch("rules", "--config", str(EXAMPLE), "-o", "rules", "--check")
    assert r.returncode == 0, r.stderr
    # and --check notices drift: a copy with one byte changed
    shutil.copytree(RULES, tmp_path / "rules")
    f = tmp_path / "rules" / "fleetwatch.rules.yml"
    f.write_text(f.read_text().replace("offset 5m", "offset 6m", 1))
    r = fleetwatch("rules", "--config", str(EXAMPLE), "-o", str(tmp_path / "rules"), "--check")
    assert r.returncode == 1 and "fleetwatch.rules.yml: differs" in r.stderr


def test_rules_write_everything_under_the_output_folder(tmp_path: Path) -> None:
    """The runbook goes to OUT/runbook.md, never into the current directory (it used to overwrite one)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "runbook.md").write_text("mine\n")
    r = subprocess.run([sys.executable, "-m", "exporter", "rules", "--config", str(EXAMPLE), "-o",
                        str(tmp_path / "out")], capture_output=True, text=True, cwd=cwd, timeout=120,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert (cwd / "runbook.md").read_text() == "mine\n"
    assert sorted(p.name for p in cwd.iterdir()) == ["runbook.md"]
    written = {p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert "runbook.md" in written and "fleetwatch.rules.yml" in written


def test_promtool_checks_and_tests_the_committed_rules() -> None:
    promtool = binary("promtool")
    r = subprocess.run([promtool, "check", "rules", "fleetwatch.rules.yml"], cwd=RULES, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([promtool, "test", "rules", "tests/fleetwatch_test.yml"], cwd=RULES, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]


def _alert_rules() -> list[dict]:  # type: ignore[type-arg]
    doc = yaml.safe_load((RULES / "fleetwatch.rules.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_every_alert_follows_the_conventions_and_has_a_runbook_entry_and_tests() -> None:
    doc = yaml.safe_load((RULES / "fleetwatch.rules.yml").read_text())
    for g in doc["groups"]:
        assert set(g) <= {"name", "interval", "rules", "limit"}, "2.42 rejects group labels and query_offset"
    headings = {ln[3:].strip().lower() for ln in (RULES / "runbook.md").read_text().splitlines()
                if ln.startswith("## ")}
    tests = yaml.safe_load((RULES / "tests" / "fleetwatch_test.yml").read_text())["tests"]
    tested: dict[str, list[int]] = {}
    for t in tests:
        for a in t["alert_rule_test"]:
            tested.setdefault(a["alertname"], []).append(len(a["exp_alerts"]))
    config = load_config(str(EXAMPLE))
    for rule in _alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"Fleetwatch[A-Z][A-Za-z0-9]+", name), name
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        # one label set: severity and the config's labels; the tier comes from the expression, which
        # names a tier only where the rule is one tier's (a scale-down: its stabilization is its for:)
        assert set(rule["labels"]) - {"severity", "tier"} == set(config.alert_labels), name
        assert ("tier=\"" in rule["expr"]) == ("tier" in rule["labels"]) == (name == "FleetwatchScaleDown"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor == name.lower() and anchor in headings, name
        counts = tested.get(name, [])
        assert any(c > 0 for c in counts), f"{name} needs a test in which it fires"
        assert any(c == 0 for c in counts), f"{name} needs a test at its boundary in which it does not fire"


def test_thresholds_are_series_not_numbers() -> None:
    """No row alert carries a tier's number: each compares with the threshold series fleetwatch exports
    from the tier's plan and band overrides (the example's overrides among them)."""
    from exporter.catalogue import band_thresholds
    rules = _alert_rules()
    config = load_config(str(EXAMPLE))
    raw = yaml.safe_load(EXAMPLE.read_text())
    exported = {(tier, row, sev, side): v for tier, t in config.tiers.items()
                for row, sev, side, v in band_thresholds(t.plan, t.bands)}
    for tier, t in raw["tiers"].items():
        for row, override in (t.get("bands") or {}).items():
            for bound, value in override.items():
                severity, side = bound.split("_")
                assert exported[(tier, row, severity, side)] == value, (tier, row, bound)
                hits = [r for r in rules if r["labels"]["severity"] == severity and f"tier:fleetwatch_{row}:" in r["expr"]
                        and f'row="{row}",severity="{severity}",side="{side}"' in r["expr"]]
                assert len(hits) == 1, (tier, row, bound)
    band_rules = [r for r in rules if "tier:fleetwatch_band_threshold:max" in r["expr"]]
    assert len(band_rules) >= 20
    for r in band_rules:  # a number in a comparison is a floor or 0 (serving), never a tier's threshold
        assert not re.search(r"[<>]=? (?!0\b|1\b)[0-9.]+", r["expr"]), r["expr"]


def test_prometheusrule_renders_the_same_groups_and_fits_the_crd() -> None:
    import jsonschema  # a test dependency: validates the custom resource against the CRD
    crd = yaml.safe_load((REFERENCE / "prometheus-operator-crds" /
                          "monitoring.coreos.com_prometheusrules.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    files = [p for p in RULES.iterdir() if "prometheusrule" in p.name]
    assert len(files) == 1
    pr = yaml.safe_load(files[0].read_text())
    jsonschema.Draft7Validator(schema).validate(pr)  # the CRD's Go regexes are not Python ones: no metaschema check
    plain = yaml.safe_load((RULES / "fleetwatch.rules.yml").read_text())
    assert pr["kind"] == "PrometheusRule" and pr["spec"]["groups"] == plain["groups"]


def test_every_alert_carries_the_configs_static_labels() -> None:
    """alert_labels (here the example's namespace) reach every generated alert and its promtool test case."""
    cfg = load_config(str(EXAMPLE))
    assert cfg.alert_labels, "the example sets alert_labels"
    doc = yaml.safe_load((RULES / "fleetwatch.rules.yml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"] if "alert" in r]
    assert rules and all(r["labels"].items() >= cfg.alert_labels.items() for r in rules)
    tests = yaml.safe_load((RULES / "tests" / "fleetwatch_test.yml").read_text())["tests"]
    expected = [a["exp_labels"] for t in tests for case in t["alert_rule_test"] for a in case["exp_alerts"]]
    assert expected and all(e.items() >= cfg.alert_labels.items() for e in expected)
    # and an alert's own labels are never replaced by them
    assert all(r["labels"]["severity"] in ("warning", "critical") for r in rules)


def test_fleetwatch_watches_itself() -> None:
    """Alerts when fleetwatch is absent or its cycles stale, when its notifications fail or are dropped,
    and when a target (an engine or dcgm-exporter) has failed every scrape for ten minutes."""
    names = {r["alert"]: r for r in _alert_rules()}
    for name in ("FleetwatchAbsent", "FleetwatchCycleStale", "FleetwatchNotificationsFailed",
                 "FleetwatchNotificationsDropped"):
        assert name in names and "tier" not in names[name]["labels"], name
    config = load_config(str(EXAMPLE))
    for per_tier in ("FleetwatchScrapeFailing", "FleetwatchEngineSeriesMissing"):
        (rule,) = [r for r in _alert_rules() if r["alert"] == per_tier]  # one rule, every tier
        assert "by (tier" in rule["expr"] and "tier=\"" not in rule["expr"], per_tier
    stale = names["FleetwatchCycleStale"]["expr"]
    assert stale.endswith(f"> {config.stale_after:g}"), stale  # /healthz's bound


def _entries() -> dict[str, str]:
    text = (RULES / "runbook.md").read_text()
    parts = re.split(r"^## ", text, flags=re.M)[1:]
    return {p.split("\n", 1)[0].strip(): p for p in parts}


def test_every_runbook_entry_can_be_followed_at_3am() -> None:
    """Each alert's own entry: its meaning, PromQL that confirms it, a link to a panel of the generated
    dashboards, ranked causes, commands (kubectl or curl), what to do; no book section numbers."""
    import json

    from exporter.render.dashboards import build as dashboards

    panels = {(b["uid"], p["id"]) for b in (json.loads(t) for t in dashboards().values()) for p in b["panels"]}
    entries = _entries()
    assert set(entries) == {r["alert"] for r in _alert_rules()}
    meanings = {}
    for name, entry in entries.items():
        assert re.search(r"\*\*What it means\.\*\* \S", entry), name
        promql = re.search(r"```promql\n(.+?)```", entry, re.S)
        assert promql and promql.group(1).strip(), f"{name}: no PromQL to confirm it"
        link = re.search(r"\*\*Dashboard\.\*\* \[[^\]]+\]\(/d/([\w-]+)\?viewPanel=(\d+)", entry)
        assert link and (link.group(1), int(link.group(2))) in panels, f"{name}: no panel, or one that does not exist"
        assert re.search(r"^1\. \S", entry, re.M), f"{name}: no ranked causes"
        commands = re.search(r"```sh\n(.+?)```", entry, re.S)
        assert commands and re.search(r"\b(kubectl|curl)\b", commands.group(1)), f"{name}: no commands"
        assert re.search(r"\*\*Do\.\*\* \S", entry), name
        assert not re.search(r"\bSteps? \d|\b9\.[1-5]\b", entry), name
        meanings[name] = re.search(r"\*\*What it means\.\*\* (.+)", entry).group(1)  # type: ignore[union-attr]
    for pair in (("FleetwatchUtilizationHigh", "FleetwatchUtilizationTrap", "FleetwatchNoHeadroom"),
                 ("FleetwatchGPUMemoryHigh", "FleetwatchGPUMemoryLow"), ("FleetwatchScaleUp", "FleetwatchScaleDown")):
        assert len({meanings[n] for n in pair}) == len(pair), pair


def test_readme_lists_every_alert_as_generated() -> None:
    from exporter.render.rules import alert_table

    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- alert table -->\n", 1)[1].split("<!-- /alert table -->", 1)[0]
    assert table == alert_table(load_config(str(EXAMPLE)))


def test_for_is_chosen_per_family_and_severity_and_the_flag_sets_every_one() -> None:
    from exporter.render.rules import build

    config = load_config(str(EXAMPLE))
    rules = _alert_rules()
    by = {(r["alert"], r["labels"]["severity"]): r["for"] for r in rules if "tier" not in r["labels"]}
    assert by[("FleetwatchTTFTP99High", "critical")] == "2m"  # the example's alerting.for.latency
    assert by[("FleetwatchTTFTP99High", "warning")] == "10m"
    assert by[("FleetwatchKVCacheEvictionHigh", "critical")] == "5m"  # capacity's default
    for name, severity in by:  # warnings wait longer than the criticals of the same alert
        if severity == "critical" and (name, "warning") in by:
            from exporter.config import parse_duration
            assert parse_duration(by[(name, "critical")]) <= parse_duration(by[(name, "warning")]), name
    drill = yaml.safe_load(build(config, for_="15s")["fleetwatch.rules.yml"])
    fors = {(r["alert"], r["labels"].get("tier")): r["for"] for g in drill["groups"] for r in g["rules"] if "alert" in r}
    stabilization = {("FleetwatchScaleDown", t): f"{c.plan.scale_down_stabilization / 60:g}m" for t, c in config.tiers.items()}
    assert {k: v for k, v in fors.items() if k not in stabilization} == {k: "15s" for k in fors if k not in stabilization}
    assert {k: fors[k] for k in stabilization} == stabilization
