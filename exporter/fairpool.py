"""The scrape workers, shared fairly: a healthy target's fetch is never starved by others' failures.

A plain thread pool runs fetches first in, first out: 64 hanging targets listed before a healthy tier
hold every worker until the deadline, and the healthy fetches never start. Here each tier has its own
queue, and a free worker serves the tier with the fewest fetches in flight, so every tier gets its
share of the workers whatever the others do. Within a tier, targets that answered last time go
first, then targets never tried, then those that are failing: a target with a history of timeouts
takes a worker only once those that answer have theirs.

A job a worker could not start before the cycle's deadline is handed back as NOT_STARTED: it was not
tried, which is not a failure (no error counted, no backoff).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

ANSWERED, NEW, FAILING = 0, 1, 2  # a job's rank within its tier: lower goes first


class NotStarted:
    """The result of a job no worker started before the deadline."""

    def __repr__(self) -> str:
        return "NOT_STARTED"


NOT_STARTED = NotStarted()


@dataclass(eq=False)
class Job:
    tier: str
    rank: int
    run: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)


def pick(queued: Mapping[str, Sequence[Job]], in_flight: Mapping[str, int], served: Mapping[str, int]) -> str | None:
    """The tier whose next job a free worker takes: among tiers with jobs queued, the one with the fewest
    in flight, then the one served longest ago (round robin between equals). None when nothing is queued."""
    best: tuple[int, int, str] | None = None
    for tier, jobs in queued.items():
        if jobs:
            key = (in_flight.get(tier, 0), served.get(tier, -1), tier)
            if best is None or key < best:
                best = key
    return None if best is None else best[2]


class FairPool:
    """``workers`` threads serving per-tier queues (see the module's docstring). Started on first use."""

    def __init__(self, workers: int, name: str = "scrape") -> None:
        self.workers = workers
        self._name = name
        self._cond = threading.Condition()
        self._queued: dict[str, deque[Job]] = {}
        self._in_flight: dict[str, int] = {}
        self._served: dict[str, int] = {}
        self._serial = 0
        self._deadline = float("inf")
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, jobs: Sequence[Job], deadline: float) -> None:
        """Queue ``jobs`` (each tier's in rank order, stable) for a cycle that ends at ``deadline`` (monotonic)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the pool is closed")
            self._deadline = deadline
            for job in sorted(jobs, key=lambda j: j.rank):
                self._queued.setdefault(job.tier, deque()).append(job)
            while len(self._threads) < self.workers:
                t = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(t)
                t.start()
            self._cond.notify_all()

    def drop_queued(self) -> int:
        """Hand back every job still queued as NOT_STARTED; returns how many there were."""
        with self._cond:
            jobs = [j for q in self._queued.values() for j in q]
            self._queued.clear()
        for j in jobs:
            if j.future.set_running_or_notify_cancel():
                j.future.set_result(NOT_STARTED)
        return len(jobs)

    def in_flight(self) -> int:
        with self._cond:
            return sum(self._in_flight.values())

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.drop_queued()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not any(self._queued.values()):
                    self._cond.wait()
                if self._closed:
                    return
                tier = pick(self._queued, self._in_flight, self._served)
                assert tier is not None
                job = self._queued[tier].popleft()
                self._in_flight[tier] = self._in_flight.get(tier, 0) + 1
                self._serial += 1
                self._served[tier] = self._serial
                late = time.monotonic() >= self._deadline
            try:
                if job.future.set_running_or_notify_cancel():
                    if late:
                        job.future.set_result(NOT_STARTED)
                    else:
                        try:
                            job.future.set_result(job.run())
                        except BaseException as e:  # noqa: BLE001 - handed to the one waiting on the future
                            job.future.set_exception(e)
            finally:
                with self._cond:
                    self._in_flight[tier] -= 1
