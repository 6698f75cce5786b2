"""`source: prometheus` against a hostile or slow Prometheus: a hang, a drip, a 400-digit number, 200,000
brackets and answers of the wrong types, in the instant queries of every cycle and in the history's range
query. Each is a counted PrometheusError; the history is read on a thread of its own, so the cycles go on
whatever it does; and /healthz tells "starting" from "never succeeded"."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests

import exporter.promread as promread
from exporter.config import load_config
from exporter.daemon import Pipeline
from exporter.promread import PrometheusReader

from fakes import FakePrometheus
from test_faults import _start_serve, sigterm_and_check

pytestmark = pytest.mark.integration
PLANS = Path(__file__).resolve().parents[1] / "examples" / "plans"
REASON = {"hang": "timeout", "drip": "timeout", "overflow": "malformed", "nested": "malformed", "types": "malformed"}


def _config(tmp_path: Path, url: str, timing: str = "interval: 5s\nscrape_timeout: 3s\n") -> str:
    f = tmp_path / "fleet.yaml"
    # by default a timeout with room for 57 queries on a loaded 2-core machine: these tests are about answers
    f.write_text(f"{timing}source:\n  prometheus: {{url: '{url}', instance_label: pod}}\n"
                 f"tiers:\n  h100: {{plan: {PLANS / 'h100.yaml'}}}\n")
    return str(f)


def _errors(pipe: Pipeline, reason: str, source: str = "prometheus") -> int:
    return sum(n for (_, _, src, r), n in pipe.stats.errors.items() if src == source and r == reason)


@pytest.mark.parametrize("mode", sorted(REASON))
def test_a_hostile_answer_to_the_cycles_queries_is_counted_and_the_cycle_ends(mode: str, tmp_path: Path) -> None:
    prom = FakePrometheus({"query": mode})
    reader = PrometheusReader(load_config(_config(tmp_path, prom.url)))
    try:
        pipe = Pipeline(reader.config, None, reader=reader)
        for _ in range(2):
            pipe.safe_cycle()  # raises nothing: every query failed, so the cycle is counted failed
        assert pipe.failures == 2 and pipe.cycles == 0
        assert _errors(pipe, REASON[mode]) >= 2, pipe.snapshot.get().stats.errors
        assert _errors(pipe, "other") == 0, "an unexpected exception, not a PrometheusError"
        assert pipe.history_note().read is True  # the history (an empty answer) was fine
    finally:
        reader.close()
        prom.close()


@pytest.mark.parametrize("mode", sorted(REASON))
def test_a_hostile_history_answer_holds_no_cycle(mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The history is read off the cycle: while its range query hangs (for as long as the test runs), three
    cycles complete; a malformed history is counted, and asked again later, never retried inside a cycle."""
    monkeypatch.setattr(promread, "HISTORY_TIMEOUT", 60.0 if mode == "hang" else 5.0)
    prom = FakePrometheus({"query_range": mode})
    reader = PrometheusReader(load_config(_config(tmp_path, prom.url)))
    stop = threading.Event()
    try:
        pipe = Pipeline(reader.config, None, reader=reader)
        pipe.source.start(stop)
        for _ in range(3):
            pipe.safe_cycle()
        assert pipe.failures == 0 and pipe.cycles == 3
        if mode == "hang":  # still asking: the cycles did not wait for it
            assert prom.requests["query_range"] == 1 and pipe.history_note().read is False
        else:
            deadline = time.monotonic() + 30  # against a hang only: the history thread's one try ends on its own
            while _errors(pipe, REASON[mode], "prometheus_history") == 0 and time.monotonic() < deadline:
                time.sleep(0.05)  # waiting on another thread's outcome
            assert _errors(pipe, REASON[mode], "prometheus_history") == 1 and pipe.history_note().read is False
            assert prom.requests["query_range"] == 1, "retried at once, not after its backoff"
        assert prom.requests["query"] >= 3 * 1  # the cycles' own queries ran
    finally:
        stop.set()
        reader.close()
        prom.close()


def test_a_query_that_would_start_after_the_deadline_is_not_sent(tmp_path: Path) -> None:
    """A query asked once the cycle's time is spent gets no fresh timeout of its own (a cycle with a 1.5 s
    timeout once took 11.5 s): the reader hands it what is left, and nothing left means it is not sent."""
    from exporter.sources.prometheus_api import PrometheusError

    prom = FakePrometheus({})
    reader = PrometheusReader(load_config(_config(tmp_path, prom.url)))
    try:
        reader.api.query("up", time.time(), timeout=1.0)
        assert prom.requests["query"] == 1
        with pytest.raises(PrometheusError, match="deadline passed before this query could start"):
            reader.api.query("up", time.time(), timeout=-0.01)
        assert prom.requests["query"] == 1
    finally:
        reader.close()
        prom.close()


def test_serve_says_starting_then_never_succeeded_and_stops_on_sigterm(tmp_path: Path) -> None:
    """A Prometheus whose instant queries drip and whose history hangs: /healthz is 200 "starting" within the
    start-up grace, then 503 "no cycle has succeeded"; no cycle overruns; SIGTERM ends the process at once."""
    prom = FakePrometheus({"query": "drip", "query_range": "hang"})
    proc, url = _start_serve(_config(tmp_path, prom.url, "interval: 2s\nscrape_timeout: 1s\n"))
    try:
        said = []
        guard = time.monotonic() + 60  # against a hang only
        while time.monotonic() < guard:
            try:
                r = requests.get(url + "/healthz", timeout=5)
                said.append((r.status_code, r.text.strip()))
                if r.status_code == 503:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)  # polling another process
        assert said and said[0][0] == 200 and said[0][1].startswith("starting"), said
        assert said[-1][0] == 503 and said[-1][1].startswith("no cycle has succeeded since the start"), said
        m = requests.get(url + "/metrics", timeout=5).text
        assert "fleetwatch_cycle_overruns_total 0.0" in m
        assert 'reason="timeout",source="prometheus"' in m
        stderr = sigterm_and_check(proc, 0)
        assert "Traceback" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        prom.close()
