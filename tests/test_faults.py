"""Five faulty targets next to healthy ones: the cycle ends on time and nothing healthy is lost."""
from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from exporter.config import load_config
from exporter.daemon import Pipeline, Server
from exporter.lifecycle import serve
from exporter.scrape import Scraper

from conftest import fixture_text
from fakes import FakeTarget, refused_url, write_config

pytestmark = pytest.mark.integration
FOLDER = "vllm/generated/vllm-0.33.0"


def snapshots() -> list[str]:
    return [fixture_text(f"{FOLDER}/snapshot-{i:02d}.prom") for i in range(21)]


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def healthy_numbers(cfg_path: str, texts: list[str]) -> tuple[dict[str, object], dict[tuple[str, str], int]]:
    """Run two cycles 15 fake seconds apart; return the healthy tier's metrics and the errors counted per
    (instance, reason)."""
    cfg = load_config(cfg_path)
    clock = FakeClock()
    scraper = Scraper(cfg, clock=clock)
    pipe = Pipeline(cfg, scraper, clock=clock)
    try:
        for _ in range(2):
            report = pipe.cycle()
            clock.t += 15
    finally:
        scraper.close()
    errors = {(inst, reason): n for (_, inst, _, reason), n in scraper.stats.copy().errors.items()}
    return {k: v.value for k, v in report.tiers["good"].metrics.items()}, errors


def test_faulty_targets_are_contained(tmp_path: Path) -> None:
    texts = snapshots()
    good = [FakeTarget(body_fn=lambda n: texts[min(5 + 5 * n, 20)]) for _ in range(2)]
    hang = FakeTarget(mode="hang")
    garbage = FakeTarget(mode="garbage")
    huge = FakeTarget(mode="huge")
    reset = FakeTarget(body_fn=lambda n: texts[20] if n == 0 else texts[3])  # engine restarted between scrapes
    extra = "interval: 3s\nscrape_timeout: 1s"
    good_targets = [{"vllm": t.url, "name": f"good-{i}"} for i, t in enumerate(good)]
    bad_targets = [{"vllm": refused_url(), "name": "refused"}, {"vllm": hang.url, "name": "hang"},
                   {"vllm": garbage.url, "name": "garbage"}, {"vllm": huge.url, "name": "huge"},
                   {"vllm": reset.url, "name": "reset"}]
    try:
        alone, _ = healthy_numbers(write_config(str(tmp_path / "alone.yaml"), {"good": good_targets}, extra=extra),
                                   texts)
        for t in good:
            t.requests = 0
        cfg_path = write_config(str(tmp_path / "mixed.yaml"), {"good": good_targets, "bad": bad_targets}, extra=extra)
        mixed, errors = healthy_numbers(cfg_path, texts)
        assert mixed == alone, "a faulty target changed a healthy tier's numbers"
        assert alone["ttft_p99_seconds"] is not None
        # the hanging target holds its connection 30 s and then closes it unanswered: a cycle that waited
        # for it would count it refused; each cycle cut it at the scrape deadline instead
        assert errors[("hang", "timeout")] == 2 and not any(i == "hang" and r != "timeout" for i, r in errors)

        # serve keeps serving, and counts each error by reason
        for t in good:
            t.requests = 0
        reset.requests = 0
        cfg = load_config(cfg_path)
        from dataclasses import replace
        cfg = replace(cfg, listen="127.0.0.1:0", interval=1.0)
        ready: list[Server] = []
        stop = threading.Event()
        th = threading.Thread(target=serve, args=(cfg,), kwargs={"stop": stop, "on_ready": ready.append})
        th.start()
        try:
            # generous: on a loaded machine a cycle with a hanging target takes its whole scrape timeout and more
            deadline = time.monotonic() + 60
            while not ready and time.monotonic() < deadline:
                time.sleep(0.05)
            url = f"http://127.0.0.1:{ready[0].port}"
            text = ""

            def cycles() -> float:
                m = re.search(r"^fleetwatch_cycles_total (\S+)$", text, re.M)
                return float(m[1]) if m else 0.0

            while time.monotonic() < deadline:
                text = requests.get(url + "/metrics", timeout=5).text
                if cycles() >= 3:
                    break
                time.sleep(0.2)
            assert cycles() >= 3, text
            for inst, reason in (("refused", "refused"), ("hang", "timeout"), ("garbage", "malformed"),
                                 ("huge", "too_large")):
                assert (f'fleetwatch_scrape_errors_total{{instance="{inst}",reason="{reason}",source="vllm",'
                        f'tier="bad"}}') in text, inst
            assert 'fleetwatch_engine_restarts_total{instance="reset",tier="bad"}' in text
            assert 'fleetwatch_target_up{instance="good-0",source="vllm",tier="good"} 1.0' in text
            assert 'fleetwatch_target_up{instance="hang",source="vllm",tier="bad"} 0.0' in text
            assert 'fleetwatch_finding{instance="hang",kind="target_down",status="warning",tier="bad"} 1.0' in text
            assert requests.get(url + "/healthz", timeout=5).status_code == 200
        finally:
            stop.set()
            th.join(15)
        assert not th.is_alive(), "serve did not stop within 15s of the stop signal"
    finally:
        for t in (*good, hang, garbage, huge, reset):
            t.close()


# ---------------------------------------------------------------- every hostile kind against `fleetwatch serve`

def _mutated(text: str, name: str, value: str) -> str:
    return "\n".join(ln.rsplit(" ", 1)[0] + " " + value if ln.startswith(name + "{") else ln
                     for ln in text.splitlines()) + "\n"


HOSTILE_MODES = {  # target name -> (FakeTarget mode, the reason its errors are counted under)
    "hang": ("hang", "timeout"), "drip": ("drip", "timeout"), "chunked": ("chunked", "timeout"),
    "huge": ("huge", "too_large"), "gzip-bomb": ("gzip-bomb", "too_large"), "redirect": ("redirect", "http_status"),
    "http-500": ("http-500", "http_status"), "bad-utf8": ("bad-utf8", "malformed"),
}
INTERVAL = 2.0  # scrape_timeout is left to its documented default, 0.8 x interval
CYCLES = 20


def _metrics(url: str) -> dict[str, float]:
    out = {}
    for line in requests.get(url + "/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(ln.split()[1] for ln in fh if ln.startswith("Threads:")))


def _start_serve(cfg_path: str) -> tuple["subprocess.Popen[str]", str]:
    import subprocess
    import sys

    from fakes import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "serve", "--config", cfg_path, "--listen",
                             f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    return proc, f"http://127.0.0.1:{port}"


def _at_cycle(proc: "subprocess.Popen[str]", url: str, n: int, threads: list[int],
              interval: float = INTERVAL) -> dict[str, float]:
    """/metrics as it reads once cycle ``n`` has been published (polling a real process, 20 times a cycle)."""
    deadline = time.monotonic() + n * interval + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            m = _metrics(url)
        except requests.RequestException:
            m = {}
        cycles = m.get("fleetwatch_cycles_total", 0)
        if cycles >= 1:
            threads.append(_threads(proc.pid))
        if cycles == n:
            return m
        assert cycles < n, f"missed cycle {n} (at {cycles})"
        time.sleep(interval / 20)  # polling an external process between its cycles, not simulating time
    raise AssertionError(f"cycle {n} never came")


def sigterm_and_check(proc: "subprocess.Popen[str]", cycles_before: float) -> str:
    """SIGTERM ``proc``; assert it exits 0, after finishing at most the cycle it was running; its stderr."""
    import signal

    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)  # a guard against a hang, not a measurement
    assert proc.returncode == 0, stderr[-2000:]
    done = re.search(r"stopped after ([\d,]+) cycles?", stderr)
    assert done, stderr[-2000:]
    # the cycle running when the signal came may finish (and one that began as /metrics was read)
    assert cycles_before <= int(done.group(1).replace(",", "")) <= cycles_before + 2, (cycles_before, done.group(0))
    return stderr


def test_serve_beside_every_hostile_kind_of_target(tmp_path: Path, alone_on_the_machine: None) -> None:
    texts = snapshots()
    good_alone = FakeTarget(body_fn=lambda n: texts[min(n, 20)])
    good_mixed = FakeTarget(body_fn=lambda n: texts[min(n, 20)])
    hostile = {name: FakeTarget(mode=mode) for name, (mode, _) in HOSTILE_MODES.items()}
    hostile["plus-inf"] = FakeTarget(body_fn=lambda n: _mutated(texts[min(n, 20)], "vllm:kv_cache_usage_perc", "+Inf"))
    hostile["nan"] = FakeTarget(body_fn=lambda n: _mutated(texts[min(n, 20)], "vllm:num_requests_waiting", "NaN"))
    hostile["negative"] = FakeTarget(body_fn=lambda n: _mutated(texts[min(n, 20)], "vllm:num_preemptions_total", "-7"))
    hostile["reset"] = FakeTarget(body_fn=lambda n: texts[(4 * n) % 21])  # drops back every few scrapes
    extra = f"interval: {INTERVAL:g}s\nwindow: 10s"
    alone_cfg = write_config(str(tmp_path / "alone.yaml"), {"good": [{"vllm": good_alone.url, "name": "good"}]},
                             extra=extra)
    bad = [{"vllm": refused_url(), "name": "refused"}] + [{"vllm": t.url, "name": n} for n, t in hostile.items()]
    mixed_cfg = write_config(str(tmp_path / "mixed.yaml"), {"good": [{"vllm": good_mixed.url, "name": "good"}],
                                                           "bad": bad}, extra=extra)
    procs = []
    try:
        alone, alone_url = _start_serve(alone_cfg)
        procs.append(alone)
        mixed, mixed_url = _start_serve(mixed_cfg)
        procs.append(mixed)
        threads: list[int] = []
        m_alone = _at_cycle(alone, alone_url, CYCLES, [])
        m = _at_cycle(mixed, mixed_url, CYCLES, threads)

        # the healthy tier's numbers are those of a run without the hostile targets (every row that
        # does not divide by wall-clock seconds, which differ between two processes)
        rows = [k for k in m_alone if k.startswith("fleetwatch_") and '{tier="good"}' in k
                and not any(r in k for r in ("per_second", "per_gpu_hour", "cost_per", "fleet_utilization", "_peak_"))
                and not k.startswith(("fleetwatch_scrape_duration", "fleetwatch_plan_check_observed",
                                      "fleetwatch_plan_check_predicted", "fleetwatch_guardrail"))]
        assert "fleetwatch_ttft_p99_seconds{tier=\"good\"}" in rows and len(rows) >= 8, rows
        assert {k: m.get(k) for k in rows} == {k: m_alone[k] for k in rows}

        assert m["fleetwatch_cycle_overruns_total"] == 0 and m["fleetwatch_cycle_failures_total"] == 0
        assert m['fleetwatch_evaluation_errors_total{tier="bad"}'] == 0
        # threads: a fixed pool plus the HTTP, scheduler and watchdog threads, and not growing
        assert max(threads) <= 2 * (len(bad) + 1) + 8, threads
        assert threads[-1] <= threads[len(threads) // 4] + 2, threads

        def errors(inst: str, reason: str) -> float:
            return m.get(f'fleetwatch_scrape_errors_total{{instance="{inst}",reason="{reason}",source="vllm",'
                         f'tier="bad"}}', 0)

        def skipped(inst: str) -> float:  # cycles a target that kept failing was not tried (backoff)
            return m.get(f'fleetwatch_scrape_skipped_total{{instance="{inst}",reason="backoff",tier="bad"}}', 0)

        # every cycle either tried the target and counted its error, or backed off from it
        assert errors("refused", "refused") + skipped("refused") >= CYCLES - 1
        assert skipped("refused") > 0
        for name, (_, reason) in HOSTILE_MODES.items():
            assert errors(name, reason) >= 3 and errors(name, reason) + skipped(name) >= CYCLES - 1, (
                name, reason, {k: v for k, v in m.items() if name in k})
        for inst, key in (("plus-inf", "kv_cache_usage"), ("nan", "requests_waiting"), ("negative", "preemptions")):
            assert m[f'fleetwatch_invalid_samples_total{{input="{key}",instance="{inst}",tier="bad"}}'] >= CYCLES - 1
        assert m['fleetwatch_engine_restarts_total{instance="reset",tier="bad"}'] >= 3
        assert requests.get(mixed_url + "/healthz", timeout=5).status_code == 200

        # SIGTERM: the running cycle finishes, no other starts, exit 0, whatever the targets are doing
        # (how soon: bench/bench_lifecycle.py measures it against interval + scrape_timeout)
        stderr = sigterm_and_check(mixed, _metrics(mixed_url)["fleetwatch_cycles_total"])
        assert "Traceback" not in stderr, stderr[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
        for t in (good_alone, good_mixed, *hostile.values()):
            t.close()
