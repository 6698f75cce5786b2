"""The fault test at fleet scale: `fleetwatch serve` over 1,000 targets, 1% of them hostile.

990 healthy engines replay the same vLLM 0.33 capture sequence (one port, one path each), next to
one target of each of ten hostile kinds. Every row of the healthy tier that does not divide by
wall-clock seconds or sum over instances is then the same as for one such engine alone: a P99 of
990 identical histograms is the P99 of one. A second `serve` over that one engine is the baseline.
Run last but one (by name) so that CI's image build, in the background, is over by then.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from fakes import FakeTarget, ReplayFleet, refused_url, write_config
from test_faults import _at_cycle, _mutated, _start_serve, sigterm_and_check, snapshots

pytestmark = pytest.mark.integration

HEALTHY = 990
HOSTILE = {"hang": "timeout", "drip": "timeout", "chunked": "timeout", "huge": "too_large", "gzip-bomb": "too_large",
           "redirect": "http_status", "http-500": "http_status", "bad-utf8": "malformed"}
INTERVAL = 10.0  # a cycle of 1,000 targets costs about 5 s of CPU here: the interval leaves room on 2 cores
CYCLES = 4
# rows that are sums over instances, divide by seconds (which differ between two processes), or come from
# the plan (the test config's plan has as many instances as targets)
NOT_INVARIANT = ("fleetwatch_plan_", "per_second", "per_gpu_hour", "cost_per", "fleet_utilization", "_peak_", "queue_depth",
                 "fleetwatch_instances", "fleetwatch_recommended", "fleetwatch_resize", "fleetwatch_finding")


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(ln.split()[1] for ln in fh if ln.startswith("VmHWM:")))


def test_serve_at_1000_targets_with_1_percent_hostile(tmp_path: Path, alone_on_the_machine: None) -> None:
    texts = snapshots()
    fleet = ReplayFleet(texts)
    alone_target = FakeTarget(body_fn=lambda n: texts[min(n, 20)])
    hostile = {name: FakeTarget(mode=name) for name in HOSTILE}
    hostile["nan"] = FakeTarget(body_fn=lambda n: _mutated(texts[min(n, 20)], "vllm:num_requests_waiting", "NaN"))
    # a window longer than the run: each process's fourth cycle holds every scrape it made, captures 0 to 3,
    # even if a starved cycle ran late and the scheduler skipped a turn (a 30 s window then held 1 to 3)
    extra = f"interval: {INTERVAL:g}s\nwindow: {(CYCLES + 2) * INTERVAL:g}s\nscrape_timeout: 8s"
    good = [{"vllm": fleet.url(i), "name": f"good-{i}"} for i in range(HEALTHY)]
    bad = [{"vllm": refused_url(), "name": "refused"}] + [{"vllm": t.url, "name": n} for n, t in hostile.items()]
    assert len(good) + len(bad) == 1000 and len(bad) == 10
    alone_cfg = write_config(str(tmp_path / "alone.yaml"), {"good": [{"vllm": alone_target.url, "name": "good-0"}]},
                             extra=extra)
    mixed_cfg = write_config(str(tmp_path / "mixed.yaml"), {"good": good, "bad": bad}, extra=extra)
    procs = []
    try:
        mixed, mixed_url = _start_serve(mixed_cfg)
        procs.append(mixed)
        alone, alone_url = _start_serve(alone_cfg)
        procs.append(alone)
        threads: list[int] = []
        # the baseline first: its cycles end within a second of starting, the 1,000 targets' some seconds later
        m_alone = _at_cycle(alone, alone_url, CYCLES, [], INTERVAL)
        m = _at_cycle(mixed, mixed_url, CYCLES, threads, INTERVAL)

        rows = [k for k in m_alone if k.startswith("fleetwatch_") and '{tier="good"}' in k
                and not any(r in k for r in NOT_INVARIANT)
                and not k.startswith(("fleetwatch_scrape_duration", "fleetwatch_plan_check_observed",
                                      "fleetwatch_plan_check_predicted", "fleetwatch_guardrail"))]
        assert 'fleetwatch_ttft_p99_seconds{tier="good"}' in rows and len(rows) >= 8, rows
        # equal up to the rounding of summing 990 histograms instead of one
        assert {k: m.get(k) for k in rows} == {k: pytest.approx(m_alone[k], rel=1e-9) for k in rows}
        assert m['fleetwatch_instances_up{tier="good"}'] == HEALTHY
        assert m['fleetwatch_instances_up{tier="bad"}'] == 1  # the NaN one answers; its rows are unknown

        # how long a cycle of 1,000 targets takes is bench/bench_scale.py's to measure, not a test's
        assert m["fleetwatch_cycle_failures_total"] == 0
        assert max(threads) <= 64 + 12, threads  # the fetch pool's cap, plus HTTP, scheduler and watchdog

        def errors(inst: str, reason: str) -> float:
            return m.get(f'fleetwatch_scrape_errors_total{{instance="{inst}",reason="{reason}",source="vllm",'
                         f'tier="bad"}}', 0)

        assert errors("refused", "refused") >= CYCLES - 1
        for name, reason in HOSTILE.items():
            assert errors(name, reason) >= CYCLES - 1, (name, reason, {k: v for k, v in m.items() if name in k})
        assert m['fleetwatch_invalid_samples_total{input="requests_waiting",instance="nan",tier="bad"}'] >= CYCLES - 1
        # no healthy target lost a scrape to its hostile neighbours
        assert not [k for k, v in m.items() if k.startswith("fleetwatch_scrape_errors_total") and 'tier="good"' in k]
        assert _rss_kb(mixed.pid) < 100 * 1024 + 100 * 1000, "peak RSS above 100 MB + 100 kB per target"

        stderr = sigterm_and_check(mixed, m["fleetwatch_cycles_total"])
        assert "Traceback" not in stderr, stderr[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
        for t in (alone_target, *hostile.values()):
            t.close()
        fleet.close()
