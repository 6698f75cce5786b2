"""fleetwatch's window math against a real Prometheus on the same scraped data."""
from __future__ import annotations

import math
import time

import pytest

from exporter.model import InstanceSample
from exporter.sources import vllm
from exporter.window import tier_window

from conftest import binary, fixture_text
from fakes import FakeTarget
from realbins import Prometheus

pytestmark = pytest.mark.integration
SNAPSHOTS = 21
FOLDERS = {"a": "vllm/generated/vllm-0.33.0", "b": "vllm/generated/vllm-0.11.0-features"}
TIERS = {"a": "h100", "b": "a100"}


@pytest.fixture(scope="module")
def scraped():  # type: ignore[no-untyped-def]
    """A real Prometheus that scraped replayed vLLM snapshots, and fleetwatch's window on the same samples."""
    prom_bin = binary("prometheus")
    texts = {k: [fixture_text(f"{d}/snapshot-{i:02d}.prom") for i in range(SNAPSHOTS)] for k, d in FOLDERS.items()}
    # each scrape gets the next snapshot, so Prometheus's k-th sample of a target is snapshot k
    targets = {k: FakeTarget(body_fn=lambda n, k=k: texts[k][min(n, SNAPSHOTS - 1)]) for k in FOLDERS}
    # one instance per tier label, so the catalogue's "by (tier)" PromQL can be compared per instance
    static = ", ".join(f"{{targets: ['{t.url[len('http://'):-len('/metrics')]}'], labels: {{tier: {TIERS[k]}}}}}"
                       for k, t in targets.items())
    prom = Prometheus(prom_bin, f"""
global: {{scrape_interval: 1s, scrape_timeout: 900ms}}
scrape_configs:
  - job_name: fake
    static_configs: [{static}]
""")
    try:
        deadline = time.monotonic() + 60
        while min(t.requests for t in targets.values()) < SNAPSHOTS + 1 and time.monotonic() < deadline:
            time.sleep(0.25)  # waiting for a real external process, not simulating time
        assert min(t.requests for t in targets.values()) >= SNAPSHOTS, "prometheus did not scrape enough"
        now = time.time()
        # scrape timestamps per target, in order
        stamps: dict[str, list[int]] = {}  # milliseconds, as Prometheus stores them: exact comparisons
        for k, t in targets.items():
            inst = t.url[len("http://"):-len("/metrics")]
            (series,) = prom.query(f'up{{instance="{inst}"}}[2m]', at=now)
            stamps[k] = [int(round(float(ts) * 1000)) for ts, _ in series["values"]][:SNAPSHOTS]
        T_ms = max(s[SNAPSHOTS - 1] for s in stamps.values())
        W_ms = T_ms - min(s[3] for s in stamps.values())
        T = T_ms / 1000
        # fleetwatch sees, per target, the samples Prometheus's "x - x offset W" at T compares
        samples = []
        for k, ts in stamps.items():
            first = max(i for i, t in enumerate(ts) if t <= T_ms - W_ms)
            last = max(i for i, t in enumerate(ts) if t <= T_ms)
            for i in range(first, last + 1):
                samples.append(InstanceSample("h100", k, ts[i] / 1000, vllm.parse(texts[k][i])))
        tw = tier_window("h100", samples)
        # For the catalogue's rate()/increase() rows, a range per instance whose ends sit exactly on
        # that instance's scrapes 3 and 20: rate() then extrapolates nothing (it scales each series by
        # its own factor otherwise, and stops at zero for a counter that starts there, so a blend of
        # instances or of buckets would be weighted differently from a plain difference). Prometheus 2.x
        # ranges include their start sample; 3.x would exclude it and this comparison would say so
        per_tier = {}
        for k, ts in stamps.items():
            picked = [InstanceSample(TIERS[k], k, ts[i] / 1000, vllm.parse(texts[k][i])) for i in range(3, SNAPSHOTS)]
            per_tier[TIERS[k]] = (ts[SNAPSHOTS - 1] / 1000, ts[SNAPSHOTS - 1] - ts[3], tier_window(TIERS[k], picked))
        yield prom, tw, T, W_ms, per_tier
    finally:
        prom.stop()
        for t in targets.values():
            t.close()


def test_quantiles_and_rates_match_prometheus(scraped) -> None:  # type: ignore[no-untyped-def]
    prom, tw, T, W_ms, _ = scraped
    if True:
        for q in (0.5, 0.9, 0.99):
            for family, key in (("vllm:time_to_first_token_seconds", "ttft_seconds"),
                                ("vllm:inter_token_latency_seconds", "itl_seconds")):
                expr = (f"histogram_quantile({q}, sum by (le) ({family}_bucket - {family}_bucket offset {W_ms}ms))")
                (res,) = prom.query(expr, at=T)
                theirs = float(res["value"][1])
                ours = tw.quantile(key, q).value
                assert ours is not None and math.isclose(ours, theirs, rel_tol=1e-6), (family, q, ours, theirs)

        (res,) = prom.query(f"sum(rate(vllm:generation_tokens_total[{W_ms}ms]))", at=T)
        theirs = float(res["value"][1])
        ours = tw.rate("generation_tokens")
        assert ours is not None and theirs > 0
        assert abs(ours - theirs) / theirs < 0.02, (ours, theirs)


# rows whose PromQL reads only engine series (the others need dcgm-exporter or fleetwatch's gauges)
ENGINE_ROWS = ("requests_per_second", "ttft_p50_seconds", "ttft_p99_seconds", "itl_p50_seconds",
               "itl_p99_seconds", "kv_cache_utilization_ratio", "kv_cache_eviction_ratio",
               "prefix_cache_hit_ratio", "queue_depth_requests")


def test_catalogue_promql_matches_fleetwatch_on_the_same_data(scraped) -> None:  # type: ignore[no-untyped-def]
    """The recording rules' PromQL, run by Prometheus, against fleetwatch's Python for each row."""
    from exporter.catalogue import ROWS_BY_KEY
    from exporter.config import Benchmark, Plan, Slo

    prom, _, _, _, per_tier = scraped
    plan = Plan(gpus_per_instance=1, instances=1, gpu_hour_cost_usd=1.0, peak_rps=10, safety_factor=0.2,
                slo=Slo(2.0, 0.1), benchmark=Benchmark(5.0, 1.0, 0.05, 0.7))
    for key in ENGINE_ROWS:
        row = ROWS_BY_KEY[key]
        for tier, (T, W_ms, tw) in per_tier.items():
            expr = row.promql.replace("{w}", f"{W_ms}ms").replace("{ws}", f"{W_ms / 1000}")
            res = prom.query(expr, at=T)
            # grouped by tier and nothing else: one series per tier, never a blend
            assert all(list(r["metric"]) == ["tier"] for r in res), (key, res)
            theirs = {r["metric"]["tier"]: float(r["value"][1]) for r in res}
            ours = row.compute(tw, plan).value
            # both captures expose every family these rows read, so each row is compared on both tiers
            assert ours is not None and tier in theirs, (key, tier, ours, theirs)
            assert math.isclose(ours, theirs[tier], rel_tol=1e-6, abs_tol=1e-9), (key, tier, ours, theirs[tier])
