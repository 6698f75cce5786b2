"""``fleetwatch serve``: scheduler + HTTP server + lifecycle.

One APScheduler interval job runs scrape -> window -> evaluate -> publish. ``max_instances=1``
means a slow cycle is never overlapped by the next; the skipped run is counted as an overrun.
"""
from __future__ import annotations

import gzip
import logging
import math
import signal
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable, Mapping

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from .alertmanager import AlertmanagerClient, alerts_from_report
from .collector import Published, Snapshot, make_registry
from .config import Config, redact_url
from .evaluate import HistoryPoint, evaluate, peak_sample, plan_shortfall
from .model import InstanceSample, Report
from .scrape import Scraper, ScrapeStats
from .schedule import annotate
from .window import Quantity, TierView, WindowStore, count_resets

if TYPE_CHECKING:  # imported where used: commands that scrape never load the Prometheus-backed mode
    from .promread import PrometheusReader
from . import state

log = logging.getLogger(__name__)


STATE_SAVE_EVERY = 60.0  # seconds between state writes; also written on shutdown
COLD_STARTS_KEPT = 50  # per tier: the P90 of the recent ones


class Pipeline:
    """The state a daemon carries between cycles. ``cycle`` is called from one thread at a time."""

    def __init__(self, config: Config, scraper: Scraper | None, clock: Callable[[], float] = time.time,
                 notifier: AlertmanagerClient | None = None, reader: PrometheusReader | None = None) -> None:
        """``scraper`` scrapes the targets; with ``source: prometheus``, ``reader`` reads the fleet instead."""
        assert (scraper is None) != (reader is None), "a pipeline reads the fleet one way"
        self.config = config
        self.notifier = notifier
        self.scraper = scraper
        self.reader = reader
        self._history_read = reader is None  # the Prometheus-backed history is read once, when it answers
        self.clock = clock
        self.store = WindowStore(config.window, {n: [t.name for t in tier.targets] for n, tier in config.tiers.items()},
                                 slack=config.interval / 2, expected=round(config.window / config.interval) + 1)
        self.history: dict[str, deque[HistoryPoint]] = {n: deque() for n in config.tiers}
        self.snapshot = Snapshot()
        self.cycles = 0
        self.overruns = 0
        self.failures = 0  # cycles that raised (the previous snapshot stays published)
        self.evaluation_errors: dict[str, int] = {}
        self.state_errors: dict[str, int] = {}
        self.started_at = clock()
        self._saved_at: float | None = None
        self.http_rejected: Callable[[], int] = lambda: 0  # serve() points it at its HTTP server
        self._last: dict[tuple[str, str], InstanceSample] = {}
        self._served: set[tuple[str, str, float | None]] = set()
        self.history_extra: dict[str, object] = {}  # what else the history rests on (the demo's seeded days)
        self.on_report: list[Callable[[Report], None]] = []  # serve --watch: the live view  # instances seen generating (a restart is a new process)
        self.cold_starts: dict[str, deque[float]] = {}
        if config.state_dir is not None:
            self._load_state(config.state_dir)

    # ------------------------------------------------------------------ state across restarts
    def _load_state(self, state_dir: str) -> None:
        loaded = state.load(state_dir, list(self.config.tiers), self.clock())
        if loaded.error is not None:
            self.state_errors[loaded.error.reason] = self.state_errors.get(loaded.error.reason, 0) + 1
            where = f"; moved aside to {loaded.moved_to}" if loaded.moved_to else ""
            log.error("state file in %s not used (%s: %s)%s; history starts empty", state_dir, loaded.error.reason,
                      loaded.error, where)
        horizon = self.clock() - self.config.history
        for name, points in loaded.history.items():
            self.history[name] = deque(p for p in points if p.timestamp >= horizon)
        n = sum(len(h) for h in self.history.values())
        if n:
            log.info("loaded %d history points from %s", n, state_dir)

    def save_state(self, force: bool = False) -> None:
        if self.config.state_dir is None:
            return
        now = self.clock()
        if not force and self._saved_at is not None and now - self._saved_at < STATE_SAVE_EVERY:
            return
        try:
            state.save(self.config.state_dir, self.history, now)
            self._saved_at = now
        except OSError as e:
            self.state_errors["write"] = self.state_errors.get("write", 0) + 1
            log.error("cannot write the state file in %s: %s", self.config.state_dir, e.strerror or e)

    @property
    def stats(self) -> ScrapeStats:
        source = self.reader or self.scraper
        assert source is not None
        return source.stats

    def read_history(self, now: float) -> None:
        """source: prometheus: the history is Prometheus's own, read back once (then extended each cycle)."""
        from .sources.prometheus_api import PrometheusError

        assert self.reader is not None
        try:
            history = self.reader.history(now)
        except PrometheusError as e:
            log.error("cannot read the history from prometheus %s (%s: %s); the resize verdicts use the plan's peak "
                      "until it answers", self.reader.name, e.reason, str(e).splitlines()[0] if str(e) else e.reason)
            return
        for name, points in history.items():
            self.history[name] = deque(points)
        self._history_read = True

    def history_note(self) -> dict[str, object]:
        """What the report says about the history behind the observed peak and scale-down."""
        return {**self._history_note(), **self.history_extra}

    def _history_note(self) -> dict[str, object]:
        if self.reader is not None:
            return {"persisted": True, "source": "prometheus", "read": self._history_read,
                    "since": min((h[0].timestamp for h in self.history.values() if h), default=None)}
        if self.config.state_dir is None:
            return {"persisted": False, "since": self.started_at,
                    "note": "no state_dir: the history is in memory only and started empty when fleetwatch "
                            "started; scale_down waits for a whole stabilization window observed since then"}
        return {"persisted": True, "since": min((h[0].timestamp for h in self.history.values() if h),
                                                 default=self.started_at), "state_dir": self.config.state_dir}

    def cold_start_p90(self) -> dict[str, float | None]:
        """Per tier, the P90 of the cold starts seen: process start to the first generated token."""
        out: dict[str, float | None] = {}
        for tier in self.config.tiers:
            xs = sorted(self.cold_starts.get(tier, ()))
            out[tier] = xs[min(len(xs) - 1, math.ceil(0.9 * len(xs)) - 1)] if xs else None
        return out

    def _cold_start(self, s: InstanceSample, pod_started: float | None) -> None:
        """An instance that started after fleetwatch did, seen for the first time: how long it took from
        its engine process's start to its first generated token or, where the engine exposes no process
        start, from its pod's start (Kubernetes discovery) to its first answered scrape."""
        assert s.engine is not None
        process = s.engine.gauges.get("process_start_time")
        if process is not None and process >= self.started_at:
            started, what = process, "its first token came {:.0f}s after its process started"
            if not s.engine.counters.get("generation_tokens"):
                return  # up, not serving yet
        elif pod_started is not None and pod_started >= self.started_at and process is None:
            started, what = pod_started, "it answered {:.0f}s after its pod started"
        else:
            return
        key = (s.tier, s.instance, started)
        if key in self._served or s.timestamp <= started:
            return
        self._served.add(key)
        self.cold_starts.setdefault(s.tier, deque(maxlen=COLD_STARTS_KEPT)).append(s.timestamp - started)
        log.info("tier=%s instance=%s cold start: %s", s.tier, s.instance, what.format(s.timestamp - started))

    def ingest(self, samples: list[InstanceSample]) -> None:
        if self.scraper is not None and self.scraper.discoverer is not None:  # this scrape's targets
            self.store.set_instances({n: [t.name for t in tier.targets] for n, tier in self.scraper.config.tiers.items()})
        pods = ({(n, t.name): t.started_at for n, tier in self.scraper.config.tiers.items() for t in tier.targets
                 if t.started_at is not None} if self.scraper is not None and self.scraper.discoverer is not None else {})
        for s in samples:
            prev = self._last.get((s.tier, s.instance))
            if s.engine is not None:
                self._cold_start(s, pods.get((s.tier, s.instance)))
                if prev is not None and prev.engine is not None:
                    n = max((count_resets([prev.engine.counters[k], v]) for k, v in s.engine.counters.items()
                             if k in prev.engine.counters), default=0)
                    if n:
                        self.stats.reset_seen(s.tier, s.instance, n)
                        log.info("counter reset on tier=%s instance=%s (engine restarted?)", s.tier, s.instance)
                self._last[(s.tier, s.instance)] = s
            self.store.add(s)

    def evaluate(self, now: float) -> Report:
        self.store.trim(now)
        # the window the store holds: the config's, or check's span between its two scrapes
        return self._evaluate(now, {name: self.store.view(name, now) for name in self.config.tiers},
                              window=self.store.window)

    def evaluate_prometheus(self, now: float, window: float | None = None) -> Report:
        assert self.reader is not None
        if not self._history_read:
            self.read_history(now)
        views, rows = self.reader.read(now, window)
        return self._evaluate(now, views, rows, window)

    def _evaluate(self, now: float, windows: Mapping[str, TierView],
                  rows: Mapping[str, Mapping[str, Quantity]] | None = None, window: float | None = None) -> Report:
        history = {k: list(v) for k, v in self.history.items()}
        report = evaluate(self.config, windows, history, now, window or self.config.window,
                          history_note=self.history_note(), rows=rows)
        report = annotate(report, self.config, history, now, self.cold_start_p90())
        for name, t in report.tiers.items():
            if t.error is not None:
                self.evaluation_errors[name] = self.evaluation_errors.get(name, 0) + 1
                log.error("evaluating tier %s failed, its rows are unknown this cycle: %s", name, t.error)
                continue
            h = self.history[name]
            rps = peak_sample(windows[name], t.metrics["requests_per_second"].value, self.config.window)
            h.append(HistoryPoint(now, rps, t.resize.recommended_instances))
            while h and h[0].timestamp < now - self.config.history:
                h.popleft()
        return report

    def cycle(self) -> Report:
        t0 = time.monotonic()
        if self.reader is not None:
            report = self.evaluate_prometheus(self.clock())
        else:
            assert self.scraper is not None
            samples = self.scraper.scrape()
            self.ingest(samples)
            now = samples[0].timestamp if samples else self.clock()
            report = self.evaluate(now)
        self.cycles += 1
        if self.notifier is not None:
            try:
                self.notifier.update(alerts_from_report(report, self.config.alert_labels))
                self.notifier.flush()  # bounded by its timeout; failures stay queued
            except Exception:  # noqa: BLE001 - notification trouble must not stop evaluation
                log.exception("notifying Alertmanager failed")
        self.save_state()
        self.publish(report, time.monotonic() - t0)
        for show in self.on_report:
            show(report)
        worst = [f"{n}:{t.resize.action}" for n, t in report.tiers.items()]
        log.info("cycle %d done in %.2fs; %s", self.cycles, time.monotonic() - t0, " ".join(worst))
        return report

    def publish(self, report: Report | None, seconds: float | None) -> None:
        prev = self.snapshot.get()
        self.snapshot.publish(Published(
            report if report is not None else prev.report, self.stats.copy(), self.cycles,
            seconds if seconds is not None else prev.cycle_seconds, self.overruns,
            self.notifier.stats() if self.notifier else None, failures=self.failures,
            evaluation_errors=dict(self.evaluation_errors), state_errors=dict(self.state_errors),
            http_rejected=self.http_rejected()))

    def safe_cycle(self) -> None:
        try:
            self.cycle()
        except Exception as e:  # noqa: BLE001 - the daemon keeps serving the last good snapshot
            self.failures += 1
            log.error("cycle failed, serving the previous snapshot: %s: %s", type(e).__name__, str(e)[:200])
            log.debug("cycle failure", exc_info=True)
            self.publish(None, None)

    def healthy(self) -> bool:
        pub = self.snapshot.get()
        if pub.report is None:
            return True  # starting up
        return self.clock() - pub.report.generated_at < 3 * self.config.interval + self.config.scrape_timeout


HTTP_IDLE_TIMEOUT = 10.0  # seconds a connection may sit without sending a full request
HTTP_MAX_CONNECTIONS = 32  # handler threads at most; more connections are closed at once


def make_handler(registry: CollectorRegistry, healthy: Callable[[], bool]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fleetwatch"
        timeout = HTTP_IDLE_TIMEOUT  # socket timeout: an idle or slow client is dropped, its thread ends

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            encoding = ""
            if path == "/metrics":
                # content negotiation (OpenMetrics or text) and gzip, as prometheus_client serves it
                encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
                body, code = encoder(registry), 200
                if "gzip" in self.headers.get("Accept-Encoding", ""):
                    body, encoding = gzip.compress(body, compresslevel=1), "gzip"
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
            if encoding:
                self.send_header("Content-Encoding", encoding)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("http: " + format, *args)

    return Handler


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, but at most ``limit`` of them: past that a connection is closed
    at once and counted, so idle clients cannot grow the process without bound."""

    daemon_threads = True
    request_queue_size = 128  # accept promptly, then refuse past the limit, rather than stall in backlog

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], limit: int) -> None:
        self._slots = threading.BoundedSemaphore(limit)
        self.rejected = 0
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.rejected += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class Server:
    """HTTP server for /metrics and /healthz on a daemon thread."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, healthy: Callable[[], bool],
                 max_connections: int = HTTP_MAX_CONNECTIONS) -> None:
        self.httpd = _BoundedHTTPServer((host, port), make_handler(registry, healthy), max_connections)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def rejected(self) -> int:
        return self.httpd.rejected

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(config: Config, *, scraper: Scraper | None = None, stop: threading.Event | None = None,
          on_ready: Callable[[Server], None] | None = None, watch: bool = False) -> int:
    from apscheduler.events import EVENT_JOB_MAX_INSTANCES
    from apscheduler.schedulers.background import BackgroundScheduler

    reader = None
    if config.prometheus is not None and scraper is None:
        from .promread import PrometheusReader

        reader = PrometheusReader(config)
    if reader is None:
        scraper = scraper or Scraper(config, nvml=_maybe_nvml(config))
    notifier = None
    if config.alertmanagers and config.mode == "sidecar":
        log.warning("alertmanagers: not used in sidecar mode; Prometheus sends the generated rules' alerts")
    elif config.alertmanagers:
        verify: bool | str = config.ca_file if (config.tls_verify and config.ca_file) else config.tls_verify
        notifier = AlertmanagerClient(config.alertmanagers, interval=config.interval, verify=verify,
                                      timeout=min(5.0, config.interval / 2))
    pipeline = Pipeline(config, scraper, notifier=notifier, reader=reader)
    registry = make_registry(config, pipeline.snapshot)
    server = Server(config.listen_host, config.listen_port, registry, pipeline.healthy)
    pipeline.http_rejected = lambda: server.rejected
    server.start()
    log.info("serving /metrics and /healthz on http://%s:%d (interval %gs, window %gs, %d tiers, %s)",
             config.listen_host, server.port, config.interval, config.window, len(config.tiers),
             f"reading the fleet from prometheus {reader.name}" if reader is not None
             else f"{sum(len(t.targets) for t in config.tiers.values())} targets")
    for name, tc in config.tiers.items():
        short = plan_shortfall(tc)
        if short is not None:
            log.warning("tier %s: the plan's instances: %s", name, short)
    if config.mode == "sidecar":
        ((tier, tc),) = config.tiers.items()
        t = tc.targets[0]
        gpus = (f"dcgm-exporter {redact_url(t.dcgm)}" + (f" (pod {t.gpus.namespace or '*'}/{t.gpus.pod})" if t.gpus
                                                         else " (all its GPUs: POD_NAME is not set)")
                if t.dcgm else "NVML" if t.nvml else "none (no dcgm URL, no NVML: the GPU rows stay unknown)")
        log.info("sidecar of tier %s, instance %s: engine %s %s, GPUs from %s", tier, t.name, t.engine,
                 redact_url(t.url), gpus)

    live = None
    if watch:
        from .live import LiveView

        live = LiveView(f"fleetwatch serve: http://{config.listen_host}:{server.port}/metrics")
        live.__enter__()
        pipeline.on_report.append(lambda report: live.update(report, f"  cycle {pipeline.cycles}"))
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
    if live is not None:
        live.__exit__(None, None, None)
    pipeline.save_state(force=True)
    server.stop()
    (reader or scraper).close()  # type: ignore[union-attr]
    if notifier is not None:
        notifier.close()
    log.info("stopped after %d cycles", pipeline.cycles)
    return 0


def _maybe_nvml(config: Config) -> Any:
    if not any(t.nvml for tier in config.tiers.values() for t in tier.targets):
        return None
    from .sources.nvml import NvmlReader, PynvmlBackend

    return NvmlReader(PynvmlBackend())
