"""Regression tests for the hardening issue: each one failed before its fix."""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from exporter.check import format_json
from exporter.config import load_config
from exporter.evaluate import evaluate, scraped_rows
from exporter.exposition import ExpositionError
from exporter.fetch import FetchError, fetch_text, new_session, read_token
from exporter.model import InstanceSample, ObservedWorkload, Status
from exporter.sources import dcgm, sglang, vllm
from exporter.window import TierView, tier_window

from conftest import fixture_text
from fakes import FakeTarget, refused_url, write_config

V033 = "vllm/generated/vllm-0.33.0"


# ---------------------------------------------------------------- 1. the deadline bounds the whole fetch

@pytest.mark.parametrize("mode", ["drip", "header-drip", "chunked", "hang"])
def test_a_slow_target_cannot_hold_a_fetch_past_its_deadline(mode: str) -> None:
    """A byte every 0.1 s never trips a per-read timeout of 0.5 s, and the drips take 20 s or more (the
    chunked body never ends): only a whole-fetch deadline ends the fetch as a timeout, with most of the
    body unsent. The time it takes past the deadline is measured by bench/bench_lifecycle.py."""
    target = FakeTarget(mode=mode, drip_seconds=0.1)
    session = new_session()
    try:
        with pytest.raises(FetchError) as e:
            fetch_text(session, target.url, timeout=0.5, max_bytes=1 << 20)
        assert e.value.reason == "timeout"
        assert target.dripped < 200, f"{mode}: {target.dripped} bytes dripped before the fetch ended"
    finally:
        session.close()
        target.close()


def test_keep_alive_survives_the_watchdog() -> None:
    """A fetch that finished in time keeps its connection; the next one on it is not cut."""
    body = fixture_text(f"{V033}/snapshot-05.prom")
    target = FakeTarget([body])
    session = new_session()
    try:
        for _ in range(3):
            assert fetch_text(session, target.url, timeout=0.3, max_bytes=16 << 20) == body
            time.sleep(0.35)  # let the earlier fetch's deadline pass while its connection is idle
        assert fetch_text(session, target.url, timeout=0.3, max_bytes=16 << 20) == body
    finally:
        session.close()
        target.close()


# ---------------------------------------------------------------- 2-4. non-finite and negative samples

def _mutate(text: str, name: str, value: str) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            line = line.rsplit(" ", 1)[0] + " " + value
        out.append(line)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("value", ["+Inf", "NaN", "-3"])
def test_a_bad_counter_makes_its_rows_unknown_on_its_tier_alone(value: str, tmp_path: Path) -> None:
    texts = [fixture_text(f"{V033}/snapshot-{i:02d}.prom") for i in (5, 10)]
    bad = [_mutate(t, "vllm:num_preemptions_total", value) for t in texts]
    cfg = load_config(write_config(str(tmp_path / "c.yaml"), {
        "good": [{"vllm": "http://127.0.0.1:1/metrics", "name": "g"}],
        "bad": [{"vllm": "http://127.0.0.1:2/metrics", "name": "b"}]}))
    windows = {
        "good": tier_window("good", [InstanceSample("good", "g", 100.0 + 15 * i, vllm.parse(t))
                                     for i, t in enumerate(texts)]),
        "bad": tier_window("bad", [InstanceSample("bad", "b", 100.0 + 15 * i, vllm.parse(t))
                                   for i, t in enumerate(bad)]),
    }
    report = evaluate(cfg, windows, {}, 115.0, 15.0, rows=scraped_rows(cfg, windows))
    bad_row = report.tiers["bad"].metrics["kv_cache_eviction_ratio"]
    assert bad_row.value is None and bad_row.status is Status.UNKNOWN
    assert "b reported a NaN, infinite or negative preemption" in (bad_row.reason or "")
    # the rest of the bad tier, and the whole good tier, are computed as without the bad value
    assert report.tiers["bad"].metrics["ttft_p99_seconds"].value == report.tiers["good"].metrics["ttft_p99_seconds"].value
    assert report.tiers["good"].metrics["kv_cache_eviction_ratio"].value is not None
    json.loads(format_json(report))  # serialisable with allow_nan=False


def test_an_infinite_gauge_cannot_break_check_json(tmp_path: Path) -> None:
    texts = [_mutate(fixture_text(f"{V033}/snapshot-{i:02d}.prom"), "vllm:kv_cache_usage_perc", "+Inf")
             for i in (5, 10)]
    cfg = load_config(write_config(str(tmp_path / "c.yaml"), {"t": [{"vllm": "http://127.0.0.1:1/metrics"}]}))
    tw = tier_window("t", [InstanceSample("t", "127.0.0.1:1", 100.0 + 15 * i, vllm.parse(x)) for i, x in enumerate(texts)])
    report = evaluate(cfg, {"t": tw}, {}, 115.0, 15.0, rows=scraped_rows(cfg, {"t": tw}))
    doc = json.loads(format_json(report))
    assert doc["tiers"]["t"]["metrics"]["kv_cache_utilization_ratio"]["value"] is None
    assert doc["tiers"]["t"]["metrics"]["queue_depth_requests"]["value"] is not None


def test_max_lora_inf_is_an_exposition_error_not_an_overflow() -> None:
    text = 'vllm:lora_requests_info{max_lora="inf",running_lora_adapters="",waiting_lora_adapters=""} 1.7e9\n'
    with pytest.raises(ExpositionError, match="max_lora"):
        vllm.parse(text)


def test_sglang_and_dcgm_drop_non_finite_values() -> None:
    text = _mutate(fixture_text("sglang/generated/sglang-0.5.23/snapshot-05.prom"), "sglang:token_usage", "NaN")
    sample = sglang.parse(text)
    assert "kv_cache_usage" in sample.invalid and "kv_cache_usage" not in sample.gauges
    gpus = dcgm.parse(_mutate(fixture_text("dcgm/dcgm_t4_dcp_ericsson-ccd.prom"), "DCGM_FI_DEV_FB_USED", "-5"))
    assert all(g.memory_used_bytes is None for g in gpus)


def test_one_tier_raising_never_stops_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import exporter.evaluate as ev

    texts = [fixture_text(f"{V033}/snapshot-{i:02d}.prom") for i in (5, 10)]
    cfg = load_config(write_config(str(tmp_path / "c.yaml"), {
        "a": [{"vllm": "http://127.0.0.1:1/metrics", "name": "x"}],
        "b": [{"vllm": "http://127.0.0.1:2/metrics", "name": "x"}]}))
    windows = {n: tier_window(n, [InstanceSample(n, "x", 100.0 + 15 * i, vllm.parse(t)) for i, t in enumerate(texts)])
               for n in ("a", "b")}
    expected = evaluate(cfg, windows, {}, 115.0, 15.0, rows=scraped_rows(cfg, windows)).tiers["b"]
    real = ev.workload

    def broken_for_a(tw: TierView) -> ObservedWorkload:
        if tw.tier == "a":
            raise ZeroDivisionError("boom")
        return real(tw)

    monkeypatch.setattr(ev, "workload", broken_for_a)
    report = evaluate(cfg, windows, {}, 115.0, 15.0, rows=scraped_rows(cfg, windows))
    assert report.tiers["a"].error == "ZeroDivisionError: boom"
    assert all(m.status is Status.UNKNOWN for m in report.tiers["a"].metrics.values())
    assert report.tiers["b"].error is None
    assert {k: m.value for k, m in report.tiers["b"].metrics.items()} == {k: m.value for k, m in expected.metrics.items()}
    json.loads(format_json(report))


# ---------------------------------------------------------------- 5-6. secrets

def test_a_token_with_a_line_break_inside_is_refused_without_echoing_it(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-token-value"
    f = tmp_path / "token"
    f.write_text(f"{secret}\nX-Injected: 1\n")
    with pytest.raises(FetchError) as e:
        read_token(str(f))
    assert e.value.reason == "token" and secret not in str(e.value)
    f.write_text(secret + "\n")  # a trailing newline, as editors write it, is fine
    assert read_token(str(f)) == secret

    # through the scraper: the error is logged and counted, the token never appears
    from exporter.scrape import Scraper

    f.write_text(f"{secret}\r\nmore")
    target = FakeTarget([fixture_text(f"{V033}/snapshot-05.prom")])
    try:
        cfg = load_config(write_config(str(tmp_path / "c.yaml"), {"t": [{"vllm": target.url, "name": "i",
                                                                          "bearer_token_file": str(f)}]}))
        scraper = Scraper(cfg)
        with caplog.at_level(logging.DEBUG):
            (sample,) = scraper.scrape()
        scraper.close()
        assert sample.engine is None
        assert scraper.stats.errors == {("t", "i", "vllm", "token"): 1}
        assert secret not in caplog.text and "token" in caplog.text
    finally:
        target.close()


def test_a_token_file_that_is_a_fifo_fails_the_fetch_and_never_holds_a_worker(tmp_path: Path) -> None:
    """A FIFO as a token file used to block the worker that opened it forever; with enough of them the
    pool ran dry and healthy targets in other tiers were skipped while /healthz said ok."""
    from exporter.scrape import Scraper

    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    healthy = FakeTarget([fixture_text(f"{V033}/snapshot-05.prom")])
    try:
        cfg = load_config(write_config(str(tmp_path / "c.yaml"), {
            "bad": [{"vllm": refused_url(), "name": f"b{i}", "bearer_token_file": str(fifo)} for i in range(8)],
            "good": [{"vllm": healthy.url, "name": "g"}]}))
        scraper = Scraper(cfg)
        for _ in range(3):  # more cycles than it took to strand the pool before
            samples = {s.instance: s for s in scraper.scrape()}
            assert samples["g"].engine is not None
        scraper.close()
        assert {k[3] for k in scraper.stats.errors if k[0] == "bad"} == {"token"}
        assert not [k for k in scraper.stats.skipped if k[0] == "good"]
    finally:
        healthy.close()


def test_userinfo_never_reaches_a_label_or_the_metrics_page(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from exporter.collector import Published, Snapshot, make_registry
    from exporter.alertmanager import NotifyStats
    from exporter.scrape import ScrapeStats

    cfg = load_config(write_config(str(tmp_path / "c.yaml"), {"t": [{"vllm": "http://admin:hunter2@10.0.0.5:8000/metrics"}]},
                                   extra="alertmanagers: ['http://am:pw0rd@10.0.0.9:9093']"))
    assert cfg.tiers["t"].targets[0].name == "10.0.0.5:8000"
    snap = Snapshot()
    url = cfg.alertmanagers[0]
    snap.publish(Published(None, ScrapeStats(up={("t", "10.0.0.5:8000", "vllm"): 0}), 1, 0.1, 0,
                           NotifyStats({url: 1}, {url: 0}, {url: 0}, {url: 0})))
    page = generate_latest(make_registry(cfg, snap)).decode()
    assert "hunter2" not in page and "admin" not in page and "pw0rd" not in page
    assert 'instance="10.0.0.5:8000"' in page and 'alertmanager="http://10.0.0.9:9093"' in page


# ---------------------------------------------------------------- 14. the GPU memory reason

def test_gpu_memory_unknown_names_the_missing_fields() -> None:
    from exporter.catalogue import gpu_memory_utilization

    gpus = dcgm.parse(fixture_text("dcgm/dcgm_h100x8_k8s_aicr.prom"))  # GPU_UTIL only, no FB_* fields
    engine = vllm.parse(fixture_text(f"{V033}/snapshot-05.prom"))
    tw = tier_window("t", [InstanceSample("t", "i", 100.0 + 15 * k, engine, gpus) for k in range(2)])
    q = gpu_memory_utilization(tw, None)  # type: ignore[arg-type]
    assert q.value is None
    assert "DCGM_FI_DEV_FB_USED and DCGM_FI_DEV_FB_FREE" in (q.reason or "") and "configure dcgm" not in (q.reason or "")


# ---------------------------------------------------------------- 9. the listener

def test_idle_connections_are_bounded_and_time_out(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import requests

    import exporter.daemon as d
    from prometheus_client.core import CollectorRegistry

    def until(done: Callable[[], bool]) -> None:
        guard = time.monotonic() + 60  # against a hang only: each wait ends on a count
        while not done():
            assert time.monotonic() < guard
            time.sleep(0.02)  # polling the server's threads, not simulating time

    # bounded: 40 idle clients that never send a request, and handlers that wait for them far longer
    # than the test runs: 8 threads hold them, and every connection past those is closed and counted
    monkeypatch.setattr(d, "HTTP_IDLE_TIMEOUT", 600.0)
    monkeypatch.setattr(d, "HTTP_REQUEST_DEADLINE", 600.0)
    server = d.Server("127.0.0.1", 0, CollectorRegistry(), lambda: (True, "ok"), max_connections=8)
    server.start()
    socks = []
    def handlers() -> int:
        return sum("process_request_thread" in t.name for t in threading.enumerate())

    try:
        before = handlers()
        for _ in range(40):
            socks.append(socket.create_connection(("127.0.0.1", server.port)))
        until(lambda: server.rejected == 32)
        assert handlers() - before == 8, "one handler thread per connection"
    finally:
        for s in socks:
            s.close()
        server.stop()

    # timing out: an idle client that never closes still frees its thread, by the handler's idle timeout
    monkeypatch.setattr(d, "HTTP_IDLE_TIMEOUT", 0.5)
    server = d.Server("127.0.0.1", 0, CollectorRegistry(), lambda: (True, "ok"), max_connections=8)
    server.start()
    idle = socket.create_connection(("127.0.0.1", server.port))
    try:
        idle.settimeout(60)  # against a hang only
        assert idle.recv(1) == b"", "the server hangs up on a client that sends nothing"
        until(lambda: server.httpd._slots._value == 8)  # its thread is free again
        r = requests.get(f"http://127.0.0.1:{server.port}/metrics", headers={"Accept-Encoding": "gzip"}, timeout=5)
        assert r.status_code == 200 and r.headers.get("Content-Encoding") == "gzip"
    finally:
        idle.close()
        server.stop()


def test_a_sustained_slowloris_leaves_scrapes_answered() -> None:
    """About 5 connections a second, each sending its request one byte a second and never finishing it, for
    15 s: at least 99% of a well-behaved client's scrapes of /metrics, 6 a second, are answered. Each slow
    connection is cut at the request deadline (3 s in all), so it holds a handler thread 3 s, not forever."""
    import socket

    import requests
    from prometheus_client.core import CollectorRegistry
    from prometheus_client import Gauge

    import exporter.daemon as d

    registry = CollectorRegistry()
    Gauge("fleetwatch_test_up", "a series to scrape", registry=registry).set(1)
    server = d.Server("127.0.0.1", 0, registry, lambda: (True, "ok"))
    server.start()
    stop = threading.Event()
    opened: list[int] = []

    def attack() -> None:
        socks: list[socket.socket] = []
        tick = 0
        while not stop.wait(0.2):  # paces a real attack over real sockets
            tick += 1
            try:
                s = socket.create_connection(("127.0.0.1", server.port), timeout=1)
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                socks.append(s)
                opened.append(1)
            except OSError:
                pass
            if tick % 5 == 0:  # one more byte a second on each, never the blank line that ends the headers
                for s in list(socks):
                    try:
                        s.send(b"X")
                    except OSError:
                        socks.remove(s)
                        s.close()
        for s in socks:
            s.close()

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    answered = failed = 0
    try:
        end = time.monotonic() + 15
        while time.monotonic() < end:
            try:
                r = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
                answered += r.status_code == 200 and "fleetwatch_test_up 1.0" in r.text
                failed += not (r.status_code == 200)
            except requests.RequestException:
                failed += 1
            stop.wait(0.15)  # a scraper's pace, over real sockets
    finally:
        stop.set()
        attacker.join(10)
        server.stop()
    assert len(opened) >= 60, f"the attack opened only {len(opened)} connections"
    assert answered + failed >= 50 and answered >= 0.99 * (answered + failed), (answered, failed)


def test_math_isfinite_guard_on_quantities() -> None:
    """A histogram whose summed buckets overflow is unknown, not inf."""
    from exporter.model import EngineSample, Histogram

    def h(c: float) -> Histogram:
        return Histogram(((1.0, c), (math.inf, c)), c, 0.0)

    samples = [InstanceSample("t", f"i{k}", t, EngineSample("vllm", histograms={"ttft_seconds": h(c)}))
               for k in range(2) for t, c in ((0.0, 0.0), (15.0, 1.7e308))]
    q = tier_window("t", samples).quantile("ttft_seconds", 0.99)
    assert q.value is None and "overflow" in (q.reason or "")


def test_an_alertmanager_that_drips_cannot_hold_the_cycle() -> None:
    """The POST is bounded by the client's timeout in all, and the alert stays queued."""
    from exporter.alertmanager import Alert, AlertmanagerClient

    am = FakeTarget(mode="header-drip", drip_seconds=0.1)
    # 1.5 s: far longer than the drip's 0.1 s between bytes, so a per-read timeout alone would never trip,
    # and the headers take 20 s: a POST that ends failed, with the headers unsent, was cut by the deadline
    client = AlertmanagerClient([am.url.rsplit("/metrics", 1)[0]], interval=15, timeout=1.5)
    try:
        client.update([Alert({"alertname": "FleetwatchResizeTrigger", "tier": "h100"}, {"summary": "x"})],
                      now=1000.0)
        client.flush()
        stats = client.stats()
        assert am.dripped < 200, f"{am.dripped} bytes of headers dripped before the POST ended"
        assert list(stats.failed.values()) == [1] and list(stats.queued.values()) == [1]
    finally:
        client.close()
        am.close()


def test_dripping_alertmanagers_never_delay_a_cycle(tmp_path: Path) -> None:
    """Six Alertmanagers that drip their answers' headers, beside a tier with a target down (so there is
    always an alert to post): each POST is cut at its timeout on a sender thread of its own, and no cycle
    overruns its 1 s interval. Posting inside the cycle, six of them took 3 s a cycle."""
    import requests

    from fakes import posts_at_once, refused_url, write_config
    from test_faults import _at_cycle, _start_serve, sigterm_and_check, snapshots

    texts = snapshots()
    engine = FakeTarget(body_fn=lambda n: texts[min(n, 20)])
    ams = [FakeTarget(mode="header-drip", drip_seconds=0.1) for _ in range(6)]
    am_list = ", ".join(f"'{am.url.rsplit('/metrics', 1)[0]}'" for am in ams)
    cfg = write_config(str(tmp_path / "f.yaml"), {"h100": [{"vllm": engine.url, "name": "up"},
                                                           {"vllm": refused_url(), "name": "down"}]},
                       extra=f"interval: 1s\nscrape_timeout: 0.5s\nalertmanagers: [{am_list}]\n" + posts_at_once())
    proc, url = _start_serve(cfg)
    try:
        m = _at_cycle(proc, url, 8, [], 1.0)
        assert m["fleetwatch_cycle_overruns_total"] == 0, "a cycle waited for an Alertmanager"
        assert requests.get(url + "/healthz", timeout=5).status_code == 200
        failed = {k: v for k, v in m.items() if k.startswith("fleetwatch_alertmanager_notifications_failed_total")}
        assert len(failed) == 6 and all(v >= 1 for v in failed.values()), failed
        assert all(am.requests >= 1 for am in ams)
        assert "Traceback" not in sigterm_and_check(proc, m["fleetwatch_cycles_total"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        engine.close()
        for am in ams:
            am.close()


def test_update_and_the_senders_share_one_lock() -> None:
    """The cycle's update and every sender touch the same queues: 500 updates with changing alerts while
    three senders post to a recording Alertmanager end with no error and exactly the last state delivered."""
    from exporter.alertmanager import Alert, AlertmanagerClient

    received: list[tuple[int, list[dict[str, object]]]] = []  # (which receiver, the batch)
    ams = [FakeTarget(body_fn=lambda n: "") for _ in range(3)]

    def recorder(k: int, original: Any) -> Any:
        def record(handler: Any) -> None:
            received.append((k, json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))))
            original(handler)
        return record

    for k, am in enumerate(ams):
        am.httpd.RequestHandlerClass.do_POST = recorder(k, am.httpd.RequestHandlerClass.do_POST)  # type: ignore[attr-defined]
    client = AlertmanagerClient([am.url.rsplit("/metrics", 1)[0] for am in ams], interval=1.0, timeout=5.0,
                                resend_delay=0.0)
    client.start()
    try:
        for i in range(500):
            client.update([Alert({"alertname": "FleetwatchResizeTrigger", "tier": f"t{i % 7}"},
                                 {"summary": f"update {i}"})], now=1000.0 + i)
        guard = time.monotonic() + 30  # against a hang only
        while any(client.stats().queued.values()) and time.monotonic() < guard:
            client.update([Alert({"alertname": "FleetwatchResizeTrigger", "tier": "t3"}, {"summary": "update 499"})],
                          now=1499.0)  # the same state again: wakes the senders without changing anything
            time.sleep(0.05)  # waiting on the sender threads
        stats = client.stats()
        assert not any(stats.queued.values()) and not any(stats.failed.values()), stats
        # three receivers, each with its own sender: what each received last for a tier is that tier's
        # last state; across receivers, posts interleave freely
        last: dict[tuple[int, str], dict[str, object]] = {}
        for k, batch in received:
            for a in batch:
                last[(k, a["labels"]["tier"])] = a  # type: ignore[index]
        assert {k for k, _ in received} == {0, 1, 2}
        assert all(a["annotations"] == {"summary": "update 499"}
                   for (k, tier), a in last.items() if tier == "t3"), last
    finally:
        client.close()
        for am in ams:
            am.close()


# ---------------------------------------------------------------- TLS: verified by default

def test_tls_is_verified_by_default_and_a_ca_file_or_opt_out_is_honoured(tmp_path: Path) -> None:
    import ssl
    import subprocess
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from conftest import binary

    openssl = binary("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    body = b"vllm:num_requests_running 1\n"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{httpd.server_address[1]}/metrics"
    session = new_session()
    try:
        with pytest.raises(FetchError) as e:  # a self-signed certificate fails verification
            fetch_text(session, url, timeout=5, max_bytes=1 << 20)
        assert e.value.reason == "tls"
        assert fetch_text(session, url, timeout=5, max_bytes=1 << 20, verify=str(cert)) == body.decode()
        assert fetch_text(session, url, timeout=5, max_bytes=1 << 20, verify=False) == body.decode()
    finally:
        session.close()
        httpd.shutdown()


# ---------------------------------------------------------------- backoff for targets that keep failing

def test_backoff_schedule_doubles_and_is_capped_in_seconds() -> None:
    from exporter.scrape import BACKOFF_AFTER, BACKOFF_MAX_SECONDS, backoff_cycles

    waits = [backoff_cycles(n, 1.0) for n in range(1, 12)]
    assert waits[:BACKOFF_AFTER - 1] == [1] * (BACKOFF_AFTER - 1)
    assert waits[BACKOFF_AFTER - 1:BACKOFF_AFTER + 2] == [2, 4, 8]
    assert max(waits) * 1.0 <= BACKOFF_MAX_SECONDS and waits[-1] == int(BACKOFF_MAX_SECONDS)
    assert max(backoff_cycles(n, 15.0) for n in range(1, 40)) * 15.0 <= BACKOFF_MAX_SECONDS


def test_a_failing_target_is_tried_less_often_and_seen_again_when_it_answers(tmp_path: Path) -> None:
    from exporter.scrape import Scraper

    body = fixture_text(f"{V033}/snapshot-05.prom")
    target = FakeTarget(mode="http-500", body_fn=lambda n: body)
    cfg = load_config(write_config(str(tmp_path / "f.yaml"), {"h100": [{"vllm": target.url, "name": "t"}]},
                                   extra="interval: 1s\nwindow: 10s"))
    scraper = Scraper(cfg)
    try:
        for _ in range(20):
            assert scraper.scrape()[0].engine is None
        tried = target.requests
        skipped = scraper.stats.skipped[("h100", "t", "backoff")]
        assert tried + skipped == 20 and 3 <= tried < 12, (tried, skipped)
        target.mode = "replay"  # it recovers: within the cap it is tried, and answers
        ups = [scraper.scrape()[0].engine is not None for _ in range(int(60 / 1.0) + 1)]
        assert any(ups) and all(ups[ups.index(True):])
    finally:
        scraper.close()
        target.close()
