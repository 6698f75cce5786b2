"""Mutated real captures through parse -> window -> evaluate -> JSON (shared by the property test
and bench/fuzz_pipeline.py, which runs it at volume).

A case is a real capture of one engine version and a list of line mutations; two scrapes are
made from it (the mutated capture, then the same with its counters grown), and the report of a
tier built from them must serialise with allow_nan=False and hold no negative number.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from hypothesis import strategies as st

from exporter.check import format_json
from exporter.evaluate import evaluate, scraped_rows
from exporter.exposition import ExpositionError
from exporter.engines import all_names
from exporter.inputs import INPUTS
from exporter.model import (Benchmark, Config, CurvePoint, EngineSample, InstanceSample, LengthProfile, Plan, Slo,
                            Target, TierConfig, Workload)
from exporter.sources import dcgm, sglang, vllm
from exporter.window import tier_window

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # tests/fixtures/SOURCES.md


def captures() -> dict[str, tuple[str, str]]:
    """name -> (engine, text) for every engine and version in tests/fixtures."""
    out: dict[str, tuple[str, str]] = {}
    for p in sorted((FIXTURES / "vllm" / "captured").glob("*.prom")):
        out[p.stem] = ("vllm", p.read_text(encoding="utf-8"))
    for folder in sorted((FIXTURES / "vllm" / "generated").iterdir()):
        out[folder.name] = ("vllm", (folder / "snapshot-10.prom").read_text(encoding="utf-8"))
    for p in sorted((FIXTURES / "sglang").glob("*.prom")):
        out[p.stem] = ("sglang", p.read_text(encoding="utf-8"))
    for folder in sorted((FIXTURES / "sglang" / "generated").iterdir()):
        out[folder.name] = ("sglang", (folder / "snapshot-10.prom").read_text(encoding="utf-8"))
    return out


def dcgm_captures() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted((FIXTURES / "dcgm").glob("*.prom"))]


_VALUES = ["NaN", "+Inf", "-Inf", "-1", "-0.5", "0", "1e308", "1.7976931348623157e308", "99999999999999999999999",
           "1e-320", "3.5", "nan", "inf", "+inf", "-0", "0x10", "1_000", "", "two"]
_LABEL_VALUES = ["inf", "nan", "-1", "", "}", ",", 'a\\"b', "\\\\", "1e400", "0", "stop", "length", "\u00e9\u00e8"]


@dataclass(frozen=True)
class Mutation:
    kind: str  # value | label | drop | duplicate | swap | truncate | insert
    line: int
    arg: str = ""


def mutations() -> st.SearchStrategy[list[Mutation]]:
    one = st.one_of(
        st.builds(Mutation, st.sampled_from(["value", "value-read"]), st.integers(0, 10_000), st.sampled_from(_VALUES)),
        st.builds(Mutation, st.just("label-read"), st.integers(0, 10_000), st.sampled_from(_LABEL_VALUES)),
        st.builds(Mutation, st.just("label"), st.integers(0, 10_000), st.sampled_from(_LABEL_VALUES)),
        st.builds(Mutation, st.sampled_from(["drop", "duplicate", "swap", "truncate"]), st.integers(0, 10_000)),
        st.builds(Mutation, st.just("insert"), st.integers(0, 10_000),
                  st.text(alphabet=st.characters(codec="utf-8"), max_size=40)),
    )
    return st.lists(one, min_size=1, max_size=6)


_READ = tuple(n for i in INPUTS.values() for n in all_names(i.canonical)) + (
    "vllm:lora_requests_info", "vllm:cache_config_info", "sglang:max_total_num_tokens", "sglang:spec_accept_length",
    "DCGM_FI_DEV_FB", "DCGM_FI_PROF", "DCGM_FI_DEV_GPU_UTIL")


def mutate(text: str, muts: list[Mutation]) -> str:
    lines = text.splitlines()
    for m in muts:
        if not lines:
            lines = [m.arg]
            continue
        samples = [i for i, ln in enumerate(lines) if ln and not ln.startswith("#")] or [0]
        if m.kind.endswith("-read"):  # a line of a family fleetwatch reads: where a bad value matters
            samples = [i for i in samples if lines[i].startswith(_READ)] or samples
        i = samples[m.line % len(samples)]
        ln = lines[i]
        if m.kind in ("value", "value-read") and " " in ln:
            lines[i] = ln.rsplit(" ", 1)[0] + " " + m.arg
        elif m.kind in ("label", "label-read"):
            lines[i] = re.sub(r'="[^"]*"', f'="{m.arg}"', ln, count=1)
        elif m.kind == "drop":
            del lines[i]
        elif m.kind == "duplicate":
            lines.insert(i, ln)
        elif m.kind == "swap":
            j = samples[(m.line * 7 + 3) % len(samples)]
            if j < len(lines):
                lines[i], lines[j] = lines[j], lines[i]
        elif m.kind == "truncate":
            lines[i] = ln[: max(1, len(ln) // 2)]
        elif m.kind == "insert":
            lines.insert(i, m.arg)
    return "\n".join(lines) + "\n"


def scaled(text: str, factor: float) -> str:
    """The same scrape later: every counter, bucket, count and sum times ``factor``, gauges as they were."""
    out = []
    for ln in text.splitlines():
        if ln and not ln.startswith("#") and re.search(r"(_total|_bucket|_count|_sum)(\{| )", ln):
            head, _, value = ln.rpartition(" ")
            try:
                v = float(value)
                ln = f"{head} {v * factor if math.isfinite(v) else value}"
            except ValueError:
                pass
        out.append(ln)
    return "\n".join(out) + "\n"


def grown(text: str) -> str:
    return scaled(text, 1.1)


_PLAN = Plan(gpus_per_instance=2, instances=2, gpu_hour_cost_usd=4.1, peak_rps=5, safety_factor=0.2,
             slo=Slo(2.0, 0.05), benchmark=Benchmark(3.0, 1.2, 0.035, 0.7, (CurvePoint(1, 0.5, 0.02, 0.4),
                                                                           CurvePoint(3, 1.2, 0.035, 0.7)),
                                                      0.5, 0.02),
             workload=Workload(LengthProfile(500, 1500, 3000), LengthProfile(100, 300, 600), True))


def _config(engine: str) -> Config:
    targets = tuple(Target(f"i{k}", engine, f"http://127.0.0.1:{k + 1}/metrics") for k in range(2))
    return Config(path="fuzz.yaml", interval=15.0, window=15.0, tiers={"t": TierConfig("t", _PLAN, targets)})


_PARSE: dict[str, Callable[[str], EngineSample]] = {"vllm": vllm.parse, "sglang": sglang.parse}


def run_case(engine: str, text: str, muts: list[Mutation], gpu_text: str | None = None) -> str:
    """parse -> window -> evaluate -> JSON for one case. Returns "ok" or "rejected"
    (ExpositionError); any other exception, a non-serialisable or a negative number raises."""
    bad = mutate(text, muts)
    try:
        first = _PARSE[engine](bad)
        second = _PARSE[engine](grown(bad))
        gpus = dcgm.parse(mutate(gpu_text, muts)) if gpu_text is not None else ()
    except ExpositionError:
        return "rejected"
    plain = _PARSE[engine](text)  # the other instance: the capture as it was
    samples = [InstanceSample("t", "i0", 100.0, first, gpus), InstanceSample("t", "i0", 115.0, second, gpus),
               InstanceSample("t", "i1", 100.0, plain), InstanceSample("t", "i1", 115.0, _PARSE[engine](grown(text)))]
    cfg = _config(engine)
    windows = {"t": tier_window("t", samples, ("i0", "i1"))}
    report = evaluate(cfg, windows, {}, 115.0, 15.0, rows=scraped_rows(cfg, windows))
    doc = json.loads(format_json(report))  # raises ValueError on NaN or Inf
    negative = list(_negatives(doc, "report"))
    if negative:
        raise AssertionError(f"negative numbers in the report: {negative[:5]}")
    return "ok"


def _negatives(v: Any, path: str) -> Iterator[str]:
    if isinstance(v, bool):
        return
    if isinstance(v, (int, float)):
        if v < 0:
            yield f"{path}={v}"
    elif isinstance(v, dict):
        for k, x in v.items():
            yield from _negatives(x, f"{path}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _negatives(x, f"{path}[{i}]")
