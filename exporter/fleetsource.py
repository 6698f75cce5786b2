"""Where a cycle's view of the fleet comes from, behind one interface: the targets scraped into
fleetwatch's own window (``ScrapedFleet``), or a Prometheus that scraped them (``PrometheusFleet``).
The pipeline asks its source to ``observe`` and evaluates what comes back; it never asks which it has."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Protocol

from .evaluate import scraped_rows
from .history import ColdStarts, History
from .model import Config, InstanceSample
from .scrape import Scraper, ScrapeStats
from .text import num
from .window import Quantity, TierView, WindowStore, count_resets

if TYPE_CHECKING:
    from .promread import PrometheusReader

log = logging.getLogger("exporter.daemon")  # the daemon's lines, under its name (the demo quiets it)

HISTORY_RETRY_FIRST = 30.0  # seconds before the Prometheus-backed history is asked again, doubling each time
HISTORY_RETRY_MAX = 600.0


@dataclass(frozen=True)
class Observation:
    """A cycle's view of the fleet: per tier, what evaluation reads, and the rows where the source
    computed them itself (Prometheus, from the catalogue's PromQL)."""

    now: float
    views: Mapping[str, TierView]
    rows: Mapping[str, Mapping[str, Quantity]]  # per tier: computed over the window, or Prometheus's answers
    window: float | None  # the span the views cover, when it is not the config's window


class FleetSource(Protocol):
    @property
    def stats(self) -> ScrapeStats: ...
    def start(self, stop: threading.Event) -> None:
        """A daemon's work off the cycle, until ``stop``."""
    def observe(self, now: float) -> Observation: ...
    def close(self) -> None: ...


class ScrapedFleet:
    """fleetwatch scrapes every target into its own window store."""

    def __init__(self, config: Config, scraper: Scraper, cold_starts: ColdStarts) -> None:
        self.config = config
        self.scraper = scraper
        self.cold_starts = cold_starts
        self.store = WindowStore(config.window, {n: [t.name for t in tier.targets] for n, tier in config.tiers.items()},
                                 slack=config.interval / 2, expected=round(config.window / config.interval) + 1)
        self._last: dict[tuple[str, str], InstanceSample] = {}

    @property
    def stats(self) -> ScrapeStats:
        return self.scraper.stats

    def close(self) -> None:
        self.scraper.close()

    def start(self, stop: threading.Event) -> None:
        pass  # everything happens in the cycle

    def observe(self, now: float) -> Observation:
        samples = self.scraper.scrape()
        self.ingest(samples)
        return self.view(samples[0].timestamp if samples else now)

    def view(self, now: float) -> Observation:
        self.store.trim(now)
        # the window the store holds: the config's, or check's span between its two scrapes
        views = {name: self.store.view(name, now) for name in self.config.tiers}
        return Observation(now, views, scraped_rows(self.config, views), self.store.window)

    def span(self, seconds: float, scrapes: int) -> None:
        """A window of exactly ``seconds`` and ``scrapes`` (a one-shot check's two)."""
        self.store.window, self.store.expected = seconds, scrapes

    def ingest(self, samples: list[InstanceSample]) -> None:
        targets = self.scraper.targets()
        if self.scraper.discoverer is not None:  # this scrape's targets, as the lookups found them
            self.store.set_instances({n: [t.name for t in ts] for n, ts in targets.items()})
        pods = {(n, t.name): t.started_at for n, ts in targets.items() for t in ts if t.started_at is not None}
        for s in samples:
            prev = self._last.get((s.tier, s.instance))
            if s.engine is not None:
                self.cold_starts.observe(s, pods.get((s.tier, s.instance)))
                if prev is not None and prev.engine is not None:
                    n = max((count_resets([prev.engine.counters[k], v]) for k, v in s.engine.counters.items()
                             if k in prev.engine.counters), default=0)
                    if n:
                        self.stats.reset_seen(s.tier, s.instance, n)
                        log.info("counter reset on tier=%s instance=%s (engine restarted?)", s.tier, s.instance)
                self._last[(s.tier, s.instance)] = s
            self.store.add(s)


class PrometheusFleet:
    """A Prometheus scraped the fleet: the rows are its answers, and the history is its own, read back."""

    def __init__(self, reader: PrometheusReader, history: History, clock: Callable[[], float]) -> None:
        self.reader = reader
        self.history = history
        self.clock = clock
        self._history_async = False  # serve reads it on a thread of its own (start_history), never in a cycle

    @property
    def stats(self) -> ScrapeStats:
        return self.reader.stats

    def close(self) -> None:
        self.reader.close()

    def observe(self, now: float, window: float | None = None) -> Observation:
        if not self.history.read and not self._history_async:  # a one-shot check reads it here
            self.read_history(now)
        views, rows = self.reader.read(now, window)
        return Observation(now, views, rows, window)

    def read_history(self, now: float, retry_in: float | None = None) -> bool:
        """The history is Prometheus's own, read back once (then extended each cycle). Returns whether it
        was read."""
        from .sources.prometheus_api import PrometheusError

        try:
            history = self.reader.history(now)
        except PrometheusError as e:
            log.error("cannot read the history from prometheus %s (%s: %s); the resize verdicts use the plan's peak "
                      "until it answers%s", self.reader.name, e.reason, str(e).splitlines()[0] if str(e) else e.reason,
                      f" (trying again in {num(retry_in)}s)" if retry_in is not None else "")
            return False
        self.history.replace_with(history)
        return True

    def start(self, stop: threading.Event) -> None:
        """Read the history on a thread of its own: a range query that hangs or fails holds no cycle. Tried
        again after 30 s, then twice as long each time, at most 10 min apart, until it answers."""
        self._history_async = True

        def run() -> None:
            wait = HISTORY_RETRY_FIRST
            while not stop.is_set() and not self.read_history(self.clock(), retry_in=wait):
                if stop.wait(wait):
                    return
                wait = min(2 * wait, HISTORY_RETRY_MAX)

        threading.Thread(target=run, name="history", daemon=True).start()
