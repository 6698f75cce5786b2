"""Fair scraping: a healthy target's fetch is never starved by others' failures.

A zone outage is when the healthy tiers must stay watched. Nine tiers of 100 engines that hang,
listed before a tier of 100 healthy ones: every healthy fetch still starts and answers, every cycle,
and the healthy tier's numbers are exactly those of the same tier scraped alone.
"""
from __future__ import annotations

import functools
import threading
from concurrent.futures import wait
from pathlib import Path

import pytest

from exporter.fairpool import ANSWERED, FAILING, NEW, NOT_STARTED, FairPool, Job, pick

from fakes import HangingFleet, ReplayFleet, write_config
from test_faults import healthy_numbers, snapshots


# ---------------------------------------------------------------- the rule, pure


def _jobs(tier: str, *ranks: int) -> list[Job]:
    return [Job(tier, r, lambda: None) for r in ranks]


def test_a_free_worker_serves_the_tier_with_the_fewest_in_flight_then_round_robin() -> None:
    queued = {"hang-a": _jobs("hang-a", NEW, NEW), "hang-b": _jobs("hang-b", NEW), "good": _jobs("good", NEW)}
    assert pick(queued, {"hang-a": 30, "hang-b": 30, "good": 2}, {}) == "good"
    assert pick(queued, {"hang-a": 3, "hang-b": 3, "good": 3}, {"hang-a": 5, "hang-b": 9, "good": 7}) == "hang-a"
    assert pick({"a": [], "b": []}, {}, {}) is None


def test_within_a_tier_what_answered_goes_first_and_what_fails_last() -> None:
    """One worker, one tier: the order it runs jobs in is the rank order, whatever the submission order."""
    pool = FairPool(1)
    gate = threading.Event()
    ran: list[str] = []
    blocker = Job("t", ANSWERED, gate.wait)
    jobs = [Job("t", rank, functools.partial(ran.append, name)) for name, rank in
            (("failing-1", FAILING), ("new-1", NEW), ("answered", ANSWERED), ("failing-2", FAILING), ("new-2", NEW))]
    try:
        pool.submit([blocker], deadline=float("inf"))
        pool.submit(jobs, deadline=float("inf"))  # queued while the only worker is held
        gate.set()
        wait([j.future for j in jobs], timeout=30)
        assert ran == ["answered", "new-1", "new-2", "failing-1", "failing-2"]
    finally:
        pool.close()


def test_a_job_no_worker_started_before_the_deadline_is_not_started_not_failed() -> None:
    pool = FairPool(1)
    gate = threading.Event()
    try:
        running = threading.Event()
        def hold() -> bool:
            running.set()
            return gate.wait()

        held = Job("t", NEW, hold)
        late = Job("t", NEW, lambda: "ran")
        pool.submit([held, late], deadline=float("inf"))
        assert running.wait(30)
        assert pool.drop_queued() == 1  # the cycle ends while ``late`` waits: it is handed back, not run
        gate.set()
        assert late.future.result(timeout=30) is NOT_STARTED and held.future.result(timeout=30) is True
        expired = Job("t", NEW, lambda: "ran")
        pool.submit([expired], deadline=0.0)  # a deadline already passed when a worker takes it
        assert expired.future.result(timeout=30) is NOT_STARTED
    finally:
        pool.close()


# ---------------------------------------------------------------- at 1,000 targets


@pytest.mark.integration
def test_900_hanging_targets_never_starve_100_healthy_ones(tmp_path: Path, alone_on_the_machine: None) -> None:
    texts = snapshots()
    healthy = ReplayFleet(texts)
    hanging = HangingFleet()
    # a timeout with room for parsing 100 bodies on a loaded 2-core machine: the test is about who gets a
    # worker, not about CPU
    extra = "interval: 10s\nscrape_timeout: 4s"
    good = [{"vllm": healthy.url(i), "name": f"good-{i}"} for i in range(100)]
    tiers: dict[str, list[dict[str, str]]] = {
        f"zone-{z}": [{"vllm": hanging.url(100 * z + i), "name": f"hang-{100 * z + i}"} for i in range(100)]
        for z in range(9)}
    tiers["good"] = good  # listed last: a first-in, first-out pool would start it only after 900 hanging fetches
    try:
        alone, _ = healthy_numbers(write_config(str(tmp_path / "alone.yaml"), {"good": good}, extra=extra), texts)
        healthy.requests.clear()
        mixed, errors = healthy_numbers(write_config(str(tmp_path / "mixed.yaml"), tiers, extra=extra), texts)
        assert alone["ttft_p99_seconds"] is not None
        assert mixed == alone, "hanging tiers changed the healthy tier's numbers"
        assert not [k for k in errors if k[0].startswith("good")], "a healthy target was counted failing"
        assert sorted(healthy.requests.values()) == [2] * 100, "every healthy target is fetched every cycle"
        # and the hanging ones were tried, their failures counted as timeouts, never a healthy one's
        assert sum(n for (inst, reason), n in errors.items() if reason == "timeout") >= 64
        assert all(reason == "timeout" for inst, reason in errors)
    finally:
        hanging.close()
        healthy.close()
