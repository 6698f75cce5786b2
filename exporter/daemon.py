"""``fleetwatch serve``: scheduler + HTTP server + lifecycle.

One APScheduler interval job runs scrape -> window -> evaluate -> publish. ``max_instances=1``
means a slow cycle is never overlapped by the next; the skipped run is counted as an overrun.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from .alertmanager import AlertmanagerClient, alerts_from_report
from .collector import Published, Snapshot, make_registry
from .config import Config
from .evaluate import HistoryPoint, evaluate, peak_sample
from .model import InstanceSample, Report
from .scrape import Scraper
from .window import WindowStore, count_resets

log = logging.getLogger(__name__)


class Pipeline:
    """The state a daemon carries between cycles. ``cycle`` is called from one thread at a time."""

    def __init__(self, config: Config, scraper: Scraper, clock: Callable[[], float] = time.time,
                 notifier: AlertmanagerClient | None = None) -> None:
        self.config = config
        self.notifier = notifier
        self.scraper = scraper
        self.clock = clock
        self.store = WindowStore(config.window, {n: [t.name for t in tier.targets] for n, tier in config.tiers.items()})
        self.history: dict[str, deque[HistoryPoint]] = {n: deque() for n in config.tiers}
        self.snapshot = Snapshot()
        self.cycles = 0
        self.overruns = 0
        self._last: dict[tuple[str, str], InstanceSample] = {}

    def ingest(self, samples: list[InstanceSample]) -> None:
        for s in samples:
            prev = self._last.get((s.tier, s.instance))
            if s.engine is not None:
                if prev is not None and prev.engine is not None:
                    n = max((count_resets([prev.engine.counters[k], v]) for k, v in s.engine.counters.items()
                             if k in prev.engine.counters), default=0)
                    if n:
                        self.scraper.stats.reset_seen(s.tier, s.instance, n)
                        log.info("counter reset on tier=%s instance=%s (engine restarted?)", s.tier, s.instance)
                self._last[(s.tier, s.instance)] = s
            self.store.add(s)

    def evaluate(self, now: float) -> Report:
        self.store.trim(now)
        windows = {name: self.store.view(name, now) for name in self.config.tiers}
        report = evaluate(self.config, windows, {k: list(v) for k, v in self.history.items()}, now, self.config.window)
        for name, t in report.tiers.items():
            h = self.history[name]
            rps = peak_sample(windows[name], t.metrics["requests_per_second"].value, self.config.window)
            h.append(HistoryPoint(now, rps, t.resize.recommended_instances))
            while h and h[0].timestamp < now - self.config.history:
                h.popleft()
        return report

    def cycle(self) -> Report:
        t0 = time.monotonic()
        samples = self.scraper.scrape()
        self.ingest(samples)
        now = samples[0].timestamp if samples else self.clock()
        report = self.evaluate(now)
        self.cycles += 1
        if self.notifier is not None:
            try:
                self.notifier.update(alerts_from_report(report))
                self.notifier.flush()  # bounded by its timeout; failures stay queued
            except Exception:  # noqa: BLE001 - notification trouble must not stop evaluation
                log.exception("notifying Alertmanager failed")
        self.snapshot.publish(Published(report, self.scraper.stats.copy(), self.cycles, time.monotonic() - t0,
                                        self.overruns, self.notifier.stats() if self.notifier else None))
        worst = [f"{n}:{t.resize.action}" for n, t in report.tiers.items()]
        log.info("cycle %d done in %.2fs; %s", self.cycles, time.monotonic() - t0, " ".join(worst))
        return report

    def safe_cycle(self) -> None:
        try:
            self.cycle()
        except Exception:  # noqa: BLE001 - the daemon keeps serving the last good snapshot
            log.exception("cycle failed; serving the previous snapshot")

    def healthy(self) -> bool:
        pub = self.snapshot.get()
        if pub.report is None:
            return True  # starting up
        return self.clock() - pub.report.generated_at < 3 * self.config.interval + self.config.scrape_timeout


def make_handler(registry: CollectorRegistry, healthy: Callable[[], bool]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fleetwatch"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, ctype, code = generate_latest(registry), CONTENT_TYPE_LATEST, 200
            elif path == "/healthz":
                ok = healthy()
                body, ctype, code = (b"ok\n" if ok else b"stale: no cycle finished recently\n"), "text/plain", (
                    200 if ok else 503)
            elif path == "/":
                body, ctype, code = b"fleetwatch: see /metrics and /healthz\n", "text/plain", 200
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("http: " + format, *args)

    return Handler


class Server:
    """HTTP server for /metrics and /healthz on a daemon thread."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, healthy: Callable[[], bool]) -> None:
        self.httpd = ThreadingHTTPServer((host, port), make_handler(registry, healthy))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(config: Config, *, scraper: Scraper | None = None, stop: threading.Event | None = None,
          on_ready: Callable[[Server], None] | None = None) -> int:
    from apscheduler.events import EVENT_JOB_MAX_INSTANCES
    from apscheduler.schedulers.background import BackgroundScheduler

    scraper = scraper or Scraper(config, nvml=_maybe_nvml(config))
    notifier = None
    if config.alertmanagers:
        verify: bool | str = config.ca_file if (config.tls_verify and config.ca_file) else config.tls_verify
        notifier = AlertmanagerClient(config.alertmanagers, interval=config.interval, verify=verify,
                                      timeout=min(5.0, config.interval / 2))
    pipeline = Pipeline(config, scraper, notifier=notifier)
    registry = make_registry(config, pipeline.snapshot)
    server = Server(config.listen_host, config.listen_port, registry, pipeline.healthy)
    server.start()
    log.info("serving /metrics and /healthz on http://%s:%d (interval %gs, window %gs, %d tiers, %d targets)",
             config.listen_host, server.port, config.interval, config.window, len(config.tiers),
             sum(len(t.targets) for t in config.tiers.values()))

    scheduler = BackgroundScheduler(timezone="UTC")

    def overrun(event: Any) -> None:
        pipeline.overruns += 1
        log.warning("cycle skipped: the previous cycle is still running (interval %gs)", config.interval)

    scheduler.add_listener(overrun, EVENT_JOB_MAX_INSTANCES)
    from datetime import datetime, timezone

    scheduler.add_job(pipeline.safe_cycle, "interval", seconds=config.interval, max_instances=1, coalesce=True,
                      next_run_time=datetime.now(timezone.utc), misfire_grace_time=int(config.interval))
    scheduler.start()
    stop = stop or threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    if on_ready is not None:
        on_ready(server)
    stop.wait()
    scheduler.shutdown(wait=True)  # lets a running cycle finish; it is bounded by scrape_timeout
    server.stop()
    scraper.close()
    if notifier is not None:
        notifier.close()
    log.info("stopped")
    return 0


def _maybe_nvml(config: Config) -> Any:
    if not any(t.nvml for tier in config.tiers.values() for t in tier.targets):
        return None
    from .sources.nvml import NvmlReader, PynvmlBackend

    return NvmlReader(PynvmlBackend())
