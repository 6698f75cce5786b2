"""One scrape of every target, concurrently, bounded in time. The I/O edge of the pipeline."""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ALL_COMPLETED, Future, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Mapping, TypeVar

import requests

from .model import Config, Mode, Target
from .exposition import ExpositionError
from .fairpool import ANSWERED, FAILING, NEW, NOT_STARTED, FairPool, Job, NotStarted
from .fetch import BodyBudget, FetchError, Lease, fetch_text, new_session
from .model import EngineSample, InstanceSample
from .engines import engine
from .gpus import FETCHED, LOCAL
from .sources import Gpus, maps_pods, selects
from .secrets import redact_url
from .text import num, plural

log = logging.getLogger(__name__)
T = TypeVar("T")

WAIT_GRACE = 0.1  # seconds past the scrape deadline that a cycle waits for parsers to finish
# memory: a fetch's body may hold SMALL_BODY bytes of its own; beyond that, all bodies in flight share
# BUDGET_BODIES x max_body_bytes, and one large body is parsed at a time (see README, Performance)
SMALL_BODY = 1 << 20
BUDGET_BODIES = 4
BACKOFF_AFTER = 3  # consecutive failed cycles after which a target's engine is tried less often
BACKOFF_MAX_SECONDS = 60.0  # a target back up is tried again within this long, whatever the interval


PARSE_FACTOR = 8  # a large body's parse peaks at about this many times its size (bench/bench_memory.py)
BASELINE_MIB = {Mode.FLEET: 128, Mode.SIDECAR: 64}  # the process with its pages and 1,000 targets' state (measured)


def pool_size(targets: int) -> int:
    """Fetches at once: two per target up to 64 (a node-wide dcgm-exporter and its engines), at least 4."""
    return max(4, min(64, 2 * targets))


def memory_bound_mib(targets: int, max_body_bytes: int, mode: Mode = Mode.FLEET) -> float:
    """The peak RSS fleetwatch stays under whatever its targets send: the baseline, plus what bodies may hold
    (each fetch's small allowance and the shared budget, never more than every fetch at the cap), twice (a
    body's bytes, then its text), plus one large body's parse."""
    workers = pool_size(targets)
    held = min(workers * max_body_bytes, workers * SMALL_BODY + BUDGET_BODIES * max_body_bytes)
    return BASELINE_MIB[mode] + (2 * held + PARSE_FACTOR * max_body_bytes) / (1 << 20)


def memory_limit_mib(targets: int, max_body_bytes: int, mode: Mode = Mode.FLEET) -> int:
    """A container memory limit from the bound: a quarter above it, rounded up to 64 MiB."""
    need = 1.25 * memory_bound_mib(targets, max_body_bytes, mode)
    return int(-(-need // 64) * 64)


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
    skipped: dict[tuple[str, str, str], int] = field(default_factory=dict)  # tier, instance, reason: cycles left out

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

    def skip(self, tier: str, instance: str, reason: str) -> None:
        """A cycle this target was not tried: ``backoff`` (it keeps failing) or ``deadline`` (no worker was
        free before the cycle's deadline; not a failure of the target)."""
        with self.lock:
            k = (tier, instance, reason)
            self.skipped[k] = self.skipped.get(k, 0) + 1


class Scraper:
    """Fetches and parses every target of a config. Safe to call from one thread at a time."""

    def __init__(self, config: Config, *, session: requests.Session | None = None,
                 local_gpus: Mapping[str, Callable[[], Gpus]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """``local_gpus``: a reader per GPU source read on this host (NVML), by the source's name."""
        self.config = config
        self.session = session or new_session()
        self.session.trust_env = False  # no proxies from the environment for in-cluster scrapes
        self.local_gpus = dict(local_gpus or {})
        self.clock = clock
        self.stats = ScrapeStats()
        self._invalid: dict[tuple[str, str], frozenset[str]] = {}  # per target, what its last scrape held
        self._cycle = 0
        self._failures: dict[tuple[str, str], int] = {}  # consecutive failed cycles per target
        self._next_try: dict[tuple[str, str], int] = {}  # the cycle a failing target is tried again
        self._last_error: dict[tuple[str, str], str] = {}  # what a failing target last said, while it backs off
        self._answered: dict[tuple[str, str], bool] = {}  # per target (and dcgm URL) tried: did its last try answer
        self._unselected: set[tuple[str, str]] = set()  # targets warned of: a podded exporter, no selector
        n = 32 if config.discovers else sum(len(t.targets) for t in config.tiers.values())
        self._pool = FairPool(pool_size(n))
        self.budget = BodyBudget(BUDGET_BODIES * config.max_body_bytes, SMALL_BODY)
        self._large_parse = threading.Semaphore(1)  # a large body's parse is CPU-bound: one at a time
        self._verify: bool | str = config.ca_file if (config.tls_verify and config.ca_file) else config.tls_verify
        self.closed = False
        self._targets: dict[str, tuple[Target, ...]] = {n: t.targets for n, t in config.tiers.items()}
        self.discoverer = None
        if config.discovers:
            from .discovery import SOURCE, Discoverer

            self.discoverer = Discoverer(config, lambda tier, what, reason: self.stats.error(tier, what, SOURCE, reason))

    def targets(self) -> dict[str, tuple[Target, ...]]:
        """Per tier, the targets of the last scrape: listed, or as discovery found them."""
        return dict(self._targets)

    def close(self) -> None:
        self.closed = True
        self._pool.close()
        self.session.close()
        if self.discoverer is not None:
            self.discoverer.close()

    def _get(self, url: str, token_file: str | None, deadline: float, lease: Lease) -> str:
        # every fetch ends by the cycle's deadline, also one that waited in the pool's queue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError("timeout", "the cycle's scrape deadline passed before this fetch could start")
        try:
            return fetch_text(self.session, url, timeout=remaining, max_bytes=self.config.max_body_bytes,
                              verify=self._verify, bearer_token_file=token_file, lease=lease)
        except FetchError as e:
            if e.reason == "timeout":  # the operator set scrape_timeout; what was left of it says nothing
                raise FetchError("timeout", f"no complete answer within the {num(self.config.scrape_timeout)}s "
                                            f"scrape_timeout") from None
            raise

    def _engine(self, tier: str, target: Target, deadline: float) -> EngineSample | str:
        """The parsed sample, or why there is none, in words."""
        t0 = time.monotonic()
        try:
            with self.budget.lease(deadline) as lease:
                sample = self._parse(engine(target.engine).parse, self._get(target.url, target.bearer_token_file,
                                                                        deadline, lease), deadline)
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

    def _parse(self, parse: Callable[[str], T], text: str, deadline: float) -> T:
        """``parse(text)`` unless the cycle's time is spent: a body that cannot be parsed in time is dropped,
        and the other fetches go on. Large bodies are parsed one at a time (their parse is what costs)."""
        if len(text) <= SMALL_BODY:
            if time.monotonic() > deadline + WAIT_GRACE:
                raise FetchError("timeout", "fetched, but the cycle's deadline passed before it could be parsed")
            return parse(text)
        if not self._large_parse.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise FetchError("timeout", f"fetched ({len(text) >> 20} MiB), but other large bodies were being parsed "
                                        f"until the cycle's deadline")
        try:
            return parse(text)
        finally:
            self._large_parse.release()

    def _gpus(self, parse: Callable[[str], Gpus], url: str, token_file: str | None, deadline: float
              ) -> Gpus | FetchError | ExpositionError:
        try:
            with self.budget.lease(deadline) as lease:
                return self._parse(parse, self._get(url, token_file, deadline, lease), deadline)
        except (FetchError, ExpositionError) as e:
            return e
        except Exception as e:  # noqa: BLE001 - one bad exporter must never stop the cycle
            return FetchError("other", f"{type(e).__name__}: {str(e)[:200]}")

    def scrape(self) -> list[InstanceSample]:
        """Scrape every target once. Returns within about scrape_timeout, whatever the targets do."""
        started = time.monotonic()
        deadline = started + self.config.scrape_timeout
        if self.discoverer is not None:  # the targets of this cycle: as the lookups find them now
            self._targets = self.discoverer.refresh()
        now = self.clock()
        engine_futs: dict[tuple[str, str], Future[EngineSample | str | NotStarted]] = {}
        gpu_futs: dict[tuple[str, str], Future[Gpus | FetchError | ExpositionError | NotStarted]] = {}
        self._cycle += 1
        jobs: list[Job] = []
        for tier, targets in self._targets.items():
            for t in targets:
                if self._next_try.get((tier, t.name), 0) <= self._cycle:
                    job = Job(tier, self._rank((tier, t.name)), partial(self._engine, tier, t, deadline))
                    engine_futs[(tier, t.name)] = job.future
                    jobs.append(job)
                else:  # backing off: it stays down, and a hanging target no longer holds a thread every cycle
                    self.stats.skip(tier, t.name, "backoff")
                for source in FETCHED:
                    url = source.url(t)
                    if url and (source.name, url) not in gpu_futs:  # a node-wide exporter: fetched once a cycle
                        assert source.parse is not None
                        job = Job(tier, self._rank((source.name, url)),
                                  partial(self._gpus, source.parse, url, source.token_file(t), deadline))
                        gpu_futs[(source.name, url)] = job.future
                        jobs.append(job)
        self._pool.submit(jobs, deadline)
        local = {s.name: self.local_gpus[s.name]() for s in LOCAL
                 if s.name in self.local_gpus and any(s.wanted(t) for ts in self._targets.values() for t in ts)}
        all_futs: list[Future[object]] = [*engine_futs.values(), *gpu_futs.values()]  # type: ignore[list-item]
        # the fetches end at the deadline by themselves (exporter/fetch.py); the grace is for parsing
        wait(all_futs, timeout=max(0.0, deadline - time.monotonic()) + WAIT_GRACE, return_when=ALL_COMPLETED)
        not_started = self._pool.drop_queued()
        if not_started:
            log.warning("%s not tried this cycle: the %d scrape workers were busy until the deadline (slow or "
                        "hanging targets of other tiers hold theirs; counted in fleetwatch_scrape_skipped_total "
                        "reason=deadline)", plural(not_started, "fetch", "fetches"), self._pool.workers)
        out: list[InstanceSample] = []
        gpu_t = time.monotonic() - started
        for tier, targets in self._targets.items():
            for t in targets:
                key = (tier, t.name)
                f = engine_futs.get(key)
                engine: EngineSample | None = None
                if f is None:  # backing off: still down, for the reason it last gave
                    error: str | None = f"{self._last_error.get(key, 'did not answer')} (failing " \
                                        f"{plural(self._failures.get(key, 0), 'cycle')} in a row; tried again " \
                                        f"within {num(BACKOFF_MAX_SECONDS)} s)"
                elif f.done() and f.result() is NOT_STARTED:  # not tried: no failure, no backoff
                    self.stats.skip(tier, t.name, "deadline")
                    error = (f"not tried this cycle: all {self._pool.workers} scrape workers were busy until the "
                             f"deadline")
                else:
                    res = f.result() if f.done() else self._fail(tier, t.name, t.engine, "timeout",
                                                                  "not complete when the cycle's deadline passed",
                                                                  started)
                    assert not isinstance(res, NotStarted)
                    engine, error = (res, None) if isinstance(res, EngineSample) else (None, res)
                    if error is not None:
                        self._last_error[key] = error
                    self._schedule(tier, t.name, engine is not None)
                gpus: Gpus = ()
                gpu_error = None
                for source in FETCHED:
                    url = source.url(t)
                    if not url:
                        continue
                    df = gpu_futs[(source.name, url)]
                    got = df.result() if df.done() else FetchError("timeout", "not complete when the cycle's "
                                                                              "deadline passed")
                    if got is NOT_STARTED:
                        gpu_error = f"{source.title} not tried this cycle: every scrape worker was busy until the deadline"
                    elif isinstance(got, tuple):
                        gpus = gpus + source.select(got, t.gpus)
                        if not selects(t.gpus) and maps_pods(got):
                            gpu_error = self._unselected_gpus(tier, t.name, source.title, url)
                        self._answered[(source.name, url)] = True
                        self.stats.observe(tier, t.name, source.name, gpu_t, True)
                    else:
                        self._answered[(source.name, url)] = False
                        reason = got.reason if isinstance(got, FetchError) else "malformed"
                        said = str(got) if isinstance(got, FetchError) else f"not Prometheus metrics: {got}"
                        gpu_error = f"{source.title} " + self._fail(tier, t.name, source.name, reason, said,
                                                                    started)
                for source in LOCAL:
                    if source.wanted(t) and source.name in local:
                        gpus = gpus + source.select(local[source.name], t.gpus)
                out.append(InstanceSample(tier, t.name, now, engine, gpus, error=error, gpu_error=gpu_error))
        return out

    def _unselected_gpus(self, tier: str, instance: str, title: str, url: str) -> str:
        why = (f"{title} labels its GPUs with the pods that hold them, and this target has no gpus: {{pod: ...}} "
               f"selector: none is counted for the tier, since a GPU of another pod never is")
        if (tier, instance) not in self._unselected:  # once per target: the config says it, not the cycle
            self._unselected.add((tier, instance))
            log.warning("tier=%s instance=%s: %s at %s labels its GPUs with the pods that hold them, and this "
                        "target has no gpus: {pod: ...} selector, so none is counted for the tier (a GPU of another "
                        "pod never is); set gpus: {pod: <the engine's pod>, namespace: ...}",
                        tier, instance, title, redact_url(url))
        return why

    def _rank(self, key: tuple[str, str]) -> int:
        """Who goes first within a tier: what answered last time, then what was never tried, then what fails."""
        answered = self._answered.get(key)
        return NEW if answered is None else ANSWERED if answered else FAILING

    def _schedule(self, tier: str, instance: str, ok: bool) -> None:
        key = (tier, instance)
        before = self._failures.get(key, 0)
        if ok:
            self._answered[key] = True
            if before >= BACKOFF_AFTER:
                log.info("tier=%s instance=%s answers again after %s", tier, instance, plural(before, "failed try",
                                                                                              "failed tries"))
            self._failures.pop(key, None)
            self._next_try.pop(key, None)
            self._last_error.pop(key, None)
            return
        self._answered[key] = False
        self._failures[key] = before + 1
        wait = backoff_cycles(before + 1, self.config.interval)
        if wait > 1 and before + 1 == BACKOFF_AFTER:
            log.warning("tier=%s instance=%s failed %d cycles in a row; trying it less often (at most %g s apart) "
                        "until it answers", tier, instance, before + 1, BACKOFF_MAX_SECONDS)
        self._next_try[key] = self._cycle + wait

