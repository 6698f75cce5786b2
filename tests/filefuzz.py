"""Every input file format fleetwatch reads, mutated: shared by the property test (300 examples a
format in CI) and bench/fuzz_files.py (10,000 and more).

A case is a real example file of one format (from examples/ or written by fleetwatch itself), a list of
mutations of its structure (a value replaced by a hostile one, a key dropped or added, a value nested
deep) and optionally of its text (cut short, bytes inserted). The oracle: the command that reads the
format exits 0 with a document that holds only finite numbers, or exits 2 with one line that names
the file. Anything else (a traceback, two lines, a NaN in the output) fails the case.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import yaml
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

HOSTILE: list[Any] = [
    0, -1, 1, 2, 10 ** 400, -(10 ** 40), 2 ** 63, 1e308, -1e308, float("nan"), float("inf"), float("-inf"), 1e-320, 0.5,
    "", "x", "1e400", "\n", "a\nb", "\x07", "\u202e", "9" * 5000, "1s", "-5s", "99999y", "0s", "http://u:p@h:99999/",
    "vllm", "fp8", True, False, None, [], {}, [1, 2], {"a": 1}, {"p50": 1, "p95": 1, "p99": 1},
    # plausible but extreme: these pass validation and reach the arithmetic
    1e-9, 1e-3, 0.999, 1.0001, 1000, 1_000_000, 1e9, 1e15, 86400, 65536,
]
FACTORS = [0, -1, 1e-9, 1e-3, 0.5, 0.999, 1.001, 2, 10, 1e3, 1e6, 1e12]  # a numeric leaf scaled: near-valid values
TEXT_INSERTS = ["\x00", "\xff", "[" * 300, "{" * 300, ": : :", "\n- - -\n", "&a [*a]", "\t", "\r", "'", '"', "\\",
                "\ud800"]


@dataclass(frozen=True)
class Mutation:
    op: str  # set | scale | drop | add | nest | wrap
    where: int  # which node, modulo the number of nodes
    value: int = 0  # index into HOSTILE (scale: into FACTORS)


@dataclass(frozen=True)
class TextMutation:
    op: str  # cut | insert
    at: int
    insert: str = ""


def mutations() -> st.SearchStrategy[list[Mutation]]:
    one = st.one_of(
        st.builds(Mutation, st.sampled_from(["set", "set", "drop", "add", "nest", "wrap"]),
                  st.integers(0, 10_000), st.integers(0, len(HOSTILE) - 1)),
        st.builds(Mutation, st.just("scale"), st.integers(0, 10_000), st.integers(0, len(FACTORS) - 1)))
    return st.lists(one, min_size=1, max_size=3)


def text_mutations() -> st.SearchStrategy[list[TextMutation]]:
    one = st.one_of(st.builds(TextMutation, st.just("cut"), st.integers(0, 100_000)),
                    st.builds(TextMutation, st.just("insert"), st.integers(0, 100_000), st.sampled_from(TEXT_INSERTS)))
    return st.lists(one, max_size=2)


# ---------------------------------------------------------------- structure

def _nodes(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _nodes(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _nodes(v, path + (i,))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def mutate(doc: Any, muts: list[Mutation]) -> Any:
    doc = json.loads(json.dumps(doc))  # a copy
    for m in muts:
        nodes = _nodes(doc)[1:]  # never the root itself: a whole-document swap is one case, not the common one
        if not nodes:
            return copy.deepcopy(HOSTILE[m.value % len(HOSTILE)])
        path = nodes[m.where % len(nodes)]
        parent, key = _get(doc, path[:-1]), path[-1]
        hostile = copy.deepcopy(HOSTILE[m.value % len(HOSTILE)])  # a fresh one: never the same list twice
        if m.op == "scale":
            numbers = [p for p in nodes if isinstance(_get(doc, p), (int, float)) and not isinstance(_get(doc, p), bool)]
            if numbers:
                path = numbers[m.where % len(numbers)]
                parent, key = _get(doc, path[:-1]), path[-1]
                if isinstance(parent[key], int):  # whole numbers stay whole, and never overflow a float
                    parent[key] = int(parent[key] * Fraction(FACTORS[m.value % len(FACTORS)]))
                else:
                    parent[key] = parent[key] * FACTORS[m.value % len(FACTORS)]
        elif m.op == "set":
            parent[key] = hostile
        elif m.op == "drop":
            del parent[key]
        elif m.op == "add" and isinstance(parent, dict):
            parent[f"extra_{m.value}"] = hostile
        elif m.op == "nest":
            v = parent[key]
            for _ in range(70):  # past every depth limit, short of the interpreter's recursion limit
                v = [v]
            parent[key] = v
        elif m.op == "wrap":
            parent[key] = {"value": parent[key]}
    return doc


def mutate_text(text: str, muts: list[TextMutation]) -> str:
    for m in muts:
        at = m.at % (len(text) + 1)
        text = text[:at] if m.op == "cut" else text[:at] + m.insert + text[at:]
    return text


# ---------------------------------------------------------------- the formats

def _yaml(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=False)


def _json(doc: Any) -> str:
    return json.dumps(doc)  # NaN and Infinity written as such: a file may hold them


def _csv(doc: Any) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    for row in doc if isinstance(doc, list) else [[doc]]:
        w.writerow(row if isinstance(row, list) else [row])
    return buf.getvalue()


def _load(p: Path) -> Any:
    return yaml.safe_load(p.read_text()) if p.suffix == ".yaml" else json.loads(p.read_text())


def _config_base() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / "minimal.yaml").read_text())
    doc["tiers"]["h100"]["plan"] = yaml.safe_load((EXAMPLES / "plans" / "h100.yaml").read_text())
    doc.update({"interval": "15s", "window": "5m", "alertmanagers": ["http://127.0.0.1:9093"],
                "alert_labels": {"team": "inference"}})
    return doc


def _report_base() -> dict[str, Any]:
    return {"tiers": {"h100": {
        "metrics": {"requests_per_second": {"value": 20.0}}, "resize": {"peak_rps": 30.0},
        "history": {"covers_seconds": 90000}, "workload": {
            "input_tokens": {"p50": 900, "p95": 2000, "p99": 3500, "samples": 5000},
            "output_tokens": {"p50": 250, "p95": 500, "p99": 900, "samples": 5000}}}}}


def _state_base() -> dict[str, Any]:
    return {"version": 1, "saved_at": 1_800_000_000.0,
            "tiers": {"h100": [[1_799_999_000.0, 5.5, 3], [1_799_999_900.0, None, None]], "a100": []}}


@dataclass(frozen=True)
class Format:
    name: str
    file_name: str
    base: Callable[[], Any]
    write: Callable[[Any], str]


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("config", "fleet.yaml", _config_base, _yaml),
    Format("plan", "plan.yaml", lambda: _load(EXAMPLES / "plans" / "h100.yaml"), _yaml),
    Format("workload", "workload.yaml", lambda: _load(EXAMPLES / "plan" / "workload.yaml"), _yaml),
    Format("model", "config.json", lambda: _load(EXAMPLES / "plan" / "llama-3-70b.config.json"), _json),
    Format("catalogue", "gpus.yaml", lambda: {"H100": {"hbm_gb": 80, "hour_usd": 2.5, "tflops": {"fp16": 989}},
                                              "X1": {"hbm_gb": 96, "hbm_tb_s": 4, "tflops": {"fp16": 900, "fp8": 1800},
                                                     "interconnect": "nvlink", "interconnect_gb_s": 900,
                                                     "hour_usd": 3, "gpus_per_node": 8}}, _yaml),
    Format("sweep-csv", "sweep.csv",
           lambda: list(csv.reader(io.StringIO((EXAMPLES / "plan" / "sweep.csv").read_text()))), _csv),
    Format("sweep-json", "sweep.json", lambda: [
        {"max_concurrency": c, "request_throughput": c * 0.09, "p99_ttft_ms": 200 + 30 * c, "p99_itl_ms": 20 + c / 4,
         "mean_e2el_ms": 11_000 + 50 * c} for c in (1, 4, 8, 16, 32)], _json),
    Format("report", "report.json", _report_base, _json),
    Format("state", "fleetwatch-state.json", _state_base, _json),
)}


# ---------------------------------------------------------------- the oracle

def _main(argv: list[str]) -> tuple[int, str, str]:
    from exporter.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _no_constant(name: str) -> Any:
    raise AssertionError(f"the output holds {name}")


def _refusal_or_document(rc: int, out: str, err: str, files: list[Path]) -> str:
    """Exit 0 with a finite document, or exit 2 with one line naming one of the files (the mutated one, or
    another that it now contradicts: a sweep that misses the workload's new SLO)."""
    if rc == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("fleetwatch: "), err[:600]
        assert any(f"fleetwatch: {f}" in lines[0] for f in files), err[:600]
        assert "Traceback" not in err
        return "refused"
    assert rc == 0, (rc, err[-600:])
    if out.lstrip().startswith("{"):
        json.loads(out, parse_constant=_no_constant)
    return "ok"


def _check_config(path: Path, work: Path) -> str:
    from exporter.check import format_json
    from exporter.config import ConfigError, load_config
    from exporter.evaluate import HistoryPoint, evaluate_window
    from exporter.model import InstanceSample, Report
    from exporter.render.rules import promtool_tests, rule_groups
    from exporter.sources import vllm
    from exporter.window import tier_window

    try:
        cfg = load_config(str(path))
    except ConfigError as e:
        assert "\n" not in str(e) and str(work) in str(e), str(e)[:600]  # the config, or its plan file
        return "refused"
    # what a valid config goes on to: rules, their tests, and a report with nothing observed yet
    rule_groups(cfg, "5m", "https://example.org/runbook")
    promtool_tests(cfg, "5m", "https://example.org/runbook", "rules.yaml")
    now = 1_800_000_000.0
    for name, tier in cfg.tiers.items():  # evaluate_tier, not evaluate: that one turns a crash into a failed tier
        names = [t.name for t in tier.targets]
        samples = [InstanceSample(name, i, now - 300 + 300 * k, vllm.parse(snap)) for k, snap in enumerate(_SNAPSHOTS)
                   for i in names]
        history = [HistoryPoint(now - 3600, 1.0, 1), HistoryPoint(now - 60, 1e6, None)]
        tr = evaluate_window(tier, tier_window(name, samples, names), history, now, 300.0)
        report = Report(generated_at=now, window_seconds=300.0, tiers={name: tr})
        json.loads(format_json(report), parse_constant=_no_constant)
    return "ok"


_SNAPSHOTS = [(ROOT / "tests" / "fixtures" / "vllm" / "generated" / "vllm-0.33.0" / f"snapshot-{n}.prom").read_text()
              for n in ("05", "10")]


def _run_plan(fmt: str, path: Path, work: Path) -> str:
    inputs = {"workload": EXAMPLES / "plan" / "workload.yaml", "model": EXAMPLES / "plan" / "llama-3-70b.config.json",
              "sweep": EXAMPLES / "plan" / "sweep.csv"}
    extra: list[str] = []
    if fmt in ("workload", "model"):
        inputs[fmt] = path
    elif fmt.startswith("sweep"):
        inputs["sweep"] = path
    elif fmt == "catalogue":
        extra = ["--gpu-catalog", str(path)]
    elif fmt == "report":
        extra = ["--from-report", str(path)]
    rc, out, err = _main(["plan", "-w", str(inputs["workload"]), "-m", str(inputs["model"]), "-g", "H100",
                          "--sweep", str(inputs["sweep"]), "--format", "json", *extra])
    return _refusal_or_document(rc, out, err, [path, *inputs.values()])


def _check_state(path: Path, work: Path) -> str:
    from exporter import state

    loaded = state.load(str(work), ["h100", "a100"], now=1_800_000_000.0)
    if loaded.error is not None:
        assert "\n" not in str(loaded.error)
        return "refused"
    state.encode(loaded.history, 1_800_000_000.0)  # what is loaded can be written back
    return "ok"


def run_case(fmt: str, muts: list[Mutation], text_muts: list[TextMutation]) -> str:
    """One case in a fresh folder: "ok" or "refused"; anything else raises."""
    f = FORMATS[fmt]
    text = mutate_text(f.write(mutate(f.base(), muts)), text_muts)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / f.file_name
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        if fmt == "config":
            return _check_config(path, work)
        if fmt == "plan":
            cfg = work / "fleet.yaml"
            cfg.write_text(f"tiers:\n  h100:\n    plan: {path.name}\n"
                           f"    targets: [{{vllm: 'http://127.0.0.1:8000/metrics'}}]\n")
            return _check_config(cfg, work)
        if fmt == "state":
            return _check_state(path, work)
        return _run_plan(fmt, path, work)
