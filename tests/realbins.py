"""Start real Prometheus binaries on loopback for integration tests."""
from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from fakes import free_port


def wait_ready(proc: "subprocess.Popen[bytes]", url: str, log: Path, name: str, path: str = "/-/ready") -> None:
    """Poll ``url``/-/ready (or ``path``) until the binary answers; fail with its log if it exits."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {log.read_text()[-2000:]}")
        try:
            if requests.get(url + path, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)  # waiting for an external process to come up, not simulating time
    raise RuntimeError(f"{name} did not become ready")


def terminate(proc: "subprocess.Popen[bytes]") -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


class Prometheus:
    def __init__(self, binary: str, config_text: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="fw-prom-")
        cfg = Path(self.dir) / "prometheus.yml"
        cfg.write_text(config_text)
        self.port = free_port()
        self.log = open(Path(self.dir) / "log.txt", "w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.dir}/data",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_ready(self.proc, self.url, Path(self.dir) / "log.txt", "prometheus")

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        r = requests.get(self.url + "/api/v1/query", params=params, timeout=10)
        body = r.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def stop(self) -> None:
        terminate(self.proc)
        self.log.close()


ALERTMANAGER_CONFIG = """\
route:
  receiver: "null"
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: "null"
"""


class Webhook:
    """A webhook receiver on loopback that keeps every notification Alertmanager sends it."""

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.notifications: list[dict[str, Any]] = []
        got = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                got.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alertmanager_config(self) -> str:
        """Every alert its own group (group_by: ['...']): two posts of one problem under two label sets
        would be two notifications; one label set is one."""
        return (f"route:\n  receiver: hook\n  group_by: ['...']\n  group_wait: 1s\n  group_interval: 10m\n"
                f"  repeat_interval: 10h\nreceivers:\n  - name: hook\n    webhook_configs:\n"
                f"      - url: {self.url}\n        send_resolved: false\n")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Alertmanager:
    """A real prometheus-alertmanager on a loopback port, clustering off. ``restart`` keeps the port."""

    def __init__(self, binary: str, config_text: str = ALERTMANAGER_CONFIG, port: int | None = None) -> None:
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="fw-am-")
        self.cfg = Path(self.dir) / "alertmanager.yml"
        self.cfg.write_text(config_text)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start()

    def start(self) -> None:
        self.log = open(Path(self.dir) / "log.txt", "a")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.cfg}", f"--storage.path={self.dir}/data",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_ready(self.proc, self.url, Path(self.dir) / "log.txt", "alertmanager")

    def alerts(self, **labels: str) -> list[dict[str, Any]]:
        r = requests.get(self.url + "/api/v2/alerts", timeout=5)
        r.raise_for_status()
        return [a for a in r.json() if all(a["labels"].get(k) == v for k, v in labels.items())]

    def stop(self) -> None:
        terminate(self.proc)
        self.log.close()

    def wipe(self) -> None:
        """Forget every alert (a fresh data directory), as a replaced Alertmanager pod would."""
        import shutil

        shutil.rmtree(Path(self.dir) / "data", ignore_errors=True)


class _Process:
    """A binary on a loopback port with its own directory and log, ready once ``path`` answers 200."""

    def __init__(self, name: str, args: list[str], path: str = "/health") -> None:
        self.dir = tempfile.mkdtemp(prefix=f"fw-{name}-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(self.dir) / "log.txt", "w")
        self.proc = subprocess.Popen([a.replace("{dir}", self.dir).replace("{port}", str(self.port)) for a in args],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_ready(self.proc, self.url, Path(self.dir) / "log.txt", name, path)

    def stop(self) -> None:
        terminate(self.proc)
        self.log.close()


class VictoriaMetrics(_Process):
    """Single-node VictoriaMetrics: remote-write target and Prometheus-compatible query API. Points become visible
    after -search.latencyOffset (30 s by default, 1 s here: the simulated fleet is fast)."""

    def __init__(self, binary: str, *flags: str) -> None:
        super().__init__("victoria-metrics", [binary, "-httpListenAddr=127.0.0.1:{port}", "-storageDataPath={dir}/data",
                                              "-retentionPeriod=100y", "-search.latencyOffset=1s",
                                              "-search.disableCache", "-loggerLevel=WARN", *flags])

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = requests.get(self.url + "/api/v1/query", params=params, timeout=10).json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])


class VMAgent(_Process):
    """One vmagent shard of ``members``: scrapes its share of the targets in ``config_text``, writes to ``write_url``."""

    def __init__(self, binary: str, config_text: str, write_url: str, member: int = 0, members: int = 1) -> None:
        cfg = Path(tempfile.mkdtemp(prefix="fw-vmagent-cfg-")) / "scrape.yml"
        cfg.write_text(config_text)
        super().__init__(f"vmagent-{member}", [
            binary, "-httpListenAddr=127.0.0.1:{port}", f"-promscrape.config={cfg}",
            f"-remoteWrite.url={write_url}/api/v1/write", "-remoteWrite.tmpDataPath={dir}/rw",
            "-remoteWrite.flushInterval=500ms", f"-promscrape.cluster.membersCount={members}",
            f"-promscrape.cluster.memberNum={member}", "-loggerLevel=WARN"])


class VMAlert(_Process):
    """vmalert running ``rules`` against ``datasource``: recorded series written back there, alerts to ``notifier``."""

    def __init__(self, binary: str, rules: Path, datasource: str, notifier: str, interval: str = "1s") -> None:
        super().__init__("vmalert", [
            binary, "-httpListenAddr=127.0.0.1:{port}", f"-rule={rules}", f"-datasource.url={datasource}",
            f"-remoteWrite.url={datasource}", f"-remoteRead.url={datasource}", f"-notifier.url={notifier}",
            f"-evaluationInterval={interval}", "-remoteWrite.flushInterval=500ms", "-disableAlertgroupLabel",
            "-loggerLevel=WARN"])
