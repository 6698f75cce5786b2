"""``fleetwatch serve``: scheduler + HTTP server + lifecycle.

One APScheduler interval job runs scrape -> window -> evaluate -> publish. ``max_instances=1``
means a slow cycle is never overlapped by the next; the skipped run is counted as an overrun.
"""
from __future__ import annotations

import gzip
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable, Mapping

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from .alertmanager import AlertmanagerClient, alerts_from_report, identities
from .collector import Published, Snapshot
from .model import Config
from .fetch import cut_at
from .secrets import redact
from .text import num, plural
from .evaluate import HistoryPoint, evaluate, peak_sample
from .model import HistoryNote, InstanceSample, Report
from .fleetsource import FleetSource, Observation, PrometheusFleet, ScrapedFleet
from .history import ColdStarts, History
from .scrape import Scraper, ScrapeStats
from .schedule import annotate
from .window import Quantity, TierView

if TYPE_CHECKING:  # imported where used: commands that scrape never load the Prometheus-backed mode
    from .promread import PrometheusReader

log = logging.getLogger(__name__)


class Pipeline:
    """The state a daemon carries between cycles. ``cycle`` is called from one thread at a time."""

    def __init__(self, config: Config, scraper: Scraper | None, clock: Callable[[], float] = time.time,
                 notifier: AlertmanagerClient | None = None, reader: PrometheusReader | None = None) -> None:
        """``scraper`` scrapes the targets; with ``source: prometheus``, ``reader`` reads the fleet instead."""
        assert (scraper is None) != (reader is None), "a pipeline reads the fleet one way"
        self.config = config
        self.notifier = notifier
        # the rules fleetwatch's posts copy (name, labels, annotations), made once
        self.identities = identities(config) if notifier is not None else None
        self.clock = clock
        self.started_at = clock()
        self.history = History(config.tiers, config.history, self.started_at, state_dir=config.state_dir,
                               from_prometheus=reader is not None)
        self.cold_starts = ColdStarts(config.tiers, self.started_at)
        self.source: FleetSource
        if reader is not None:
            self.source = PrometheusFleet(reader, self.history, clock)
        else:
            assert scraper is not None
            self.source = ScrapedFleet(config, scraper, self.cold_starts)
        self.snapshot = Snapshot()
        self.cycles = 0
        self.overruns = 0
        self.failures = 0  # cycles that raised (the previous snapshot stays published)
        self.evaluation_errors: dict[str, int] = {}
        self.http_rejected: Callable[[], int] = lambda: 0  # serve() points it at its HTTP server
        self.on_report: list[Callable[[Report], None]] = []  # serve --watch: the live view
        self.history.load(self.started_at)

    @property
    def state_errors(self) -> dict[str, int]:
        return self.history.errors

    def save_state(self, force: bool = False) -> None:
        self.history.save(self.clock(), force)

    @property
    def stats(self) -> ScrapeStats:
        return self.source.stats

    def history_note(self) -> HistoryNote:
        return self.history.note()

    def cold_start_p90(self) -> dict[str, float | None]:
        return self.cold_starts.p90()

    # ------------------------------------------------------------------ one-shot use (check, tests)
    def _scraped(self) -> ScrapedFleet:
        assert isinstance(self.source, ScrapedFleet), "the fleet is scraped"
        return self.source

    def ingest(self, samples: list[InstanceSample]) -> None:
        self._scraped().ingest(samples)

    def evaluate(self, now: float) -> Report:
        return self._report(self._scraped().view(now))

    def evaluate_span(self, now: float, seconds: float, scrapes: int) -> Report:
        """The report over a window of exactly ``seconds`` and ``scrapes`` (a one-shot check's two)."""
        self._scraped().span(seconds, scrapes)
        return self.evaluate(now)

    def evaluate_prometheus(self, now: float, window: float | None = None) -> Report:
        assert isinstance(self.source, PrometheusFleet), "the fleet is read from Prometheus"
        return self._report(self.source.observe(now, window))

    def _report(self, seen: Observation) -> Report:
        return self._evaluate(seen.now, seen.views, seen.rows, seen.window)

    def _evaluate(self, now: float, windows: Mapping[str, TierView],
                  rows: Mapping[str, Mapping[str, Quantity]], window: float | None = None) -> Report:
        history = self.history.snapshot()
        report = evaluate(self.config, windows, history, now, window or self.config.window,
                          history_note=self.history_note(), rows=rows)
        report = annotate(report, self.config, history, now, self.cold_start_p90())
        for name, t in report.tiers.items():
            if t.error is not None:
                self.evaluation_errors[name] = self.evaluation_errors.get(name, 0) + 1
                log.error("evaluating tier %s failed, its rows are unknown this cycle: %s", name, t.error)
                continue
            rps = peak_sample(windows[name], t.metrics["requests_per_second"].value, self.config.window)
            self.history.append(name, HistoryPoint(now, rps, t.resize.recommended_instances))
        return report

    def cycle(self) -> Report:
        t0 = time.monotonic()
        report = self._report(self.source.observe(self.clock()))
        self.cycles += 1
        if self.notifier is not None and self.identities is not None:
            try:  # queued only: serve's sender threads post, off the cycle (a one-shot caller flushes)
                self.notifier.update(alerts_from_report(report, self.identities))
                if not self.notifier.started:
                    self.notifier.flush()
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
            kept = "serving the previous snapshot" if self.snapshot.get().report is not None else "nothing to serve yet"
            log.error("cycle failed, %s: %s: %s", kept, type(e).__name__, str(e)[:200])
            log.debug("cycle failure", exc_info=True)
            self.publish(None, None)

    def health(self) -> tuple[bool, str]:
        """/healthz: (ok, what to say). Starting is healthy for a grace as long as a report may go stale; a
        daemon that has never finished a cycle after it is not, nor one whose last report is older."""
        pub = self.snapshot.get()
        now, bound = self.clock(), self.config.stale_after
        if pub.report is None:
            if now - self.started_at < bound:
                failed = f"; {plural(self.failures, 'cycle')} failed, see the log" if self.failures else ""
                return True, f"starting: no cycle has succeeded yet ({num(now - self.started_at)}s since start{failed})"
            return False, (f"no cycle has succeeded since the start {num(now - self.started_at)}s ago "
                           f"({plural(self.failures, 'failed cycle')}; see the log)")
        age = now - pub.report.generated_at
        if age < bound:
            return True, "ok"
        return False, f"stale: the last successful cycle is {num(age)}s old ({plural(self.failures, 'failed cycle')} since)"

    def healthy(self) -> bool:
        return self.health()[0]


HTTP_IDLE_TIMEOUT = 10.0  # seconds a socket read or write may block (a client that stops reading the answer)
HTTP_REQUEST_DEADLINE = 3.0  # seconds from waiting for a request to having all its headers, in total
HTTP_MAX_CONNECTIONS = 64  # handler threads at most; more connections are closed at once
HTTP_MAX_PER_CLIENT = 32  # of them from one address: one misbehaving client cannot take every slot


def make_handler(registry: CollectorRegistry, health: Callable[[], tuple[bool, str]]
                 ) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fleetwatch"
        timeout = HTTP_IDLE_TIMEOUT  # socket timeout: an idle or slow client is dropped, its thread ends

        def handle_one_request(self) -> None:
            # a total deadline on the request line and headers: a client that sends a byte a second (a
            # slowloris) loses its connection after HTTP_REQUEST_DEADLINE, not after one idle timeout per byte
            self._cut = cut_at(self.connection, HTTP_REQUEST_DEADLINE)
            try:
                super().handle_one_request()
            finally:
                self._cut.finish()

        def parse_request(self) -> bool:
            ok = super().parse_request()
            self._cut.finish()  # the headers are in: the answer is written under the idle timeout alone
            return ok

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            encoding = ""
            if path == "/metrics":
                # content negotiation (OpenMetrics or text) and gzip, as prometheus_client serves it
                encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
                # this page is unauthenticated: through the redactor, as every other output
                body, code = redact(encoder(registry).decode("utf-8")).encode("utf-8"), 200
                if "gzip" in self.headers.get("Accept-Encoding", ""):
                    body, encoding = gzip.compress(body, compresslevel=1), "gzip"
            elif path == "/healthz":
                ok, said = health()
                body, ctype, code = f"{said}\n".encode("utf-8"), "text/plain", 200 if ok else 503
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

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], limit: int,
                 per_client: int | None = None) -> None:
        self._slots = threading.BoundedSemaphore(limit)
        self._per_client = per_client or max(1, limit // 2)
        self._clients: dict[str, int] = {}
        self._clients_lock = threading.Lock()
        self.rejected = 0
        super().__init__(address, handler)

    def _take(self, client: str) -> bool:
        with self._clients_lock:
            if self._clients.get(client, 0) >= self._per_client:
                return False
            if not self._slots.acquire(blocking=False):
                return False
            self._clients[client] = self._clients.get(client, 0) + 1
            return True

    def _give(self, client: str) -> None:
        with self._clients_lock:
            n = self._clients.get(client, 1) - 1
            if n:
                self._clients[client] = n
            else:
                self._clients.pop(client, None)
            self._slots.release()

    def process_request(self, request: Any, client_address: Any) -> None:
        client = str(client_address[0]) if isinstance(client_address, tuple) else str(client_address)
        if not self._take(client):
            self.rejected += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._give(client)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._give(str(client_address[0]) if isinstance(client_address, tuple) else str(client_address))


class Server:
    """HTTP server for /metrics and /healthz on a daemon thread."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Callable[[], tuple[bool, str]],
                 max_connections: int = HTTP_MAX_CONNECTIONS, per_client: int | None = None) -> None:
        self.httpd = _BoundedHTTPServer((host, port), make_handler(registry, health), max_connections,
                                        per_client or min(HTTP_MAX_PER_CLIENT, max_connections))
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


# Young-generation collections every this many new container objects, rather than Python's 700. A cycle
# allocates a few hundred tracked objects (samples, their label dicts) per target and frees nearly all of them
# by reference counting; at 700 a 1,000-target cycle ran about 470 young and 3 full collections, each full one
# walking every window held, so the collector's share grew with the fleet (7% of a cycle at 100 targets, 15%
# at 1,000; bench/bench_scale.py). The startup's objects are frozen out of every collection.
GC_YOUNG_THRESHOLD = 50_000


def collect_garbage_rarely() -> None:
    """Fewer garbage collections for a process that runs cycles: see GC_YOUNG_THRESHOLD. Process-wide, so only
    the command line calls it, as the process's owner, never the library's serve()."""
    import gc

    gc.collect()
    gc.freeze()  # modules, the config and the plan: alive for the process's life, never worth a scan
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def return_freed_memory() -> None:
    """Make glibc give freed bodies back to the kernel. By default it keeps large freed blocks in its heaps,
    one heap per thread: bodies of many MB, freed after a cycle, would stay in the RSS for good. A fixed
    mmap threshold serves each body from its own mapping, unmapped on free; few arenas bound the rest."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 4)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc (musl, macOS): their allocators return large blocks as it is

