"""One scrape of every target, concurrently, bounded in time. The I/O edge of the pipeline."""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ALL_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

import requests

from .model import Config, Target
from .exposition import ExpositionError
from .fetch import FetchError, fetch_text, new_session
from .model import EngineSample, GpuReading, InstanceSample
from .sources import dcgm, sglang, vllm
from .sources.nvml import NvmlReader
from .text import num, plural

log = logging.getLogger(__name__)

_PARSERS: dict[str, Callable[[str], EngineSample]] = {"vllm": vllm.parse, "sglang": sglang.parse}
WAIT_GRACE = 0.1  # seconds past the scrape deadline that a cycle waits for parsers to finish
BACKOFF_AFTER = 3  # consecutive failed cycles after which a target's engine is tried less often
BACKOFF_MAX_SECONDS = 60.0  # a target back up is tried again within this long, whatever the interval


def backoff_cycles(failures: int, interval: float) -> int:
    """Cycles until the next try of an engine that failed ``failures`` cycles in a row: every cycle
    at first, then 2, 4, 8 ... cycles apart, never more than BACKOFF_MAX_SECONDS."""
    if failures < BACKOFF_AFTER:
        return 1
    cap = max(1, int(BACKOFF_MAX_SECONDS // interval))
    return min(cap, 1 << min(failures - BACKOFF_AFTER + 1, 16))


@dataclass
class ScrapeStats:
    """Counters and last values about scraping itself, read by the collector."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: dict[tuple[str, str, str, str], int] = field(default_factory=dict)  # tier, instance, source, reason
    duration: dict[tuple[str, str, str], float] = field(default_factory=dict)
    up: dict[tuple[str, str, str], int] = field(default_factory=dict)
    resets: dict[tuple[str, str], int] = field(default_factory=dict)
    invalid: dict[tuple[str, str, str], int] = field(default_factory=dict)  # tier, instance, canonical input
    skipped: dict[tuple[str, str], int] = field(default_factory=dict)  # tier, instance: cycles left out (backoff)

    def error(self, tier: str, instance: str, source: str, reason: str) -> None:
        with self.lock:
            k = (tier, instance, source, reason)
            self.errors[k] = self.errors.get(k, 0) + 1

    def observe(self, tier: str, instance: str, source: str, seconds: float, ok: bool) -> None:
        with self.lock:
            self.duration[(tier, instance, source)] = seconds
            self.up[(tier, instance, source)] = 1 if ok else 0

    def reset_seen(self, tier: str, instance: str, n: int) -> None:
        with self.lock:
            self.resets[(tier, instance)] = self.resets.get((tier, instance), 0) + n

    def invalid_seen(self, tier: str, instance: str, keys: frozenset[str]) -> None:
        with self.lock:
            for k in keys:
                self.invalid[(tier, instance, k)] = self.invalid.get((tier, instance, k), 0) + 1

    def copy(self) -> "ScrapeStats":
        with self.lock:
            return ScrapeStats(errors=dict(self.errors), duration=dict(self.duration), up=dict(self.up),
                               resets=dict(self.resets), invalid=dict(self.invalid), skipped=dict(self.skipped))

    def skip(self, tier: str, instance: str) -> None:
        with self.lock:
            self.skipped[(tier, instance)] = self.skipped.get((tier, instance), 0) + 1


class Scraper:
    """Fetches and parses every target of a config. Safe to call from one thread at a time."""

    def __init__(self, config: Config, *, session: requests.Session | None = None,
                 nvml: NvmlReader | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.session = session or new_session()
        self.session.trust_env = False  # no proxies from the environment for in-cluster scrapes
        self.nvml = nvml
        self.clock = clock
        self.stats = ScrapeStats()
        self._invalid: dict[tuple[str, str], frozenset[str]] = {}  # per target, what its last scrape held
        self._cycle = 0
        self._failures: dict[tuple[str, str], int] = {}  # consecutive failed cycles per target
        self._next_try: dict[tuple[str, str], int] = {}  # the cycle a failing target is tried again
        self._last_error: dict[tuple[str, str], str] = {}  # what a failing target last said, while it backs off
        n = 32 if config.discovers else sum(len(t.targets) for t in config.tiers.values())
        self._pool = ThreadPoolExecutor(max_workers=max(4, min(64, 2 * n)), thread_name_prefix="scrape")
        self._verify: bool | str = config.ca_file if (config.tls_verify and config.ca_file) else config.tls_verify
        self.discoverer = None
        if config.discovers:
            from .discovery import SOURCE, Discoverer

            self.discoverer = Discoverer(config, lambda tier, what, reason: self.stats.error(tier, what, SOURCE, reason))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.session.close()
        if self.discoverer is not None:
            self.discoverer.close()

    def _get(self, url: str, token_file: str | None, deadline: float) -> str:
        # every fetch ends by the cycle's deadline, also one that waited in the pool's queue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError("timeout", "the cycle's scrape deadline passed before this fetch could start")
        try:
            return fetch_text(self.session, url, timeout=remaining, max_bytes=self.config.max_body_bytes,
                              verify=self._verify, bearer_token_file=token_file)
        except FetchError as e:
            if e.reason == "timeout":  # the operator set scrape_timeout; what was left of it says nothing
                raise FetchError("timeout", f"no complete answer within the {num(self.config.scrape_timeout)}s "
                                            f"scrape_timeout") from None
            raise

    def _engine(self, tier: str, target: Target, deadline: float) -> EngineSample | str:
        """The parsed sample, or why there is none, in words."""
        t0 = time.monotonic()
        try:
            sample = _PARSERS[target.engine](self._get(target.url, target.bearer_token_file, deadline))
        except FetchError as e:
            return self._fail(tier, target.name, target.engine, e.reason, str(e), t0)
        except ExpositionError as e:
            return self._fail(tier, target.name, target.engine, "malformed", f"not Prometheus metrics: {e}", t0)
        except Exception as e:  # noqa: BLE001 - one bad target must never stop the cycle
            return self._fail(tier, target.name, target.engine, "other", f"{type(e).__name__}: {str(e)[:200]}", t0)
        self.stats.observe(tier, target.name, target.engine, time.monotonic() - t0, True)
        if sample.invalid:
            self.stats.invalid_seen(tier, target.name, sample.invalid)
            # one line when an instance starts sending bad values, not one per scrape
            new = sample.invalid - self._invalid.get((tier, target.name), frozenset())
            (log.warning if new else log.debug)(
                "tier=%s instance=%s sent NaN, infinite or negative values for %s; those rows are unknown",
                tier, target.name, ", ".join(sorted(sample.invalid)))
        self._invalid[(tier, target.name)] = sample.invalid
        return sample

    def _fail(self, tier: str, instance: str, source: str, reason: str, message: str, t0: float) -> str:
        """Count and log a failed fetch; return what went wrong, in one line."""
        said = message.splitlines()[0] if message else reason
        self.stats.error(tier, instance, source, reason)
        self.stats.observe(tier, instance, source, time.monotonic() - t0, False)
        log.warning("scrape failed: tier=%s instance=%s source=%s reason=%s: %s", tier, instance, source, reason, said)
        return said

    def _dcgm(self, url: str, token_file: str | None, deadline: float
              ) -> tuple[GpuReading, ...] | FetchError | ExpositionError:
        try:
            return dcgm.parse(self._get(url, token_file, deadline))
        except (FetchError, ExpositionError) as e:
            return e
        except Exception as e:  # noqa: BLE001 - one bad exporter must never stop the cycle
            return FetchError("other", f"{type(e).__name__}: {str(e)[:200]}")

    def scrape(self) -> list[InstanceSample]:
        """Scrape every target once. Returns within about scrape_timeout, whatever the targets do."""
        started = time.monotonic()
        deadline = started + self.config.scrape_timeout
        if self.discoverer is not None:  # the targets of this cycle: as the lookups find them now
            self.config = self.discoverer.refresh()
        now = self.clock()
        engine_futs: dict[tuple[str, str], Future[EngineSample | str]] = {}
        dcgm_futs: dict[str, Future[tuple[GpuReading, ...] | FetchError | ExpositionError]] = {}
        self._cycle += 1
        for tier in self.config.tiers.values():
            for t in tier.targets:
                if self._next_try.get((tier.name, t.name), 0) <= self._cycle:
                    engine_futs[(tier.name, t.name)] = self._pool.submit(self._engine, tier.name, t, deadline)
                else:  # backing off: it stays down, and a hanging target no longer holds a thread every cycle
                    self.stats.skip(tier.name, t.name)
                if t.dcgm and t.dcgm not in dcgm_futs:  # a node-wide exporter is fetched once per cycle
                    dcgm_futs[t.dcgm] = self._pool.submit(self._dcgm, t.dcgm, t.dcgm_bearer_token_file, deadline)
        local = self.nvml.read() if self.nvml is not None and self._wants_nvml() else ()
        all_futs: list[Future[object]] = [*engine_futs.values(), *dcgm_futs.values()]  # type: ignore[list-item]
        # the fetches end at the deadline by themselves (exporter/fetch.py); the grace is for parsing
        wait(all_futs, timeout=max(0.0, deadline - time.monotonic()) + WAIT_GRACE, return_when=ALL_COMPLETED)
        out: list[InstanceSample] = []
        dcgm_t = time.monotonic() - started
        for tier in self.config.tiers.values():
            for t in tier.targets:
                key = (tier.name, t.name)
                f = engine_futs.get(key)
                engine: EngineSample | None = None
                if f is None:  # backing off: still down, for the reason it last gave
                    error: str | None = f"{self._last_error.get(key, 'did not answer')} (failing " \
                                        f"{plural(self._failures.get(key, 0), 'cycle')} in a row; tried again " \
                                        f"within {num(BACKOFF_MAX_SECONDS)} s)"
                else:
                    res = f.result() if f.done() else self._fail(tier.name, t.name, t.engine, "timeout",
                                                                  "not complete when the cycle's deadline passed",
                                                                  started)
                    engine, error = (res, None) if isinstance(res, EngineSample) else (None, res)
                    if error is not None:
                        self._last_error[key] = error
                    self._schedule(tier.name, t.name, engine is not None)
                gpus: tuple[GpuReading, ...] = ()
                gpu_error = None
                if t.dcgm:
                    df = dcgm_futs[t.dcgm]
                    got = df.result() if df.done() else FetchError("timeout", "not complete when the cycle's "
                                                                              "deadline passed")
                    if isinstance(got, tuple):
                        gpus = dcgm.select(got, t.gpus)
                        self.stats.observe(tier.name, t.name, "dcgm", dcgm_t, True)
                    else:
                        reason = got.reason if isinstance(got, FetchError) else "malformed"
                        said = str(got) if isinstance(got, FetchError) else f"not Prometheus metrics: {got}"
                        gpu_error = "dcgm-exporter " + self._fail(tier.name, t.name, "dcgm", reason, said, started)
                if t.nvml:
                    gpus = gpus + dcgm.select(local, t.gpus)
                out.append(InstanceSample(tier.name, t.name, now, engine, gpus, error=error, gpu_error=gpu_error))
        return out

    def _schedule(self, tier: str, instance: str, ok: bool) -> None:
        key = (tier, instance)
        before = self._failures.get(key, 0)
        if ok:
            if before >= BACKOFF_AFTER:
                log.info("tier=%s instance=%s answers again after %s", tier, instance, plural(before, "failed try",
                                                                                              "failed tries"))
            self._failures.pop(key, None)
            self._next_try.pop(key, None)
            self._last_error.pop(key, None)
            return
        self._failures[key] = before + 1
        wait = backoff_cycles(before + 1, self.config.interval)
        if wait > 1 and before + 1 == BACKOFF_AFTER:
            log.warning("tier=%s instance=%s failed %d cycles in a row; trying it less often (at most %g s apart) "
                        "until it answers", tier, instance, before + 1, BACKOFF_MAX_SECONDS)
        self._next_try[key] = self._cycle + wait

    def _wants_nvml(self) -> bool:
        return any(t.nvml for tier in self.config.tiers.values() for t in tier.targets)
