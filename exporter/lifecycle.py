"""One daemon lifecycle for every command, as in uvicorn: a ``Config``, then a ``Daemon`` that starts its
parts in order, runs, and stops them in reverse, whatever fails and wherever.

``serve`` runs the scheduled loop with the HTTP server and the Alertmanager client; ``check`` scrapes
twice and reports once; the demo runs cycles on its simulated clock. Each is a ``with Daemon(...)``
block: a part that started is stopped even when a later one fails to start, or the loop raises.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable

from . import state
from .alertmanager import AlertmanagerClient
from .collector import Snapshot, make_registry
from .secrets import redact_url
from .daemon import Pipeline, Server, return_freed_memory
from .evaluate import plan_shortfall
from .gpus import LOCAL
from .model import Config, Mode, Report
from .scrape import Scraper
from .sources import Gpus
from .text import plural

if TYPE_CHECKING:
    from .promread import PrometheusReader

log = logging.getLogger("fleetwatch")


@dataclass(frozen=True)
class Parts:
    """Which parts a command starts. ``serve`` starts them all."""

    http: bool = True  # /metrics and /healthz
    notify: bool = True  # posts to the config's Alertmanagers (fleet mode)
    lock: bool = True  # one daemon per state_dir
    persist: bool = True  # write the state_dir at shutdown
    local_gpus: bool = True  # read this host's GPUs (NVML) for the targets that ask


SERVE = Parts()
ONE_SHOT = Parts(http=False, notify=False, lock=False, persist=False, local_gpus=False)  # check; the demo's cycles


class Daemon:
    """``with Daemon(config) as d:`` starts the fleet source (the scraper, or the Prometheus reader), the
    notifier, the pipeline and the HTTP server; leaving the block stops them in reverse order."""

    def __init__(self, config: Config, parts: Parts = SERVE, *, scraper: Scraper | None = None,
                 clock: Callable[[], float] = time.time, snapshot: Snapshot | None = None) -> None:
        self.config = config
        self.parts = parts
        self._scraper = scraper
        self._clock = clock
        self._snapshot = snapshot
        self._stack = ExitStack()
        self.reader: PrometheusReader | None = None
        self.scraper: Scraper | None = None
        self.notifier: AlertmanagerClient | None = None
        self.server: Server | None = None
        self._pipeline: Pipeline | None = None

    @property
    def pipeline(self) -> Pipeline:
        assert self._pipeline is not None, "the daemon has not started"
        return self._pipeline

    # ------------------------------------------------------------------ startup and shutdown
    def __enter__(self) -> Daemon:
        try:
            self._startup()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stack.close()

    def _startup(self) -> None:
        config, parts, stack = self.config, self.parts, self._stack
        if parts.lock and config.state_dir is not None:
            # raises StateLocked (the caller says it in one line) before anything starts
            try:
                held = state.lock(config.state_dir, f"fleetwatch pid {os.getpid()} on {socket.gethostname()}")
                stack.callback(held.release)
            except OSError as e:  # an unwritable state_dir: nothing is written there either, so nothing to guard
                log.warning("cannot lock %s: %s; the state is kept in memory only", config.state_dir,
                            e.strerror or e)
        if config.prometheus is not None and self._scraper is None:
            from .promread import PrometheusReader

            self.reader = PrometheusReader(config)
            stack.callback(self.reader.close)
        else:
            self.scraper = self._scraper or Scraper(config, local_gpus=_local_gpus(config) if parts.local_gpus else None)
            stack.callback(self.scraper.close)
        if parts.notify and config.alertmanagers and config.mode is Mode.SIDECAR:
            log.warning("alertmanagers: not used in sidecar mode; Prometheus sends the generated rules' alerts")
        elif parts.notify and config.alertmanagers:
            verify: bool | str = config.ca_file if (config.tls_verify and config.ca_file) else config.tls_verify
            self.notifier = AlertmanagerClient(config.alertmanagers, interval=config.interval, verify=verify,
                                               timeout=min(5.0, config.interval / 2))
            stack.callback(self.notifier.close)
        pipeline = Pipeline(config, self.scraper, clock=self._clock, notifier=self.notifier, reader=self.reader)
        if self._snapshot is not None:
            pipeline.snapshot = self._snapshot
        self._pipeline = pipeline
        if parts.persist:
            stack.callback(pipeline.save_state, force=True)
        if self.notifier is not None:
            self.notifier.start()  # posting happens on its own threads: an Alertmanager never delays a cycle
        if parts.http:
            server = Server(config.listen_host, config.listen_port, make_registry(config, pipeline.snapshot),
                            pipeline.health)
            pipeline.http_rejected = lambda: server.rejected
            server.start()
            stack.callback(server.stop)
            self.server = server

    # ------------------------------------------------------------------ serve's loop
    def run(self, stop: threading.Event, on_ready: Callable[[Server], None] | None = None,
            on_report: Callable[[Report], None] | None = None) -> None:
        """A cycle every interval until ``stop`` (SIGTERM and SIGINT set it on the main thread)."""
        from datetime import datetime, timezone

        from apscheduler.events import EVENT_JOB_MAX_INSTANCES
        from apscheduler.schedulers.background import BackgroundScheduler

        config, pipeline = self.config, self.pipeline
        pipeline.source.start(stop)  # Prometheus's history is read off the cycle, with its own deadline and backoff
        if on_report is not None:
            pipeline.on_report.append(on_report)
        scheduler = BackgroundScheduler(timezone="UTC")

        def overrun(event: Any) -> None:
            pipeline.overruns += 1
            log.warning("cycle skipped: the previous cycle is still running (interval %gs)", config.interval)

        scheduler.add_listener(overrun, EVENT_JOB_MAX_INSTANCES)
        scheduler.add_job(pipeline.safe_cycle, "interval", seconds=config.interval, max_instances=1, coalesce=True,
                          next_run_time=datetime.now(timezone.utc), misfire_grace_time=int(config.interval))

        def on_signal(signum: int, frame: Any) -> None:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            stop.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
        scheduler.start()
        try:
            if on_ready is not None and self.server is not None:
                on_ready(self.server)
            stop.wait()
        finally:
            scheduler.shutdown(wait=True)  # lets a running cycle finish; it is bounded by scrape_timeout
        log.info("stopped after %s%s", plural(pipeline.cycles, "cycle"),
                 f" ({plural(pipeline.failures, 'failed cycle')})" if pipeline.failures else "")


def serve(config: Config, *, scraper: Scraper | None = None, stop: threading.Event | None = None,
          on_ready: Callable[[Server], None] | None = None, watch: bool = False) -> int:
    """``fleetwatch serve``: until SIGTERM or SIGINT (or ``stop``)."""
    return_freed_memory()
    stop = stop or threading.Event()
    with Daemon(config, SERVE, scraper=scraper) as daemon, ExitStack() as view:
        _log_start(daemon)
        on_report = None
        if watch:
            from .live import LiveView

            assert daemon.server is not None
            live = view.enter_context(LiveView(f"fleetwatch serve: http://{config.listen_host}:{daemon.server.port}"
                                               f"/metrics"))
            on_report = lambda report: live.update(report, f"  cycle {daemon.pipeline.cycles}")  # noqa: E731
        daemon.run(stop, on_ready, on_report)
    return 0


def _log_start(daemon: Daemon) -> None:
    config = daemon.config
    assert daemon.server is not None
    reader = daemon.reader
    log.info("serving /metrics and /healthz on http://%s:%d (interval %gs, window %gs, %d tiers, %s)",
             config.listen_host, daemon.server.port, config.interval, config.window, len(config.tiers),
             f"reading the fleet from prometheus {reader.name}" if reader is not None
             else f"{sum(len(t.targets) for t in config.tiers.values())} targets")
    for name, tc in config.tiers.items():
        short = plan_shortfall(tc)
        if short is not None:
            log.warning("tier %s: the plan's instances: %s", name, short)
    if config.mode is Mode.SIDECAR:
        ((tier, tc),) = config.tiers.items()
        t = tc.targets[0]
        gpus = (f"dcgm-exporter {redact_url(t.dcgm)}" + (f" (pod {t.gpus.namespace or '*'}/{t.gpus.pod})" if t.gpus
                                                         else " (POD_NAME is not set: all its GPUs if it covers "
                                                              "this node only; none if it labels GPUs with pods)")
                if t.dcgm else "NVML" if t.nvml else "none (no dcgm URL, no NVML: the GPU rows stay unknown)")
        log.info("sidecar of tier %s, instance %s: engine %s %s, GPUs from %s", tier, t.name, t.engine,
                 redact_url(t.url), gpus)


def _local_gpus(config: Config) -> dict[str, Callable[[], Gpus]]:
    """A reader for each GPU source read on this host that a target asks for (NVML)."""
    targets = [t for tier in config.tiers.values() for t in tier.targets]
    return {s.name: s.open() for s in LOCAL if s.open is not None and any(s.wanted(t) for t in targets)}
