"""Fake engines on loopback: real HTTP servers that replay exposition text or misbehave."""
from __future__ import annotations

import functools
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Mapping, Sequence


def _start(handler: type[BaseHTTPRequestHandler], queue: int = 5) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """A threaded loopback server for ``handler``, serving on a daemon thread."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.request_queue_size = queue
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    return httpd, thread


def _stop(httpd: ThreadingHTTPServer, release: threading.Event | None = None) -> None:
    if release is not None:
        release.set()
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _Served:
    """A fake server on loopback whose hanging handlers ``close`` releases."""

    httpd: ThreadingHTTPServer
    release: threading.Event

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        _stop(self.httpd, self.release)


class FakeTarget(_Served):
    """Serves ``bodies`` in order, one per request, then repeats the last.

    ``mode`` makes it misbehave: "hang" never answers, "garbage" returns non-exposition text,
    "huge" streams ``huge_bytes`` of valid-looking lines, "drip" sends a valid body one byte every
    ``drip_seconds``, "header-drip" does the same with its headers, "chunked" never ends its chunked body,
    "gzip-bomb" sends a small gzip body that inflates past any cap, "redirect" answers 302,
    "http-500" answers 500, "http-404" answers 404, "bad-utf8" sends bytes that are not UTF-8.
    """

    def __init__(self, bodies: Sequence[str] = (), mode: str = "replay", huge_bytes: int = 50 * 1024 * 1024,
                 body_fn: Callable[[int], str] | None = None, drip_seconds: float = 1.0) -> None:
        self.bodies = list(bodies)
        self.drip_seconds = drip_seconds  # between two bytes of a drip
        self.dripped = 0  # bytes a drip has sent, over all its requests
        self.mode = mode
        self.huge_bytes = huge_bytes
        self.body_fn = body_fn
        self.requests = 0
        self.release = threading.Event()
        outer = self

        class Handler(_QuietHandler):
            def do_GET(self) -> None:  # noqa: N802
                n = outer.requests
                outer.requests += 1
                if outer.mode == "hang":
                    outer.release.wait(30)
                    return
                if outer.mode == "huge":
                    line = b"vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 1.0\n"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    sent = 0
                    try:
                        while sent < outer.huge_bytes:
                            self.wfile.write(line * 1000)
                            sent += len(line) * 1000
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                if outer.mode in _HOSTILE:
                    try:
                        _HOSTILE[outer.mode](self, outer)
                    except (BrokenPipeError, ConnectionResetError, OSError):
                        pass
                    return
                if outer.mode == "garbage":
                    body = "<html><body>502 Bad Gateway</body></html>\n{{{ not metrics"
                elif outer.body_fn is not None:
                    body = outer.body_fn(n)
                else:
                    body = outer.bodies[min(n, len(outer.bodies) - 1)]
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET  # noqa: N815 - a hostile Alertmanager misbehaves the same way

        self.httpd, self.thread = _start(Handler)

    @property
    def url(self) -> str:
        return self.base + "/metrics"


class ReplayFleet:
    """Many healthy engines on one port: ``/t/<i>/metrics`` serves ``bodies`` in order, one per
    request to that path, then repeats the last. HTTP/1.1 keep-alive, as vLLM's server."""

    def __init__(self, bodies: Sequence[str]) -> None:
        self.bodies = [b.encode() for b in bodies]
        self.requests: dict[str, int] = {}
        lock = threading.Lock()
        outer = self

        class Handler(_QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                with lock:
                    n = outer.requests.get(self.path, 0)
                    outer.requests[self.path] = n + 1
                data = outer.bodies[min(n, len(outer.bodies) - 1)]
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd, self.thread = _start(Handler, queue=1024)

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/t/{i}/metrics"

    def close(self) -> None:
        _stop(self.httpd)


class HangingFleet(_Served):
    """Many engines that never answer, on one port: ``/t/<i>/metrics`` reads the request and then holds the
    connection, unanswered, until ``hold`` seconds pass or the client goes away. Counts requests per path."""

    def __init__(self, hold: float = 10.0) -> None:
        self.requests: dict[str, int] = {}
        self.release = threading.Event()
        lock = threading.Lock()
        outer = self

        class Handler(_QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                with lock:
                    outer.requests[self.path] = outer.requests.get(self.path, 0) + 1
                self.connection.settimeout(hold)
                try:  # returns when the client shuts its side (the scrape deadline) or after ``hold``
                    while not outer.release.is_set() and self.connection.recv(1):
                        pass
                except OSError:
                    pass
                self.close_connection = True

        self.httpd, self.thread = _start(Handler, queue=1024)

    def url(self, i: int) -> str:
        return f"{self.base}/t/{i}/metrics"


class FakePrometheus(_Served):
    """The Prometheus HTTP API's two query endpoints, each answering as ``modes[endpoint]`` says:
    "ok" (an empty result of the right type), "hang" (never answers), "drip" (a valid answer, one byte
    every 0.2 s), "overflow" (a 400-digit sample time), "nested" (200,000 brackets), "types" (a label value
    and a sample of the wrong JSON types). Endpoints: "query", "query_range". Counts requests per endpoint."""

    def __init__(self, modes: dict[str, str]) -> None:
        self.modes = modes
        self.requests: dict[str, int] = {"query": 0, "query_range": 0}
        self.release = threading.Event()
        outer = self

        class Handler(_QuietHandler):
            def do_POST(self) -> None:  # noqa: N802
                endpoint = self.path.rsplit("/", 1)[-1]
                outer.requests[endpoint] = outer.requests.get(endpoint, 0) + 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                kind = "vector" if endpoint == "query" else "matrix"
                mode = outer.modes.get(endpoint, "ok")
                if mode == "hang":
                    outer.release.wait(60)
                    return
                body = _prometheus_answer(kind, mode)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if mode == "drip":
                        for i in range(len(body)):
                            if outer.release.wait(0.2):
                                return
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                    else:
                        self.wfile.write(body)
                except OSError:
                    pass

        self.httpd, self.thread = _start(Handler)

    @property
    def url(self) -> str:
        return self.base


def _prometheus_answer(kind: str, mode: str) -> bytes:
    if mode == "nested":
        return b"[" * 200_000 + b"]" * 200_000
    if mode == "overflow":
        t = "1" + "0" * 400
        sample = f'"value": [{t}, "1"]' if kind == "vector" else f'"values": [[{t}, "1"]]'
        return ('{"status": "success", "data": {"resultType": "%s", "result": [{"metric": {"tier": "h100"}, %s}]}}'
                % (kind, sample)).encode()
    if mode == "types":
        sample = '"value": {"t": 1}' if kind == "vector" else '"values": [["1700000000", 1]]'
        return ('{"status": "success", "data": {"resultType": "%s", "result": [{"metric": {"tier": 5}, %s}]}}'
                % (kind, sample)).encode()
    return ('{"status": "success", "data": {"resultType": "%s", "result": []}}' % kind).encode()


_DRIP_BODY = b'vllm:num_requests_running{engine="0",model_name="m"} 1.0\n' * 4


def _drip(h: BaseHTTPRequestHandler, t: "FakeTarget") -> None:
    h.send_response(200)
    h.send_header("Content-Type", "text/plain")
    h.send_header("Content-Length", str(len(_DRIP_BODY)))
    h.end_headers()
    h.wfile.flush()
    _one_byte_a_second(h, t, _DRIP_BODY)


def _one_byte_a_second(h: BaseHTTPRequestHandler, t: "FakeTarget", data: bytes) -> None:
    """One byte every ``drip_seconds`` until the test releases the target or the client hangs up."""
    for i in range(len(data)):
        if t.release.wait(t.drip_seconds):
            return
        h.wfile.write(data[i:i + 1])
        h.wfile.flush()
        t.dripped += 1


def _header_drip(h: BaseHTTPRequestHandler, t: "FakeTarget") -> None:
    _one_byte_a_second(h, t, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n")


def _chunked(h: BaseHTTPRequestHandler, t: "FakeTarget") -> None:
    h.protocol_version = "HTTP/1.1"
    h.send_response(200)
    h.send_header("Content-Type", "text/plain")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    line = b'vllm:num_requests_running{engine="0",model_name="m"} 1.0\n'
    while not t.release.wait(0.01):  # valid chunks, forever, slowly enough to stay small
        h.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        h.wfile.flush()


@functools.lru_cache(maxsize=1)
def _bomb() -> bytes:
    import gzip

    return gzip.compress(b"# " + b" " * (64 * 1024 * 1024) + b"\n", compresslevel=9)  # 64 MiB from ~64 kB


def _gzip_bomb(h: BaseHTTPRequestHandler, t: "FakeTarget") -> None:
    data = _bomb()
    h.send_response(200)
    h.send_header("Content-Type", "text/plain")
    h.send_header("Content-Encoding", "gzip")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def _redirect(h: BaseHTTPRequestHandler, t: "FakeTarget") -> None:
    h.send_response(302)
    h.send_header("Location", "http://127.0.0.1:1/metrics")
    h.send_header("Content-Length", "0")
    h.end_headers()


def _answer(status: int, body: bytes) -> Callable[[BaseHTTPRequestHandler, "FakeTarget"], None]:
    def answer(h: BaseHTTPRequestHandler, t: "FakeTarget") -> None:
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    return answer


_http_500 = _answer(500, b"internal error\n")
_http_404 = _answer(404, b"Not Found\n")
_http_404_page = _answer(404, b'<!DOCTYPE HTML>\n<html lang="en"><head><title>Error response</title></head>\n'
                              b'<body><h1>Error response</h1><p>Error code: 404</p></body></html>\n')


def _bad_utf8(h: BaseHTTPRequestHandler, t: "FakeTarget") -> None:
    body = b'vllm:num_requests_running{engine="0",model_name="\xff\xfe"} 1.0\n'
    h.send_response(200)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def _reflect(status: int, kind: str) -> Callable[[BaseHTTPRequestHandler, "FakeTarget"], None]:
    """An answer that echoes the request's credentials back, as some proxies' error pages do."""
    def answer(h: BaseHTTPRequestHandler, t: "FakeTarget") -> None:
        if h.command == "POST":
            h.rfile.read(int(h.headers.get("Content-Length") or 0))
        said = f"{h.command} {h.path} Authorization: {h.headers.get('Authorization')}"
        body = (json.dumps({"status": "error", "errorType": "bad_data", "error": said}) if kind == "json" else
                f"<html><head><title>{said}</title></head><body>{said}</body></html>").encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json" if kind == "json" else "text/html")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    return answer


_HOSTILE: dict[str, Callable[[BaseHTTPRequestHandler, "FakeTarget"], None]] = {
    "reflect-500": _reflect(500, "html"), "reflect-json-400": _reflect(400, "json"), "reflect-200": _reflect(200, "html"),
    "drip": _drip, "header-drip": _header_drip, "chunked": _chunked, "gzip-bomb": _gzip_bomb,
    "redirect": _redirect, "http-500": _http_500, "http-404": _http_404, "http-404-page": _http_404_page, "bad-utf8": _bad_utf8,
}


def refused_url() -> str:
    """A loopback URL where nothing listens."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/metrics"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def posts_at_once() -> str:
    """A config's ``alerting:`` block with every for: 0s: fleetwatch posts a verdict on its first cycle
    (tests of the posting path itself; a real config waits each alert's for:)."""
    from exporter.model import ALERT_FOR

    families = ", ".join(f"{family}: {{{', '.join(f'{sev}: 0s' for sev in by)}}}" for family, by in ALERT_FOR.items())
    return f"alerting: {{for: {{{families}}}}}\n"


def write_config(path: str, tiers: Mapping[str, Sequence[Mapping[str, object]]], *, extra: str = "",
                 plans: dict[str, str] | None = None) -> str:
    """Write a fleet config whose tiers use a default plan (or ``plans[tier]`` YAML)."""
    import json

    default_plan = """
      gpus_per_instance: 2
      instances: {n}
      gpu_hour_cost_usd: 4.10
      peak_rps: 2
      safety_factor: 0.2
      slo: {{ttft_p99: 2s, itl_p99: 50ms}}
      benchmark: {{usable_rps_per_instance: 3, ttft_p99: 1.2s, itl_p99: 35ms, gpu_utilization: 0.78}}"""
    lines = [extra, "tiers:"]
    for tier, targets in tiers.items():
        plan = (plans or {}).get(tier) or default_plan.format(n=len(targets))
        lines.append(f"  {tier}:\n    plan:{plan}\n    targets:")
        for t in targets:
            lines.append(f"      - {json.dumps(t)}")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path
