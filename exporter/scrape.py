"""One scrape of every target, concurrently, bounded in time. The I/O edge of the pipeline."""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ALL_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

import requests

from .config import Config, Target
from .exposition import ExpositionError
from .fetch import FetchError, fetch_text
from .model import EngineSample, GpuReading, InstanceSample
from .sources import dcgm, sglang, vllm
from .sources.nvml import NvmlReader

log = logging.getLogger(__name__)

_PARSERS: dict[str, Callable[[str], EngineSample]] = {"vllm": vllm.parse, "sglang": sglang.parse}


@dataclass
class ScrapeStats:
    """Counters and last values about scraping itself, read by the collector."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: dict[tuple[str, str, str, str], int] = field(default_factory=dict)  # tier, instance, source, reason
    duration: dict[tuple[str, str, str], float] = field(default_factory=dict)
    up: dict[tuple[str, str, str], int] = field(default_factory=dict)
    resets: dict[tuple[str, str], int] = field(default_factory=dict)

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

    def copy(self) -> "ScrapeStats":
        with self.lock:
            return ScrapeStats(errors=dict(self.errors), duration=dict(self.duration), up=dict(self.up),
                               resets=dict(self.resets))


class Scraper:
    """Fetches and parses every target of a config. Safe to call from one thread at a time."""

    def __init__(self, config: Config, *, session: requests.Session | None = None,
                 nvml: NvmlReader | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.session = session or requests.Session()
        self.session.trust_env = False  # no proxies from the environment for in-cluster scrapes
        self.nvml = nvml
        self.clock = clock
        self.stats = ScrapeStats()
        n = sum(len(t.targets) for t in config.tiers.values())
        self._pool = ThreadPoolExecutor(max_workers=max(4, min(64, 2 * n)), thread_name_prefix="scrape")
        self._verify: bool | str = config.ca_file if (config.tls_verify and config.ca_file) else config.tls_verify

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.session.close()

    def _get(self, url: str, token_file: str | None) -> str:
        return fetch_text(self.session, url, timeout=self.config.scrape_timeout,
                          max_bytes=self.config.max_body_bytes, verify=self._verify, bearer_token_file=token_file)

    def _engine(self, tier: str, target: Target) -> EngineSample | None:
        t0 = time.monotonic()
        try:
            sample = _PARSERS[target.engine](self._get(target.url, target.bearer_token_file))
        except FetchError as e:
            self._fail(tier, target.name, target.engine, e.reason, str(e), t0)
            return None
        except ExpositionError as e:
            self._fail(tier, target.name, target.engine, "malformed", str(e), t0)
            return None
        except Exception as e:  # noqa: BLE001 - one bad target must never stop the cycle
            self._fail(tier, target.name, target.engine, "other", f"{type(e).__name__}: {e}", t0)
            return None
        self.stats.observe(tier, target.name, target.engine, time.monotonic() - t0, True)
        return sample

    def _fail(self, tier: str, instance: str, source: str, reason: str, message: str, t0: float) -> None:
        self.stats.error(tier, instance, source, reason)
        self.stats.observe(tier, instance, source, time.monotonic() - t0, False)
        log.warning("scrape failed: tier=%s instance=%s source=%s reason=%s: %s", tier, instance, source, reason,
                    message.splitlines()[0] if message else reason)

    def _dcgm(self, url: str, token_file: str | None) -> tuple[GpuReading, ...] | FetchError | ExpositionError:
        try:
            return dcgm.parse(self._get(url, token_file))
        except (FetchError, ExpositionError) as e:
            return e

    def scrape(self) -> list[InstanceSample]:
        """Scrape every target once. Returns within about scrape_timeout, whatever the targets do."""
        now = self.clock()
        started = time.monotonic()
        engine_futs: dict[tuple[str, str], Future[EngineSample | None]] = {}
        dcgm_futs: dict[str, Future[tuple[GpuReading, ...] | FetchError | ExpositionError]] = {}
        for tier in self.config.tiers.values():
            for t in tier.targets:
                engine_futs[(tier.name, t.name)] = self._pool.submit(self._engine, tier.name, t)
                if t.dcgm and t.dcgm not in dcgm_futs:  # a node-wide exporter is fetched once per cycle
                    dcgm_futs[t.dcgm] = self._pool.submit(self._dcgm, t.dcgm, None)  # the token is the engine's
        local = self.nvml.read() if self.nvml is not None and self._wants_nvml() else ()
        all_futs: list[Future[object]] = [*engine_futs.values(), *dcgm_futs.values()]  # type: ignore[list-item]
        wait(all_futs, timeout=self.config.scrape_timeout + 0.5, return_when=ALL_COMPLETED)
        out: list[InstanceSample] = []
        dcgm_t = time.monotonic() - started
        for tier in self.config.tiers.values():
            for t in tier.targets:
                f = engine_futs[(tier.name, t.name)]
                engine = f.result() if f.done() else None
                if not f.done():
                    self._fail(tier.name, t.name, t.engine, "timeout", "cycle deadline passed", started)
                gpus: tuple[GpuReading, ...] = ()
                if t.dcgm:
                    df = dcgm_futs[t.dcgm]
                    res = df.result() if df.done() else FetchError("timeout", "cycle deadline passed")
                    if isinstance(res, tuple):
                        gpus = dcgm.select(res, t.gpus, pod_hint=None)
                        self.stats.observe(tier.name, t.name, "dcgm", dcgm_t, True)
                    else:
                        reason = res.reason if isinstance(res, FetchError) else "malformed"
                        self._fail(tier.name, t.name, "dcgm", reason, str(res), started)
                if t.nvml:
                    gpus = gpus + dcgm.select(local, t.gpus)
                out.append(InstanceSample(tier.name, t.name, now, engine, gpus))
        return out

    def _wants_nvml(self) -> bool:
        return any(t.nvml for tier in self.config.tiers.values() for t in tier.targets)
