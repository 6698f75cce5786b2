"""Secrets, everywhere: planted passwords and tokens never reach an output.

Every leak once found is planted at once: passwords in target, dcgm-exporter, Alertmanager and
Prometheus URLs, a bearer token, answers that echo the request's Authorization header back (an HTTP
500 page, a Prometheus API error, a 200 page that is not metrics), a password with an unencoded
``@``, a URL with a bad port, and a sidecar engine URL with a password. Then every channel is swept:
the logs (at debug), /metrics, the JSON report, the table, the live view, validate-config, and what
each Alertmanager received.
"""
from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from exporter.secrets import Redactor, redact_url

from fakes import FakeTarget, free_port, posts_at_once, refused_url
from test_faults import _at_cycle, snapshots

ROOT = Path(__file__).resolve().parents[1]
PLANS = ROOT / "examples" / "plans"
SECRETS = {"target": "tgt-Pa55w0rd!", "dcgm": "dcgm-Pa55w0rd", "am": "am-Pa55w0rd", "prom": "prom-Pa55w0rd",
           "token": "tok3n-S3cret-9f2c", "sidecar": "side-Pa55w0rd"}


def _forms(user: str, password: str) -> list[str]:
    """Every way a password can leave: as written, percent-encoded, and in a basic-auth header."""
    pair = f"{user}:{password}"
    return [password, quote(password, safe=""), base64.b64encode(pair.encode()).decode()]


FORBIDDEN = [f for key, p in SECRETS.items() for f in (_forms(key, p) if key != "token" else [p])]


def _leaks(channel: str, text: str) -> list[str]:
    return [f"{channel}: {f!r}" for f in FORBIDDEN if f in text]


def _cred(user: str, url: str) -> str:
    """``url`` with ``user:<its secret>@``, the password percent-encoded as a URL requires."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{quote(SECRETS[user], safe='')}@{rest}"


def _serve(args: list[str], env: dict[str, str] | None = None) -> "subprocess.Popen[str]":
    import os

    return subprocess.Popen([sys.executable, "-m", "exporter", "--log-level", "debug", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})


def _stop(proc: "subprocess.Popen[str]") -> str:
    import signal

    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)  # a guard against a hang, not a measurement
    return out + err


def test_the_redactor_masks_what_it_learned_and_every_urls_userinfo() -> None:
    r = Redactor()
    r.learn_url("http://alice:s%40cret-one@h:1/metrics")
    r.learn("tok-123456")
    text = ("GET http://alice:s%40cret-one@h:1/metrics failed; Authorization: Basic "
            + base64.b64encode(b"alice:s@cret-one").decode() + " Bearer tok-123456; said s@cret-one; "
            "other https://bob:x@y@z:2/ too")
    out = r(text)
    assert "cret-one" not in out and "tok-123456" not in out and "YWxpY2U6c0BjcmV0LW9uZQ" not in out
    assert "bob" not in out and "x@y@" not in out and "https://z:2/" in out  # through the authority's last @
    assert r("nothing secret here") == "nothing secret here"
    assert redact_url("http://u:p@@h:1/x") == "http://h:1/x"


@pytest.mark.integration
def test_no_planted_secret_reaches_any_channel(tmp_path: Path) -> None:
    texts = snapshots()
    reflect_500 = FakeTarget(mode="reflect-500")
    reflect_json = FakeTarget(mode="reflect-json-400")
    reflect_200 = FakeTarget(mode="reflect-200")
    healthy = FakeTarget(body_fn=lambda n: texts[min(n, 20)])
    dcgm = FakeTarget(mode="reflect-500")
    am_bad = FakeTarget(mode="reflect-500")
    received: list[bytes] = []
    am_good = FakeTarget(body_fn=lambda n: "")

    def record(handler: Any) -> None:
        received.append(handler.rfile.read(int(handler.headers["Content-Length"])))
        handler.send_response(200)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    am_good.httpd.RequestHandlerClass.do_POST = record  # type: ignore[attr-defined]
    token = tmp_path / "token"
    token.write_text(SECRETS["token"] + "\n")
    fleet = tmp_path / "fleet.yaml"
    targets = [
        {"vllm": _cred("target", reflect_500.url), "name": "reflect-500"},
        {"vllm": reflect_json.url, "name": "reflect-json", "bearer_token_file": str(token)},
        {"vllm": _cred("target", reflect_200.url), "name": "reflect-200"},
        {"vllm": _cred("target", refused_url())},  # named from its URL: host:port, never the userinfo
        {"vllm": healthy.url, "name": "up", "dcgm": _cred("dcgm", dcgm.url)},
    ]
    port = free_port()
    fleet.write_text(
        f"interval: 1s\nscrape_timeout: 0.5s\nlisten: 127.0.0.1:{port}\n"
        f"alertmanagers: [{json.dumps(_cred('am', am_bad.url.rsplit('/metrics', 1)[0]))}, "
        f"{json.dumps(am_good.url.rsplit('/metrics', 1)[0])}]\n" + posts_at_once() +
        f"tiers:\n  h100:\n    plan: {PLANS / 'h100.yaml'}\n    targets:\n"
        + "".join(f"      - {json.dumps(t)}\n" for t in targets))
    outputs: dict[str, str] = {}
    procs = []
    try:
        serve = _serve(["serve", "--config", str(fleet)])
        procs.append(serve)
        url = f"http://127.0.0.1:{port}"
        _at_cycle(serve, url, 4, [], 1.0)
        outputs["/metrics"] = requests.get(url + "/metrics", timeout=5).text
        outputs["/healthz"] = requests.get(url + "/healthz", timeout=5).text
        for fmt in ("json", "table"):
            r = subprocess.run([sys.executable, "-m", "exporter", "--log-level", "debug", "check", "-c", str(fleet),
                                "--format", fmt], capture_output=True, text=True, cwd=ROOT, timeout=120)
            outputs[f"check --format {fmt}"] = r.stdout + r.stderr
        outputs["serve log"] = _stop(serve)

        # the live view, as serve --watch draws it, of this fleet's report
        from exporter.check import run_check
        from exporter.config import load_config
        from exporter.live import LiveView

        report = run_check(load_config(str(fleet)), 1.0)
        screen = io.StringIO()
        view = LiveView("fleetwatch serve", stream=screen)
        with view:
            view.update(report)
        outputs["live view"] = screen.getvalue()

        # a password with an unencoded @, and userinfo with a bad port: refused without echoing either
        # and what is no URL at all: no scheme, one slash, a scheme-relative form
        for bad in (f"http://target:{SECRETS['target']}@x@127.0.0.1:8000/metrics",
                    f"http://target:{SECRETS['target']}@127.0.0.1:99999/metrics",
                    f"target:{SECRETS['target']}@127.0.0.1:8000/metrics",
                    f"http:/target:{SECRETS['target']}@127.0.0.1:8000/metrics",
                    f"//target:{SECRETS['target']}@127.0.0.1:8000/metrics"):
            broken = tmp_path / "broken.yaml"
            broken.write_text(fleet.read_text().replace(targets[0]["vllm"], bad))
            r = subprocess.run([sys.executable, "-m", "exporter", "validate-config", str(broken)], capture_output=True,
                               text=True, cwd=ROOT, timeout=60)
            assert r.returncode == 2
            outputs[f"validate-config {bad.split('@')[-1]} {bad[:6]}"] = r.stdout + r.stderr
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
        for t in (reflect_500, reflect_json, reflect_200, healthy, dcgm, am_bad, am_good):
            t.close()
    outputs["alertmanager posts"] = b"\n".join(received).decode()
    assert received, "the recording Alertmanager got no post: the sweep of its channel would be vacuous"
    # the leak cases were exercised: each target's failure is in the log, in words
    log = outputs["serve log"]
    assert "HTTP 500 Internal Server Error: an HTML page of" in log and "bad_data: " in log
    assert "it is an HTML page of" in log and "instance=127.0.0.1:" in log
    assert "alerts not delivered, kept for retry: HTTP 500: an HTML page of" in log
    leaks = [leak for channel, text in outputs.items() for leak in _leaks(channel, text)]
    assert not leaks, leaks


@pytest.mark.integration
def test_no_planted_secret_leaves_a_sidecar_or_the_prometheus_source(tmp_path: Path) -> None:
    texts = snapshots()
    engine = FakeTarget(body_fn=lambda n: texts[min(n, 20)])
    prom = FakeTarget(mode="reflect-json-400")  # every query answered with an error that echoes the header
    outputs: dict[str, str] = {}
    try:
        port = free_port()
        side = tmp_path / "side.yaml"
        side.write_text(f"interval: 1s\nscrape_timeout: 0.5s\nlisten: 127.0.0.1:{port}\n"
                        f"tiers:\n  h100: {{plan: {PLANS / 'h100.yaml'}}}\n")
        sidecar = _serve(["serve", "--config", str(side), "--tier", "h100", "--engine-url", _cred("sidecar", engine.url)])
        url = f"http://127.0.0.1:{port}"
        _at_cycle(sidecar, url, 2, [], 1.0)
        outputs["sidecar /metrics"] = requests.get(url + "/metrics", timeout=5).text
        outputs["sidecar log"] = _stop(sidecar)
        assert f'instance="127.0.0.1:{engine.httpd.server_address[1]}"' in outputs["sidecar /metrics"]

        port = free_port()
        backed = tmp_path / "backed.yaml"
        backed.write_text(f"interval: 1s\nscrape_timeout: 0.5s\nlisten: 127.0.0.1:{port}\n"
                          f"source:\n  prometheus: {{url: {json.dumps(_cred('prom', prom.url.rsplit('/metrics', 1)[0]))}}}\n"
                          f"tiers:\n  h100: {{plan: {PLANS / 'h100.yaml'}}}\n")
        reader = _serve(["serve", "--config", str(backed)])
        url = f"http://127.0.0.1:{port}"
        guard = threading.Event()
        text = ""
        for _ in range(100):  # until a failed cycle is counted (no cycle succeeds against this Prometheus)
            try:
                text = requests.get(url + "/metrics", timeout=5).text
            except requests.RequestException:
                text = ""
            if "fleetwatch_cycle_failures_total 2.0" in text:
                break
            guard.wait(0.2)  # polling another process
        outputs["prometheus-backed /metrics"] = text
        outputs["prometheus-backed log"] = _stop(reader)
        assert "bad_data: POST /api/v1/query Authorization: Basic <redacted>" in outputs["prometheus-backed log"]
    finally:
        engine.close()
        prom.close()
    leaks = [leak for channel, text in outputs.items() for leak in _leaks(channel, text)]
    assert not leaks, leaks
