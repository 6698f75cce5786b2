"""The simulated engine speaks each emulated engine version and obeys Little's Law.

Names and types come from tests/fixtures/reference/vllm-metric-defs (the engines' own source),
bucket bounds and label sets from real captures of the same versions.
"""
from __future__ import annotations

import subprocess

import pytest

from exporter.demo.engine import SimEngine
from exporter.demo.fleet import H100, SimFleet, TierBehaviour, TierSpec
from exporter.exposition import parse
from exporter.model import EngineSample
from exporter.sources import sglang, vllm

from conftest import binary, fixture_path, fixture_text

DEFS = "reference/vllm-metric-defs/"


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


def busy_engine(flavour: str, seconds: float = 30.0) -> SimEngine:
    """One instance under Poisson load, with its exposition rendered at the end."""
    spec = TierSpec("h100", H100, instances=1, gpu_hour_cost_usd=1, ttft_slo_seconds=1, itl_slo_seconds=0.1)
    fleet = SimFleet({"h100": (spec, TierBehaviour(load=lambda t: 0.6), 9.0)}, flavour=flavour, seed=1)
    fleet.advance(seconds)
    return fleet.tiers["h100"].instances[0].engine


def defs(name: str) -> dict[str, tuple[str, str]]:
    """family name -> (type, label expression) from a metric-defs TSV."""
    out = {}
    for line in fixture_path(DEFS + name).read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) >= 3 and ":" in cols[1]:
            out[cols[1]] = (cols[2], cols[3] if len(cols) > 3 else "")
    return out


def test_vllm_033_families_match_the_metric_defs_and_a_real_capture() -> None:
    src = defs("vllm-0.33.0_metric_defs.tsv")
    real = families(fixture_text("vllm/generated/vllm-0.33.0/snapshot-20.prom"))
    sim = families(busy_engine("vllm-0.33").exposition())
    assert len(sim) >= 18
    for fam, (kind, labels, bounds) in sim.items():
        if fam.endswith("_created"):  # prometheus_client's, in single-process mode, as in the capture
            assert real[fam][0] == kind == "gauge", fam
            continue
        base = fam[:-len("_total")] if kind == "counter" and fam.endswith("_total") else fam
        assert base in src, f"{fam} is not defined in vLLM 0.33's source"
        assert src[base][0] == kind, fam
        expected_labels = {"model_name", "engine"} | ({"finished_reason"} if "finished_reason" in src[base][1] else set())
        assert labels == expected_labels, fam
        if fam in real:  # bucket bounds and label sets as a real 0.33 server writes them
            assert (kind, labels, bounds) == real[fam], fam
    assert sum(1 for f in sim if f in real) >= 12
    parsed = vllm.parse(busy_engine("vllm-0.33").exposition())
    assert {"ttft_seconds", "itl_seconds", "prompt_tokens_per_request", "e2e_seconds"} <= set(parsed.histograms)


def test_vllm_06_families_existed_in_vllm_06() -> None:
    presence = fixture_path(DEFS + "vllm_V0_engine_name_presence_by_version.txt").read_text(encoding="utf-8")
    versions = presence.splitlines()[0].split()[1:]
    alive: set[str] = set()
    for line in presence.splitlines()[1:]:
        name, span = line.split()
        lo, hi = span.split("..")
        if versions.index(lo) <= versions.index("0.6.3") <= versions.index(hi):
            alive.add(name)
    text = busy_engine("vllm-0.6").exposition()
    sim = families(text)
    for fam, (kind, labels, _) in sim.items():
        exposed = fam + "_total" if kind == "counter" and not fam.endswith("_total") else fam
        assert exposed in alive or fam in alive, f"{fam} did not exist in vLLM 0.6.3"
        assert labels <= {"model_name", "finished_reason"}, fam
    real = families(fixture_text("vllm/captured/v0-0.4.3-0.5.0_datadog-fixture.prom"))
    for fam in ("vllm:time_to_first_token_seconds", "vllm:time_per_output_token_seconds",
                "vllm:e2e_request_latency_seconds"):
        assert sim[fam][2] == real[fam][2], fam  # V0 buckets did not change from 0.4 to 0.6
    parsed = vllm.parse(text)
    assert parsed.gauges["prefix_cache_hit_rate"] > 0 and "itl_seconds" in parsed.histograms


def test_sglang_05_families_match_a_real_capture() -> None:
    real = families(fixture_text("sglang/generated/sglang-0.5.23/snapshot-20.prom"))
    text = busy_engine("sglang-0.5").exposition()
    sim = families(text)
    assert len(sim) >= 14
    for fam, got in sim.items():
        assert fam in real, f"{fam} is not an SGLang 0.5.23 family"
        kind, labels, bounds = real[fam]
        assert got[0] == kind and got[2] == bounds, fam
        assert got[1] <= labels, (fam, got[1], labels)
    parsed = sglang.parse(text)
    assert parsed.counters["prefix_cache_hits"] > 0 and parsed.kv_capacity_tokens


@pytest.mark.parametrize("flavour", ["vllm-0.33", "sglang-0.5"])
def test_promtool_only_objects_to_the_engines_colon_names(flavour: str) -> None:
    promtool = binary("promtool")
    r = subprocess.run([promtool, "check", "metrics"], input=busy_engine(flavour, 5).exposition().encode(),
                       capture_output=True)
    problems = [ln for ln in (r.stdout + r.stderr).decode().splitlines() if ln.strip()]
    # the engines' own names use ':' (reserved for recording rules), and SGLang names two histograms
    # *_histogram; nothing else may be flagged
    assert problems, "promtool should see the engine's ':' names"
    allowed = ("metric names should not contain ':'", "metric name should not include type 'histogram'")
    assert all(p.endswith(allowed) for p in problems), problems


def test_littles_law_holds_in_the_exposition() -> None:
    """Mean concurrency ~= arrival rate x mean latency, from scrapes of the simulated instances alone."""
    spec = TierSpec("h100", H100, instances=2, gpu_hour_cost_usd=1, ttft_slo_seconds=1, itl_slo_seconds=0.1)
    fleet = SimFleet({"h100": (spec, TierBehaviour(load=lambda t: 0.65), 9.0)}, seed=3, warmup=120)
    fleet.advance(0.0)

    def scrape() -> list[EngineSample]:
        return [vllm.parse(fleet.engine_text("h100", i)) for i in range(2)]

    first, concurrency = scrape(), []
    for s in range(1, 601):  # a scrape every simulated second for 10 minutes
        fleet.advance(float(s))
        concurrency.append(sum(e.gauges["requests_running"] + e.gauges["requests_waiting"] for e in scrape()))
    last = scrape()
    count = sum(b.histograms["e2e_seconds"].count - a.histograms["e2e_seconds"].count for a, b in zip(first, last))
    total = sum(b.histograms["e2e_seconds"].sum - a.histograms["e2e_seconds"].sum for a, b in zip(first, last))
    arrival_rate = count / 600.0  # steady state: finished rate = arrival rate
    mean_latency = total / count
    mean_concurrency = sum(concurrency) / len(concurrency)
    assert count > 5000
    assert abs(mean_concurrency - arrival_rate * mean_latency) / mean_concurrency < 0.10, (
        mean_concurrency, arrival_rate, mean_latency)


def test_preemption_when_kv_runs_short_and_not_before() -> None:
    spec = TierSpec("h100", H100, instances=1, gpu_hour_cost_usd=1, ttft_slo_seconds=1, itl_slo_seconds=0.1)
    roomy = SimFleet({"h100": (spec, TierBehaviour(load=lambda t: 0.6), 9.0)}, seed=4)
    tight = SimFleet({"h100": (spec, TierBehaviour(load=lambda t: 0.6, kv_scale=0.05), 9.0)}, seed=4)
    for f in (roomy, tight):
        f.advance(60.0)
    pre = [vllm.parse(f.engine_text("h100", 0)).counters["preemptions"] for f in (roomy, tight)]
    assert pre[0] == 0 and pre[1] > 10, pre
    # seeded: the same seed gives the same run (every counter and histogram, not the _created times)
    again = SimFleet({"h100": (spec, TierBehaviour(load=lambda t: 0.6, kv_scale=0.05), 9.0)}, seed=4)
    again.advance(60.0)
    a, b = (vllm.parse(f.engine_text("h100", 0)) for f in (again, tight))
    assert (a.counters, a.histograms) == (b.counters, b.histograms)
