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


def test_quantiles_and_rates_match_prometheus() -> None:
    prom_bin = binary("prometheus")
    texts = {k: [fixture_text(f"{d}/snapshot-{i:02d}.prom") for i in range(SNAPSHOTS)] for k, d in FOLDERS.items()}
    # each scrape gets the next snapshot, so Prometheus's k-th sample of a target is snapshot k
    targets = {k: FakeTarget(body_fn=lambda n, k=k: texts[k][min(n, SNAPSHOTS - 1)]) for k in FOLDERS}
    static = ",".join(f"'{t.url[len('http://'):-len('/metrics')]}'" for t in targets.values())
    prom = Prometheus(prom_bin, f"""
global: {{scrape_interval: 1s, scrape_timeout: 900ms}}
scrape_configs:
  - job_name: fake
    static_configs: [{{targets: [{static}]}}]
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
    finally:
        prom.stop()
        for t in targets.values():
            t.close()
