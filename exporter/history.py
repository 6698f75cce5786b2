"""What a daemon remembers between cycles, each its own object: the history behind the observed peak and
the scale-down (kept in memory, in the state_dir, or read back from Prometheus), and the cold starts
it saw."""
from __future__ import annotations

import logging
import math
import threading
from collections import deque
from dataclasses import replace
from typing import Callable, Iterable, Mapping

from . import state
from .evaluate import HistoryPoint
from .model import HistoryNote, InstanceSample

log = logging.getLogger("exporter.daemon")  # the daemon's lines, under its name (the demo quiets it)

STATE_SAVE_EVERY = 60.0  # seconds between state writes; also written on shutdown
STATE_ERROR_LOG_EVERY = 600.0  # seconds between two log lines about the same failing state write
COLD_STARTS_KEPT = 50  # per tier: the P90 of the recent ones


class History:
    """Per tier, the points (time, arrival rate counted toward the peak, recommended instances) of the
    last ``keep`` seconds. Cycles append; a thread reading Prometheus's own history may replace them:
    every access holds the lock."""

    def __init__(self, tiers: Iterable[str], keep: float, started_at: float, *, state_dir: str | None = None,
                 from_prometheus: bool = False) -> None:
        self.keep = keep
        self.started_at = started_at
        self.state_dir = state_dir
        self.from_prometheus = from_prometheus
        self.read = not from_prometheus  # Prometheus's history is read once, when it answers
        self.seeded: str | None = None  # the demo's simulated days, when it seeded them
        self.errors: dict[str, int] = {}  # state file trouble, by reason
        self._points: dict[str, deque[HistoryPoint]] = {n: deque() for n in tiers}
        self._lock = threading.Lock()
        self._saved_at: float | None = None
        self._write_failing_since: float | None = None
        self._write_logged_at = 0.0

    # ------------------------------------------------------------------ reading and extending
    def snapshot(self) -> dict[str, list[HistoryPoint]]:
        with self._lock:
            return {k: list(v) for k, v in self._points.items()}

    def append(self, tier: str, point: HistoryPoint) -> None:
        with self._lock:
            h = self._points[tier]
            h.append(point)
            while h and h[0].timestamp < point.timestamp - self.keep:
                h.popleft()

    def extend(self, tier: str, points: Iterable[HistoryPoint]) -> None:
        with self._lock:
            self._points[tier].extend(points)

    def replace_with(self, read: Mapping[str, list[HistoryPoint]]) -> None:
        """Prometheus's own history, read back: it replaces what it covers; points the cycles added after
        its last one are kept."""
        with self._lock:
            for name, points in read.items():
                last = points[-1].timestamp if points else -math.inf
                self._points[name] = deque([*points, *(p for p in self._points[name] if p.timestamp > last)])
            self.read = True

    def note(self) -> HistoryNote:
        """What the report says about the history behind the observed peak and scale-down."""
        with self._lock:
            oldest = min((h[0].timestamp for h in self._points.values() if h), default=None)
        if self.from_prometheus:
            note = HistoryNote(True, oldest, source="prometheus", read=self.read)
        elif self.state_dir is None:
            started = ("was seeded when fleetwatch started (see seeded)" if self.seeded
                       else "started empty when fleetwatch started")
            note = HistoryNote(False, self.started_at,
                               note=f"no state_dir: the history is in memory only and {started}; scale_down waits "
                                    f"for a whole stabilization window observed since then")
        else:
            note = HistoryNote(True, self.started_at if oldest is None else oldest, state_dir=self.state_dir)
        return replace(note, seeded=self.seeded)

    # ------------------------------------------------------------------ the state_dir
    def load(self, now: float) -> None:
        if self.state_dir is None:
            return
        loaded = state.load(self.state_dir, list(self._points), now)
        if loaded.error is not None:
            self.errors[loaded.error.reason] = self.errors.get(loaded.error.reason, 0) + 1
            where = f"; moved aside to {loaded.moved_to}" if loaded.moved_to else ""
            log.error("state file in %s not used (%s: %s)%s; history starts empty", self.state_dir,
                      loaded.error.reason, loaded.error, where)
        horizon = now - self.keep
        with self._lock:
            for name, points in loaded.history.items():
                self._points[name] = deque(p for p in points if p.timestamp >= horizon)
            n = sum(len(h) for h in self._points.values())
        if n:
            log.info("loaded %d history points from %s", n, self.state_dir)

    def save(self, now: float, force: bool = False) -> None:
        if self.state_dir is None:
            return
        if not force and self._saved_at is not None and now - self._saved_at < STATE_SAVE_EVERY:
            return
        try:
            with self._lock:
                state.save(self.state_dir, self._points, now)
            self._saved_at = now
            if self._write_failing_since is not None:
                log.info("the state file in %s is written again", self.state_dir)
                self._write_failing_since = None
        except OSError as e:
            self.errors["write"] = self.errors.get("write", 0) + 1
            # said when it starts and then every STATE_ERROR_LOG_EVERY, not every cycle; always counted
            if self._write_failing_since is None or now - self._write_logged_at >= STATE_ERROR_LOG_EVERY:
                log.error("cannot write the state file in %s: %s (counted in fleetwatch_state_errors_total; said "
                          "again in %g min if it persists)", self.state_dir, e.strerror or e,
                          STATE_ERROR_LOG_EVERY / 60)
                self._write_logged_at = now
            if self._write_failing_since is None:
                self._write_failing_since = now


class ColdStarts:
    """Per tier, how long the instances that started after fleetwatch did took to serve."""

    def __init__(self, tiers: Iterable[str], since: float) -> None:
        self.since = since  # fleetwatch's own start: an instance older than it is not a cold start seen
        self._seen: dict[str, deque[float]] = {n: deque(maxlen=COLD_STARTS_KEPT) for n in tiers}
        self._served: set[tuple[str, str, float | None]] = set()

    def seen(self, tier: str) -> list[float]:
        return list(self._seen.get(tier, ()))

    def p90(self) -> dict[str, float | None]:
        """Per tier, the P90 of the cold starts seen: process start to the first generated token."""
        out: dict[str, float | None] = {}
        for tier, got in self._seen.items():
            xs = sorted(got)
            out[tier] = xs[min(len(xs) - 1, math.ceil(0.9 * len(xs)) - 1)] if xs else None
        return out

    def observe(self, s: InstanceSample, pod_started: float | None) -> None:
        """An instance that started after fleetwatch did, seen for the first time: how long it took from
        its engine process's start to its first generated token or, where the engine exposes no process
        start, from its pod's start (Kubernetes discovery) to its first answered scrape."""
        assert s.engine is not None
        process = s.engine.gauges.get("process_start_time")
        what: Callable[[float], str]
        if process is not None and process >= self.since:
            started, what = process, "its first token came {:.0f}s after its process started".format
            if not s.engine.counters.get("generation_tokens"):
                return  # up, not serving yet
        elif pod_started is not None and pod_started >= self.since and process is None:
            started, what = pod_started, "it answered {:.0f}s after its pod started".format
        else:
            return
        key = (s.tier, s.instance, started)
        if key in self._served or s.timestamp <= started:
            return
        self._served.add(key)
        self._seen.setdefault(s.tier, deque(maxlen=COLD_STARTS_KEPT)).append(s.timestamp - started)
        log.info("tier=%s instance=%s cold start: %s", s.tier, s.instance, what(s.timestamp - started))
