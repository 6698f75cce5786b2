"""Fake engines on loopback: real HTTP servers that replay exposition text or misbehave."""
from __future__ import annotations

import functools
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Sequence


class FakeTarget:
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

        class Handler(BaseHTTPRequestHandler):
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

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/metrics"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class ReplayFleet:
    """Many healthy engines on one port: ``/t/<i>/metrics`` serves ``bodies`` in order, one per
    request to that path, then repeats the last. HTTP/1.1 keep-alive, as vLLM's server."""

    def __init__(self, bodies: Sequence[str]) -> None:
        self.bodies = [b.encode() for b in bodies]
        self.requests: dict[str, int] = {}
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
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

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 1024
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/t/{i}/metrics"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


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


_HOSTILE: dict[str, Callable[[BaseHTTPRequestHandler, "FakeTarget"], None]] = {
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


def write_config(path: str, tiers: dict[str, list[dict[str, object]]], *, extra: str = "",
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
