"""The simulated engine speaks vLLM 0.33 and obeys Little's Law (checked from its exposition alone)."""
from __future__ import annotations

import random
import subprocess

from exporter.demo.engine import Hardware, Lengths, SimEngine, drive
from exporter.exposition import parse
from exporter.sources import vllm

from conftest import binary, fixture_text

H100 = Hardware("h100", "NVIDIA H100 80GB HBM3", tp=2, prefill_tokens_per_second=20000, itl_base_seconds=0.012,
                itl_per_sequence_seconds=0.0004, max_concurrency=64, kv_capacity_tokens=200_000)


def families(text: str) -> dict[str, tuple[str, set[str], tuple[str, ...]]]:
    """family -> (type, label names without le, bucket bounds as written)."""
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
    out: dict[str, tuple[str, set[str], tuple[str, ...]]] = {}
    samples = parse(text)
    for fam, kind in types.items():
        mine = [s for s in samples if s.name == fam or (s.name.startswith(fam + "_") and
                                                         s.name[len(fam) + 1:] in ("bucket", "sum", "count", "total"))]
        labels = set().union(*(set(s.labels) - {"le"} for s in mine)) if mine else set()
        bounds = tuple(s.labels["le"] for s in mine if s.name == fam + "_bucket" and
                       all(s.labels.get(k) == v for k, v in mine[0].labels.items() if k != "le"))
        out[fam] = (kind, labels, bounds)
    return out


def test_exposition_matches_real_vllm_033_families() -> None:
    real = families(fixture_text("vllm/generated/vllm-0.33.0/snapshot-20.prom"))
    eng = SimEngine(H100)
    drive(eng, random.Random(1), rate=5, prompt=Lengths(900, 2000), output=Lengths(200, 500), prefix_share=0.5,
          prefix_tokens=300, start=0, seconds=20, dt=0.05)
    sim = families(eng.exposition())
    vllm_fams = {f: v for f, v in sim.items() if f.startswith("vllm:")}
    assert len(vllm_fams) >= 15
    for fam, (kind, labels, bounds) in vllm_fams.items():
        assert fam in real, f"{fam} is not a vLLM 0.33 family"
        assert (kind, labels, bounds) == real[fam], fam
    parsed = vllm.parse(eng.exposition())
    assert {"ttft_seconds", "itl_seconds", "prompt_tokens_per_request"} <= set(parsed.histograms)


def test_promtool_only_objects_to_vllm_naming() -> None:
    promtool = binary("promtool")
    eng = SimEngine(H100)
    drive(eng, random.Random(2), rate=3, prompt=Lengths(500, 1500), output=Lengths(100, 300), prefix_share=0.0,
          prefix_tokens=0, start=0, seconds=5, dt=0.05)
    r = subprocess.run([promtool, "check", "metrics"], input=eng.exposition().encode(), capture_output=True)
    problems = [ln for ln in (r.stdout + r.stderr).decode().splitlines() if ln.strip()]
    # vLLM's own names use ':' (reserved for recording rules); nothing else may be flagged
    assert problems, "promtool should see vLLM's ':' names"
    assert all(p.endswith("metric names should not contain ':'") for p in problems), problems


def _e2e(text: str) -> tuple[float, float]:
    vals = {s.name: s.value for s in parse(text, ["vllm:e2e_request_latency_seconds_"])}
    return vals["vllm:e2e_request_latency_seconds_sum"], vals["vllm:e2e_request_latency_seconds_count"]


def test_littles_law_holds_in_the_exposition() -> None:
    eng = SimEngine(H100)
    rng = random.Random(3)
    load = dict(rate=6.0, prompt=Lengths(900, 2000), output=Lengths(150, 400), prefix_share=0.3, prefix_tokens=300)
    t = drive(eng, rng, start=0, seconds=120, dt=0.05, **load)  # type: ignore[arg-type]  # warm up
    first = eng.exposition()
    concurrency = []
    for _ in range(600):  # a scrape every simulated second for 10 minutes
        t = drive(eng, rng, start=t, seconds=1.0, dt=0.05, **load)  # type: ignore[arg-type]
        g = vllm.parse(eng.exposition()).gauges
        concurrency.append(g["requests_running"] + g["requests_waiting"])
    last = eng.exposition()
    (s0, c0), (s1, c1) = _e2e(first), _e2e(last)
    arrival_rate = (c1 - c0) / 600.0  # steady state: finished rate = arrival rate
    mean_latency = (s1 - s0) / (c1 - c0)
    mean_concurrency = sum(concurrency) / len(concurrency)
    assert c1 - c0 > 1000
    assert abs(mean_concurrency - arrival_rate * mean_latency) / mean_concurrency < 0.10, (
        mean_concurrency, arrival_rate, mean_latency)
