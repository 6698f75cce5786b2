"""Fake engines on loopback: real HTTP servers that replay exposition text or misbehave."""
from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Sequence


class FakeTarget:
    """Serves ``bodies`` in order, one per request, then repeats the last.

    ``mode`` makes it misbehave: "hang" never answers, "garbage" returns non-exposition text,
    "huge" streams ``huge_bytes`` of valid-looking lines.
    """

    def __init__(self, bodies: Sequence[str] = (), mode: str = "replay", huge_bytes: int = 50 * 1024 * 1024,
                 body_fn: Callable[[int], str] | None = None) -> None:
        self.bodies = list(bodies)
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
