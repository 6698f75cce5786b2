"""Every file fleetwatch reads is a hostile input: the config and its plans, what `fleetwatch plan`
reads (workload, config.json, GPU catalogue, sweep, report) and the state. Each case below was a
traceback, a hang or gigabytes of memory once; each must be exit 2 and one line naming the file."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

import pytest

from exporter import state
from exporter.cli import main
from exporter.evaluate import HistoryPoint

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SECRET = "s3cr3tPa55"


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _refused(argv: list[str], file: str, expect: str) -> str:
    rc, out, err = _cli(argv)
    lines = err.splitlines()
    assert rc == 2, (argv, rc, err[-400:])
    assert len(lines) == 1 and file in lines[0] and expect in lines[0], (expect, err[:400])
    assert "Traceback" not in err and len(lines[0]) < 400
    return lines[0]


def _fifo(tmp_path: Path, name: str) -> str:
    p = tmp_path / name
    os.mkfifo(p)
    return str(p)


def _directory(tmp_path: Path, name: str) -> str:
    (tmp_path / name).mkdir()
    return str(tmp_path / name)


def _dev_zero(tmp_path: Path, name: str) -> str:
    p = tmp_path / name
    p.symlink_to("/dev/zero")  # with the file's own name: the extension does not decide how it is read
    return str(p)


# ---------------------------------------------------------------- the config and its plan files

MINIMAL = (EXAMPLES / "minimal.yaml").read_text()

CONFIGS: dict[str, tuple[Callable[[str], str], str, str]] = {
    # case: (edit of minimal.yaml, the key path named, the reason's words)
    "400-digit count": (lambda t: t.replace("gpus_per_instance: 2", "gpus_per_instance: " + "9" * 400),
                        "tiers.h100.plan.gpus_per_instance", "at most"),
    "5000-digit count": (lambda t: t.replace("instances: 2", "instances: " + "7" * 5000), "", "digits"),
    "1e400 cost": (lambda t: t.replace("gpu_hour_cost_usd: 4.10", "gpu_hour_cost_usd: 1e400"),
                   "tiers.h100.plan.gpu_hour_cost_usd", "number"),
    "huge peak": (lambda t: t.replace("peak_rps: 6", "peak_rps: 1.0e+300"), "tiers.h100.plan.peak_rps", "at most"),
    "NUL byte": (lambda t: t.replace("tiers:", "tiers:\x00", 1), "", "NUL"),
    "newline in a tier name": (lambda t: t.replace("  h100:", '  "h100\\nfleetwatch: forged line":'), "tiers",
                               "tier name"),
    "URL with a space": (lambda t: t.replace("127.0.0.1:8000", "127.0.0.1 :8000"), "tiers.h100.targets[0].vllm",
                         "space"),
    "port 99999": (lambda t: t.replace("127.0.0.1:8000", "127.0.0.1:99999"), "tiers.h100.targets[0].vllm", "port"),
    "userinfo and a bad port": (lambda t: t.replace("127.0.0.1:8000", f"admin:{SECRET}@127.0.0.1:8o00"),
                                "tiers.h100.targets[0].vllm", "port"),
    "unencoded @ in a password": (lambda t: t.replace("127.0.0.1:8000", f"admin:{SECRET}@x@127.0.0.1:99999"),
                                  "tiers.h100.targets[0].vllm", ""),
    "Alertmanager with userinfo and no host": (
        lambda t: t.replace("tiers:", f"alertmanagers: ['http://admin:{SECRET}@:9093']\ntiers:", 1),
        "alertmanagers[0]", "host"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_a_hostile_config_value_is_one_line_naming_the_key(case: str, tmp_path: Path) -> None:
    edit, key, reason = CONFIGS[case]
    f = tmp_path / "fleet.yaml"
    f.write_text(edit(MINIMAL))
    line = _refused(["validate-config", str(f)], str(f), reason)
    assert f"{f}: {key}" in line, line
    assert SECRET not in line and SECRET[-4:] not in line, "a password, or its tail, was echoed"


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_a_config_or_a_plan_file_that_is_not_a_regular_file_is_refused(kind: str, tmp_path: Path) -> None:
    """A FIFO would hang the start and /dev/zero stream without end: both refused before any read. A
    FIFO with a writer on the other end is refused all the same (nothing is read from it)."""
    makers: dict[str, Callable[[Path, str], str]] = {"fifo": _fifo, "dev-zero": _dev_zero, "directory": _directory}
    make = makers[kind]
    words = {"fifo": "is a FIFO", "dev-zero": "is a device", "directory": "directory"}[kind]
    config = make(tmp_path, "fleet.yaml")
    _refused(["validate-config", config], config, words)
    plan = make(tmp_path, "plan.yaml")
    f = tmp_path / "with-plan.yaml"
    text = "tiers:\n  h100:\n    plan: " + plan + "\n    targets: [{vllm: 'http://127.0.0.1:8000/metrics'}]\n"
    f.write_text(text)
    line = _refused(["validate-config", str(f)], plan, words)
    # said as the config's error: the config, the key that names the plan, and the path as written
    assert line.startswith(f"fleetwatch: {f}: tiers.h100.plan: plan file {plan}:"), line


def test_a_fifo_with_a_writer_is_still_not_read(tmp_path: Path) -> None:
    fifo = _fifo(tmp_path, "fleet.yaml")

    def write() -> None:
        with contextlib.suppress(OSError):  # the reader below closes at once: a broken pipe is expected
            Path(fifo).write_text(MINIMAL)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    _refused(["validate-config", fifo], fifo, "is a FIFO")
    with contextlib.suppress(OSError):  # let the writer go
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        os.close(fd)
    writer.join(timeout=5)


# ---------------------------------------------------------------- what `fleetwatch plan` reads

LLAMA = json.loads((EXAMPLES / "plan" / "llama-3-70b.config.json").read_text())


def _plan_inputs(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "in"
    d.mkdir(exist_ok=True)
    for f in ("llama-3-70b.config.json", "sweep.csv", "workload.yaml"):
        shutil.copy(EXAMPLES / "plan" / f, d / f)
    return {"model": d / "llama-3-70b.config.json", "sweep": d / "sweep.csv", "workload": d / "workload.yaml"}


def _plan(i: dict[str, Path], *extra: str) -> list[str]:
    return ["plan", "-w", str(i["workload"]), "-m", str(i["model"]), "-g", "H100", "--sweep", str(i["sweep"]),
            "--format", "json", *extra]


def test_the_untouched_inputs_make_a_plan(tmp_path: Path) -> None:
    """The baseline the cases below break: the same files, unbroken, plan."""
    rc, out, err = _cli(_plan(_plan_inputs(tmp_path)))
    assert rc == 0, err
    assert json.loads(out)["plan"]["instances"] >= 1


def _model(edit: Callable[[dict[str, object]], object]) -> Callable[[dict[str, Path]], str]:
    def write(i: dict[str, Path]) -> str:
        doc = dict(LLAMA)
        edit(doc)
        i["model"].write_text(json.dumps(doc))
        return str(i["model"])
    return write


def _text(key: str, text: str) -> Callable[[dict[str, Path]], str]:
    def write(i: dict[str, Path]) -> str:
        i[key].write_text(text)
        return str(i[key])
    return write


def _sweep_rows(*rows: str) -> Callable[[dict[str, Path]], str]:
    return _text("sweep", "concurrency,rps,ttft_p99,itl_p99\n" + "".join(r + "\n" for r in rows))


def _json_sweep(text: str) -> Callable[[dict[str, Path]], str]:
    def write(i: dict[str, Path]) -> str:
        i["sweep"] = i["sweep"].with_suffix(".json")
        i["sweep"].write_text(text)
        return str(i["sweep"])
    return write


PLANS: dict[str, tuple[Callable[[dict[str, Path]], str], str]] = {
    "no intermediate_size": (_model(lambda d: d.pop("intermediate_size")), "intermediate_size"),
    "a string intermediate_size": (_model(lambda d: d.update(intermediate_size="28672x")), "intermediate_size"),
    "a negative intermediate_size": (_model(lambda d: d.update(intermediate_size=-1)), "intermediate_size"),
    "a 400-digit layer count": (_text("model", json.dumps(LLAMA).replace('"num_hidden_layers": 80',
                                                                        '"num_hidden_layers": ' + "9" * 400)),
                                "digits"),
    "a huge layer count": (_model(lambda d: d.update(num_hidden_layers=10 ** 30)), "num_hidden_layers"),
    "an invalid num_key_value_heads": (_model(lambda d: d.update(num_key_value_heads="8")), "num_key_value_heads"),
    "a zero num_key_value_heads": (_model(lambda d: d.update(num_key_value_heads=0)), "num_key_value_heads"),
    "num_parameters of 1e300": (_model(lambda d: d.update(num_parameters=1e300)), "num_parameters"),
    "deep JSON config": (_text("model", "[" * 200_000 + "]" * 200_000), "nesting deeper than"),
    "NaN in config.json": (_text("model", json.dumps(LLAMA).replace('"hidden_size": 8192', '"hidden_size": NaN')),
                           "NaN"),
    "a list for a config": (_text("model", "[1, 2]"), "expected a JSON object"),
    "an all-zero sweep": (_sweep_rows("1,0,0,0", "2,0,0,0"), "usable capacity"),
    "an inf row": (_sweep_rows("1,1,0.1,0.01", "2,inf,0.2,0.02"), "row 3"),
    "a nan row": (_sweep_rows("1,1,0.1,0.01", "2,nan,0.2,0.02"), "row 3"),
    "a 400-digit concurrency": (_sweep_rows("1" * 400 + ",1,0.1,0.01"), "row 2"),
    "a sweep with no rows": (_sweep_rows(), "no rows"),
    "deep JSON sweep": (_json_sweep('{"a":' * 100_000 + "1" + "}" * 100_000), "nesting deeper than"),
    "a 400-digit JSON sweep figure": (_json_sweep('{"max_concurrency": 1, "request_throughput": 1' + "0" * 400
                                                  + ', "p99_ttft_ms": 1, "p99_itl_ms": 1}'), "digits"),
    "a string JSON sweep figure": (_json_sweep('{"max_concurrency": 1, "request_throughput": "fast", '
                                               '"p99_ttft_ms": 1, "p99_itl_ms": 1}'), "request_throughput"),
    "a workload with a 400-digit peak": (_text("workload", (EXAMPLES / "plan" / "workload.yaml").read_text()
                                               .replace("peak_rps: ", "peak_rps: " + "9" * 400 + "#")),
                                         "peak_rps"),
}


@pytest.mark.parametrize("case", sorted(PLANS))
def test_a_hostile_plan_input_is_one_line_naming_the_file(case: str, tmp_path: Path) -> None:
    write, reason = PLANS[case]
    i = _plan_inputs(tmp_path)
    file = write(i)
    _refused(_plan(i), file, reason)


@pytest.mark.parametrize("which", ["workload", "model", "sweep", "gpu-catalog", "from-report"])
@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_plan_refuses_a_fifo_or_a_device_for_every_input(which: str, kind: str, tmp_path: Path) -> None:
    i = _plan_inputs(tmp_path)
    bad = (_fifo if kind == "fifo" else _dev_zero)(tmp_path, f"{which}.json" if which != "sweep" else "sweep.csv")
    extra: list[str] = []
    if which in ("workload", "model", "sweep"):
        i[which] = Path(bad)
    else:
        extra = [f"--{which}", bad]
    _refused(_plan(i, *extra), bad, "is a FIFO" if kind == "fifo" else "is a device")


def test_a_hostile_gpu_catalogue_names_the_file_and_the_key(tmp_path: Path) -> None:
    i = _plan_inputs(tmp_path)
    cat = tmp_path / "gpus.yaml"
    for text, key in (("H100: {hbm_gb: abc}", "H100.hbm_gb"), ("H100: {hbm_gb: 1e400}", "H100.hbm_gb"),
                      ("H100: {hour_usd: -3}", "H100.hour_usd"), ("H100: {tflops: {fp16: 1e300}}", "H100.tflops.fp16"),
                      ("H100: {tflops: 7}", "H100.tflops"), ("H100: {interconnect: warp}", "H100.interconnect"),
                      ("H100: {gpus_per_node: 0}", "H100.gpus_per_node"),
                      ("X9: {hbm_gb: 80}", "X9"), ("H100: {colour: red}", "H100")):
        cat.write_text(text)
        line = _refused(_plan(i, "--gpu-catalog", str(cat)), str(cat), "")
        assert f"{cat}: {key}" in line, line


def test_a_large_sweep_is_read_in_linear_time(tmp_path: Path) -> None:
    """300,000 rows once ran for more than 10 minutes (a quadratic scan). Here the work is counted, not
    timed: the passing-run scan looks at each point at most once more than the points kept."""
    from exporter.planner import curve as curve_module
    from exporter.planner.files import load_sweep
    from exporter.model import Slo

    rows = "".join(f"{c},{c},{0.5 + c * 1e-6},{0.01 + c * 1e-8}\n" for c in range(1, 300_001))
    f = tmp_path / "sweep.csv"
    f.write_text("concurrency,rps,ttft_p99,itl_p99\n" + rows)
    calls = 0
    real = curve_module.SweepPoint.__getattribute__

    class Counting(curve_module.SweepPoint):
        def __getattribute__(self, name: str) -> object:
            nonlocal calls
            if name == "ttft_p99":
                calls += 1
            return real(self, name)

    points = [Counting(*(getattr(p, f) for f in ("concurrency", "rps", "ttft_p99", "itl_p99", "mean_latency",
                                                  "gpu_utilization"))) for p in load_sweep(str(f))]
    assert len(points) == 300_000
    result = curve_module.usable_rps_at_slo(points, Slo(0.6, 0.05))
    assert 99_000 < result.usable_rps_per_instance < 100_001
    assert calls < 4 * len(points), f"{calls} reads of TTFT for {len(points)} points: not linear"


# ---------------------------------------------------------------- the state file

def _history() -> dict[str, list[HistoryPoint]]:
    return {"h100": [HistoryPoint(1_800_000_000.0, 5.0, 3)]}


@pytest.mark.parametrize("case", ["deep", "dev-zero", "fifo", "rps 1e308", "future", "huge count", "400 digits",
                                  "directory"])
def test_a_hostile_state_file_is_moved_aside_and_the_start_goes_on(case: str, tmp_path: Path) -> None:
    now = 1_800_000_000.0
    path = tmp_path / state.FILE_NAME
    good = json.loads(state.encode(_history(), now))
    if case == "deep":
        path.write_text("[" * 200_000)
    elif case == "dev-zero":
        path.symlink_to("/dev/zero")
    elif case == "fifo":
        os.mkfifo(path)
    elif case == "directory":
        path.mkdir()
    else:
        point = {"rps 1e308": [now - 60, 1e308, 3], "future": [now + 86_400, 5.0, 3],
                 "huge count": [now - 60, 5.0, 10 ** 12], "400 digits": None}[case]
        good["tiers"]["h100"].append(point)
        text = json.dumps(good)
        if case == "400 digits":
            text = text.replace("null", "1" + "0" * 400)
        path.write_text(text)
    loaded = state.load(str(tmp_path), ["h100"], now=now)
    assert loaded.history == {"h100": []} and loaded.error is not None, loaded
    assert loaded.moved_to is not None and not os.path.lexists(path), "a corrupt file must not be read again"
    assert "\n" not in str(loaded.error)
    assert state.load(str(tmp_path), ["h100"], now=now).error is None  # the next start is clean


def test_a_good_state_file_round_trips_through_load(tmp_path: Path) -> None:
    """The baseline: the checks above refuse what is wrong, not everything."""
    state.save(str(tmp_path), _history(), 1_800_000_000.0)
    assert state.load(str(tmp_path), ["h100"], now=1_800_000_000.0).history == _history()


def test_a_second_daemon_on_the_same_state_dir_exits_2_naming_the_holder(tmp_path: Path) -> None:
    """Two writers would overwrite each other's history (a restarted daemon recommended 2, not 8)."""
    held = state.lock(str(tmp_path), "fleetwatch pid 4242 on host-a")
    try:
        with pytest.raises(state.StateLocked, match="pid 4242 on host-a"):
            state.lock(str(tmp_path), "fleetwatch pid 1 on host-b")
        cfg = tmp_path / "fleet.yaml"
        cfg.write_text(MINIMAL.replace("tiers:", f"listen: 127.0.0.1:0\nstate_dir: {tmp_path}\ntiers:", 1))
        r = subprocess.run([sys.executable, "-m", "exporter", "serve", "--config", str(cfg)], capture_output=True,
                           text=True, cwd=ROOT, timeout=60)
        assert r.returncode == 2, r.stderr[-500:]
        lines = r.stderr.strip().splitlines()
        assert lines[-1].startswith("fleetwatch: ") and "pid 4242 on host-a" in lines[-1], r.stderr
        assert "Traceback" not in r.stderr
    finally:
        held.release()
    again = state.lock(str(tmp_path), "fleetwatch pid 5 on host-c")  # released: the next one takes it
    again.release()
