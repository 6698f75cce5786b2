"""fleetwatch's window math against a real Prometheus on the same scraped data.

One Prometheus scrapes, once a second, a replay of every engine version in tests/fixtures
(vLLM V0 0.4-0.7 and V1 0.11/0.33, SGLang 0.4.0 and 0.5.23; a single capture is replayed with its
counters growing 5% a scrape) and two dcgm-exporters: a Kubernetes node whose GPUs belong to two
engine pods of two tiers (and one to no pod), and a plain node with no pod labels. Each target
carries its own tier label, so the catalogue's "by (tier)" PromQL can be compared per target.
"""
from __future__ import annotations

import functools
import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pytest

from exporter.catalogue import ROWS
from exporter.engines import ENGINES as REGISTERED
from exporter.model import EngineSample, GpuReading, GpuSelector, InstanceSample
from exporter.sources import dcgm
from exporter.window import TierWindow, tier_window

from conftest import binary, fixture_text
from fakes import FakeTarget
from fuzzing import scaled
from realbins import Prometheus

pytestmark = pytest.mark.integration
SNAPSHOTS = 21
FIRST = 3  # the range starts on each target's 4th scrape and ends on its 21st


def _sequence(folder: str) -> list[str]:
    return [fixture_text(f"{folder}/snapshot-{i:02d}.prom") for i in range(SNAPSHOTS)]


def _replayed(path: str) -> list[str]:
    text = fixture_text(path)
    return [scaled(text, 1 + 0.05 * i) for i in range(SNAPSHOTS)]


# tier label -> (engine, how its 21 scrapes are made); every engine version with a capture
ENGINES: dict[str, tuple[str, Callable[[], list[str]]]] = {
    "vllm-0-33": ("vllm", lambda: _sequence("vllm/generated/vllm-0.33.0")),
    "vllm-0-11": ("vllm", lambda: _sequence("vllm/generated/vllm-0.11.0-features")),
    "vllm-v0-0-4": ("vllm", lambda: _replayed("vllm/captured/v0-0.4.3-0.5.0_datadog-fixture.prom")),
    "vllm-v0-0-6": ("vllm", lambda: _replayed("vllm/captured/v0-0.6.5_docs-excerpt.prom")),
    "vllm-v0-0-7": ("vllm", lambda: _replayed("vllm/captured/v0-0.7_aibrix-docs.prom")),
    "sglang-0-5": ("sglang", lambda: _sequence("sglang/generated/sglang-0.5.23")),
    "sglang-0-4": ("sglang", lambda: _replayed("sglang/v0.4.0_docs-production-metrics.prom")),
    "trtllm": ("trtllm", lambda: _sequence("trtllm/generated/trtllm-050f80de")),
}
PARSERS: dict[str, Callable[[str], EngineSample]] = {e.name: e.parse for e in REGISTERED}
NAMESPACE = "llm"
POD_A, POD_B = "h100-engine-a", "h100-engine-b"


def _k8s_node() -> str:
    """A dcgm-exporter node with three GPUs, built from a real T4 capture: GPU 0 held by pod A,
    GPU 1 by pod B (another tier), GPU 2 by no pod; each GPU's memory and activity differ."""
    base = [ln for ln in fixture_text("dcgm/dcgm_t4_dcp_ericsson-ccd.prom").splitlines() if ln.startswith("DCGM_")]
    out = []
    for gpu, pod, used, active in ((0, POD_A, 5120, 0.156205), (1, POD_B, 9000, 0.61), (2, None, 14000, 0.97)):
        for ln in base:
            head, _, value = ln.rpartition(" ")
            head = head.replace('gpu="0"', f'gpu="{gpu}"').replace("e93ed57f469a", f"e93ed57f469{gpu}")
            if pod:
                head = head.replace("}", f',pod="{pod}",namespace="{NAMESPACE}",container="engine"}}')
            if head.startswith("DCGM_FI_DEV_FB_USED"):
                value = str(used)
            elif head.startswith("DCGM_FI_DEV_FB_FREE"):
                value = str(15360 - used)
            elif head.startswith("DCGM_FI_PROF_GR_ENGINE_ACTIVE"):
                value = str(active)
            out.append(f"{head} {value}")
    return "\n".join(out) + "\n"


@dataclass
class Replay:
    tier: str
    engine: str | None  # None: a dcgm-exporter
    texts: list[str]
    labels: dict[str, str] = field(default_factory=dict)
    gpus: tuple[GpuReading, ...] = ()  # what fleetwatch's selector gives this engine target


def _replays() -> list[Replay]:
    out = [Replay(tier, engine, make()) for tier, (engine, make) in ENGINES.items()]
    node = _k8s_node()
    node_gpus = dcgm.parse(node)
    seq = _sequence("vllm/generated/vllm-0.33.0")
    t4 = fixture_text("dcgm/dcgm_t4_dcp_ericsson-ccd.prom")
    out += [
        Replay("gpu-a", "vllm", seq, {"namespace": NAMESPACE, "pod": POD_A},
               dcgm.select(node_gpus, GpuSelector(pod=POD_A))),
        Replay("gpu-b", "vllm", seq, {"namespace": NAMESPACE, "pod": POD_B},
               dcgm.select(node_gpus, GpuSelector(pod=POD_B))),
        # the node's exporter says gpu-a: pod B's GPU must still go to gpu-b, GPU 2 to no tier
        Replay("gpu-a", None, [node] * SNAPSHOTS),
        Replay("gpu-c", "vllm", seq, {}, dcgm.select(dcgm.parse(t4), None)),
        Replay("gpu-c", None, [t4] * SNAPSHOTS),
    ]
    return out



def _nth(texts: list[str], n: int) -> str:
    return texts[min(n, SNAPSHOTS - 1)]

Scraped = tuple[Prometheus, list[Replay], list[list[int]]]  # the server, what it scraped, and when


@pytest.fixture(scope="module")
def scraped() -> Iterator[Scraped]:
    """A real Prometheus that scraped every replay, and fleetwatch's window on the same samples."""
    prom_bin = binary("prometheus")
    replays = _replays()
    targets = [FakeTarget(body_fn=functools.partial(_nth, r.texts)) for r in replays]

    def static(r: Replay, t: FakeTarget) -> str:
        labels = ", ".join(f"{k}: {v}" for k, v in {"tier": r.tier, **r.labels}.items())
        return f"{{targets: ['{t.url[len('http://'):-len('/metrics')]}'], labels: {{{labels}}}}}"

    prom = Prometheus(prom_bin, f"""
global: {{scrape_interval: 1s, scrape_timeout: 900ms}}
scrape_configs:
  - job_name: fake
    honor_labels: true
    static_configs: [{", ".join(static(r, t) for r, t in zip(replays, targets))}]
""")
    try:
        deadline = time.monotonic() + 60
        while min(t.requests for t in targets) < SNAPSHOTS + 1 and time.monotonic() < deadline:
            time.sleep(0.25)  # waiting for a real external process, not simulating time
        assert min(t.requests for t in targets) >= SNAPSHOTS, "prometheus did not scrape enough"
        now = time.time()
        stamps: list[list[int]] = []  # per target, its scrapes in ms, as Prometheus stores them
        for t in targets:
            inst = t.url[len("http://"):-len("/metrics")]
            (series,) = prom.query(f'up{{instance="{inst}"}}[2m]', at=now)
            stamps.append([int(round(float(ts) * 1000)) for ts, _ in series["values"]][:SNAPSHOTS])
        yield prom, replays, stamps
    finally:
        prom.stop()
        for t in targets:
            t.close()


def _first(r: Replay) -> int:
    """The range's first scrape: FIRST, or later where a series is born after it. rate() would
    extrapolate a newborn series towards the range's start while fleetwatch takes last - first of
    the readings it has (README: Definitions); on the same readings, both must agree exactly."""
    keys = [{ln.rsplit(" ", 1)[0] for ln in t.splitlines() if ln and not ln.startswith("#")} for t in r.texts]
    return next(i for i in range(FIRST, SNAPSHOTS) if keys[i] >= keys[-1])


def _window(r: Replay, ts: list[int], first: int, last: int) -> TierWindow:
    assert r.engine is not None
    return tier_window(r.tier, [InstanceSample(r.tier, r.tier, ts[i] / 1000, PARSERS[r.engine](r.texts[i]), r.gpus)
                                for i in range(first, last + 1)])


def test_quantiles_and_rates_match_prometheus(scraped: Scraped) -> None:
    """histogram_quantile over "x - x offset W" equals fleetwatch's increase quantiles exactly."""
    prom, replays, stamps = scraped
    (i,) = [k for k, r in enumerate(replays) if r.tier == "vllm-0-33"]
    ts, r = stamps[i], replays[i]
    T_ms, W_ms = ts[SNAPSHOTS - 1], ts[SNAPSHOTS - 1] - ts[FIRST]
    tw = _window(r, ts, FIRST, SNAPSHOTS - 1)
    for q in (0.5, 0.9, 0.99):
        for family, key in (("vllm:time_to_first_token_seconds", "ttft_seconds"),
                            ("vllm:inter_token_latency_seconds", "itl_seconds")):
            expr = (f'histogram_quantile({q}, sum by (le) ({family}_bucket{{tier="{r.tier}"}} - '
                    f'{family}_bucket{{tier="{r.tier}"}} offset {W_ms}ms))')
            (res,) = prom.query(expr, at=T_ms / 1000)
            ours = tw.quantile(key, q).value
            assert ours is not None and math.isclose(ours, float(res["value"][1]), rel_tol=1e-6), (family, q)
    (res,) = prom.query(f'sum(rate(vllm:generation_tokens_total{{tier="{r.tier}"}}[{W_ms}ms]))', at=T_ms / 1000)
    assert math.isclose(tw.rate("generation_tokens") or 0, float(res["value"][1]), rel_tol=1e-6)


# rows whose PromQL reads only engine and DCGM series (the others need fleetwatch's own gauges or
# the series the rules record): engine rows read engine inputs, GPU rows none
_SOURCE_ROWS = [r for r in ROWS if not r.gauge_only and "fleetwatch" not in r.promql]
ENGINE_ROWS = tuple(r.key for r in _SOURCE_ROWS if r.inputs)
GPU_ROWS = tuple(r.key for r in _SOURCE_ROWS if not r.inputs)
# what each version must yield in both renderings: the old names must reach the rules too
MUST = {
    "vllm-0-33": set(ENGINE_ROWS) - {"spec_decode_acceptance_ratio"},
    "vllm-0-11": set(ENGINE_ROWS),
    "vllm-v0-0-4": {"ttft_p99_seconds", "itl_p99_seconds", "kv_cache_utilization_ratio", "queue_depth_requests",
                    "requests_per_second", "kv_cache_eviction_ratio"},
    # cut off before its latency histograms; its prefix-cache gauge reads -1 ("no data") on both sides
    "vllm-v0-0-7": {"kv_cache_utilization_ratio", "kv_cache_eviction_ratio", "requests_per_second",
                    "queue_depth_requests"},
    "sglang-0-5": set(ENGINE_ROWS) - {"spec_decode_acceptance_ratio"},
    "sglang-0-4": {"ttft_p99_seconds", "itl_p99_seconds", "kv_cache_utilization_ratio", "prefix_cache_hit_ratio"},
    # TensorRT-LLM has no preemption counter: its eviction row is unknown on both sides
    "trtllm": set(ENGINE_ROWS) - {"spec_decode_acceptance_ratio", "kv_cache_eviction_ratio"},
    "gpu-a": set(GPU_ROWS), "gpu-b": set(GPU_ROWS), "gpu-c": set(GPU_ROWS),
}


def test_catalogue_promql_matches_fleetwatch_on_every_engine_version(scraped: Scraped) -> None:
    """The recording rules' PromQL, run by Prometheus, against fleetwatch's Python for each row,
    on captures of every engine version (old metric names included) and on shared GPU nodes."""
    from exporter.catalogue import row
    from exporter.model import Benchmark, Plan, Slo

    prom, replays, stamps = scraped
    plan = Plan(gpus_per_instance=1, instances=1, gpu_hour_cost_usd=1.0, peak_rps=10, safety_factor=0.2,
                slo=Slo(2.0, 0.1), benchmark=Benchmark(5.0, 1.0, 0.05, 0.7))
    # the range: per tier, from its engine target's scrape FIRST to its last; rate() then
    # extrapolates nothing, and Prometheus 2.x ranges include their start sample
    ends = {r.tier: (ts[SNAPSHOTS - 1], ts[SNAPSHOTS - 1] - ts[_first(r)], _window(r, ts, _first(r), SNAPSHOTS - 1))
            for r, ts in zip(replays, stamps) if r.engine is not None}
    compared: dict[str, set[str]] = {t: set() for t in ends}
    for key in ENGINE_ROWS + GPU_ROWS:
        the_row = row(key)
        for tier, (T_ms, W_ms, tw) in ends.items():
            expr = the_row.promql.replace("{w}", f"{W_ms}ms").replace("{ws}", f"{W_ms / 1000}")
            res = prom.query(expr, at=T_ms / 1000)
            # grouped by tier and nothing else: one series per tier, never a blend
            assert all(list(r["metric"]) == ["tier"] for r in res), (key, res)
            theirs = {r["metric"]["tier"]: float(r["value"][1]) for r in res}
            ours = the_row.compute(tw, plan).value
            if key in GPU_ROWS and not tier.startswith("gpu-"):
                continue  # engine-only tiers have no exporter; their GPU rows are empty on both sides
            assert (ours is None) == (tier not in theirs), (key, tier, ours, theirs.get(tier))
            if ours is not None:
                assert math.isclose(ours, theirs[tier], rel_tol=1e-6, abs_tol=1e-9), (key, tier, ours, theirs[tier])
                compared[tier].add(key)
    for tier, rows in MUST.items():
        assert rows <= compared[tier], (tier, sorted(rows - compared[tier]))
    # the shared node: pod B's GPU went to gpu-b although its exporter is labelled gpu-a, and the
    # pod-less GPU 2 (14000 of 15360 MiB used) to neither
    mem = {t: row for t, row in ((t, row("gpu_memory_utilization_ratio").compute(ends[t][2], plan).value)
                                 for t in ("gpu-a", "gpu-b"))}
    assert mem["gpu-a"] is not None and mem["gpu-b"] is not None and mem["gpu-a"] < mem["gpu-b"] < 0.8


def test_itl_promql_reads_the_old_name_where_only_it_exists() -> None:
    """The rendering itself: newest first, the old name as the fallback, for every engine in the
    registry's order (TensorRT-LLM has one name)."""
    from exporter.catalogue import row

    expr = row("itl_p99_seconds").promql
    names = re.findall(r"rate\(([a-z:_]+)_bucket", expr)
    assert names == ["vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds",
                     "sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds",
                     "trtllm_time_per_output_token_seconds"]
