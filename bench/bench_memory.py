"""Memory at 1,000 targets: peak RSS of `fleetwatch serve` under hostile mixes of bodies, against the
bound the README documents, and whether the healthy tier stays up.

Each scenario is a fresh `serve` over 1,000 targets served by another process (its CPU and memory are
not counted): 100 healthy engines in a tier of their own, listed last, beside 900 that send
- "healthy": the same small vLLM page (the baseline, measured in this run);
- "chunked": an endless chunked body (each fetch reads to the 16 MiB cap and fails);
- "big": a valid 15 MB body of wanted vLLM series, under the cap (each one costs a real parse);
- "mixed": half of each.
Per scenario: peak RSS (VmHWM) and RSS at the end, cycles, overruns, the fewest healthy instances up in
any cycle after the first, and the documented bound (exporter.scrape.memory_bound_mib: 512 MiB at 1,000
targets and 16 MiB bodies; the chart's limit is a quarter above it). Exits 1 when a peak passes its bound or the healthy
tier lost an instance.
Run: python bench/bench_memory.py [--cycles 4] [--scenario big]
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "vllm" / "generated" / "vllm-0.33.0"
BIG_BYTES = 15 * 1000 * 1000
INTERVAL, TIMEOUT = 10.0, 8.0
SCENARIOS = {"healthy": ("healthy", "healthy"), "chunked": ("chunked", "chunked"), "big": ("big", "big"),
             "mixed": ("chunked", "big")}


# ---------------------------------------------------------------- the fleet, in its own process

def _big_body() -> bytes:
    line = 'vllm:num_requests_running{engine="0",model_name="m-%07d"} 1.0\n'
    lines, size, i = [], 0, 0
    while size < BIG_BYTES:
        s = line % i
        lines.append(s)
        size += len(s)
        i += 1
    return "".join(lines).encode()


def serve_fleet(port: int) -> None:
    pages = [(FIXTURES / f"snapshot-{i:02d}.prom").read_bytes() for i in range(21)]
    big = _big_body()
    seen: dict[str, int] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            kind = self.path.split("/")[1]
            try:
                if kind == "chunked":
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    chunk = b"vllm:num_requests_running 1\n" * 2000
                    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
                    while True:
                        self.wfile.write(frame)
                body = big if kind == "big" else pages[0]
                if kind == "healthy":
                    with lock:
                        n = seen.get(self.path, 0)
                        seen[self.path] = n + 1
                    body = pages[min(n, 20)]
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    httpd.daemon_threads = True
    httpd.request_queue_size = 2048
    httpd.serve_forever()


# ---------------------------------------------------------------- one scenario

def _port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def _metrics(url: str) -> dict[str, float]:
    import requests

    out = {}
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        m = re.match(r"^(\S+) (\S+)$", line)
        if m and not line.startswith("#"):
            out[m.group(1)] = float(m.group(2))
    return out


def _status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(ln.split()[1] for ln in fh if ln.startswith(key + ":")))


def run(scenario: str, fleet_port: int, cycles: int) -> dict[str, float]:
    first, second = SCENARIOS[scenario]
    base = f"http://127.0.0.1:{fleet_port}"
    tiers = {f"zone-{z}": [f"{base}/{first if z < 2 or first == second else second}/{z}-{i}" for i in range(300)]
             for z in range(3)}
    if scenario == "mixed":  # 450 and 450
        tiers = {"zone-0": [f"{base}/chunked/0-{i}" for i in range(450)],
                 "zone-1": [f"{base}/big/1-{i}" for i in range(450)]}
    tiers["good"] = [f"{base}/healthy/{i}" for i in range(100)]
    port = _port()
    plan = ("{gpus_per_instance: 2, instances: %d, gpu_hour_cost_usd: 4.1, peak_rps: 2, safety_factor: 0.2, "
            "slo: {ttft_p99: 2s, itl_p99: 50ms}, benchmark: {usable_rps_per_instance: 3, ttft_p99: 1.2s, "
            "itl_p99: 35ms, gpu_utilization: 0.78}}")
    lines = [f"interval: {INTERVAL:g}s", f"scrape_timeout: {TIMEOUT:g}s", "window: 60s", f"listen: 127.0.0.1:{port}",
             "tiers:"]
    for name, urls in tiers.items():
        lines.append(f"  {name}:\n    plan: {plan % len(urls)}\n    targets:")
        lines += [f"      - {{vllm: '{u}', name: '{name}-{i}'}}" for i, u in enumerate(urls)]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        fh.write("\n".join(lines) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "--log-level", "error", "serve", "--config", fh.name],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    up: list[float] = []
    worst_cycle = 0.0
    try:
        seen = 0
        deadline = time.monotonic() + cycles * INTERVAL + 120
        while seen < cycles and time.monotonic() < deadline:
            time.sleep(0.5)  # polling another process between its cycles
            try:
                m = _metrics(url)
            except Exception:  # noqa: BLE001 - not listening yet, or busy
                continue
            if m.get("fleetwatch_cycles_total", 0) > seen:
                seen = int(m["fleetwatch_cycles_total"])
                up.append(m.get('fleetwatch_instances_up{tier="good"}', 0))
                worst_cycle = max(worst_cycle, m.get("fleetwatch_cycle_duration_seconds", 0))
        m = _metrics(url)
        peak, now = _status(proc.pid, "VmHWM"), _status(proc.pid, "VmRSS")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
        os.unlink(fh.name)
    return {"peak_mb": peak / 1024, "rss_mb": now / 1024, "cycles": m.get("fleetwatch_cycles_total", 0),
            "overruns": m.get("fleetwatch_cycle_overruns_total", 0), "healthy_up_min": min(up[1:] or up or [0]),
            "worst_cycle_s": worst_cycle}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=4)
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve_fleet(args.serve)
        return 0
    sys.path.insert(0, str(ROOT))
    fleet_port = _port()
    fleet = subprocess.Popen([sys.executable, __file__, "--serve", str(fleet_port)])
    time.sleep(2)  # the fleet process builds its 15 MB body and listens
    rows = {}
    try:
        for name in ["healthy", *[s for s in (args.scenario or ["chunked", "big", "mixed"]) if s != "healthy"]]:
            rows[name] = run(name, fleet_port, args.cycles)
    finally:
        fleet.kill()
    from exporter.scrape import memory_bound_mib

    bound = memory_bound_mib(1000, 16 << 20)  # the documented figure, with its own baseline
    print(f"{'900 targets send':<12} {'peak RSS MB':>11} {'RSS end MB':>10} {'bound MB':>9} {'cycles':>6} "
          f"{'overruns':>8} {'healthy up':>10} {'worst cycle s':>13}")
    failed = False
    for name, r in rows.items():
        over = r["peak_mb"] > bound
        lost = r["healthy_up_min"] < 100
        failed |= over or lost
        print(f"{name:<12} {r['peak_mb']:>11.0f} {r['rss_mb']:>10.0f} {bound:>9.0f} {r['cycles']:>6.0f} "
              f"{r['overruns']:>8.0f} {r['healthy_up_min']:>10.0f} {r['worst_cycle_s']:>13.1f}"
              + ("  OVER THE BOUND" if over else "") + ("  HEALTHY TIER LOST AN INSTANCE" if lost else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
