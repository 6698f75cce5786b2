from __future__ import annotations

from typing import Callable

import re
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import ConfigError, load_config, parse_duration

ROOT = Path(__file__).resolve().parents[1]
GOOD = """
tiers:
  h100:
    plan:
      gpus_per_instance: 2
      instances: 4
      gpu_hour_cost_usd: 4.10
      peak_rps: 24
      safety_factor: 0.2
      slo: {ttft_p99: 2s, itl_p99: 50ms}
      benchmark: {usable_rps_per_instance: 8, ttft_p99: 1.2s, itl_p99: 35ms, gpu_utilization: 0.78}
    targets:
      - {vllm: "http://10.0.0.5:8000/metrics"}
"""


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "fleet.yaml"
    p.write_text(text)
    return str(p)


def test_durations() -> None:
    assert parse_duration("15s") == 15 and parse_duration("5m") == 300 and parse_duration("250ms") == 0.25
    assert parse_duration("1h30m") == 5400 and parse_duration("1.2s") == 1.2
    for bad in ("fast", "15", "", "1.2 s", "-1s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_smallest_config_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.interval == 15 and cfg.window == 300 and cfg.tls_verify is True
    t = cfg.tiers["h100"]
    assert t.plan.slo.itl_p99 == 0.05 and t.plan.benchmark.curve == () and t.plan.scale_down_stabilization == 1800
    assert t.targets[0].name == "10.0.0.5:8000" and t.targets[0].engine == "vllm"


@pytest.mark.parametrize("mutate, path, reason", [
    (lambda s: s.replace("ttft_p99: 1.2s", "ttft_p99: fast"), "tiers.h100.plan.benchmark.ttft_p99",
     "expected a duration like 1.2s, got 'fast'"),
    (lambda s: s.replace("peak_rps: 24", "peak_rps: 24\n      peek_rps: 3"), "tiers.h100.plan.peek_rps", "unknown key"),
    (lambda s: s.replace("      gpu_hour_cost_usd: 4.10\n", ""), "tiers.h100.plan.gpu_hour_cost_usd", "required key is missing"),
    (lambda s: s.replace("instances: 4", "instances: four"), "tiers.h100.plan.instances", "expected a whole number"),
    (lambda s: s.replace('{vllm: "http://10.0.0.5:8000/metrics"}', "{vllm: nope}"), "tiers.h100.targets[0].vllm",
     "expected an http:// or https:// URL"),
    (lambda s: "interval: 5s\nscrape_timeout: 10s\n" + s, "scrape_timeout", "must be at most 80% of interval"),
    (lambda s: s + "    bands:\n      no_such_row: {warning_above: 1}\n", "tiers.h100.bands.no_such_row", "unknown key"),
])
def test_errors_name_file_key_path_and_reason(tmp_path: Path, mutate: Callable[[str], str], path: str,
                                              reason: str) -> None:
    f = write(tmp_path, mutate(GOOD))
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value).startswith(f"{f}: {path}: ") and reason in str(e.value)
    assert "\n" not in str(e.value)


def test_validate_config_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    f = write(tmp_path, GOOD.replace("ttft_p99: 1.2s", "ttft_p99: fast"))
    r = subprocess.run([sys.executable, "-m", "exporter", "validate-config", f], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"fleetwatch: {f}: tiers.h100.plan.benchmark.ttft_p99: expected a duration like 1.2s, got 'fast'"]
    assert "Traceback" not in r.stderr


def test_every_example_is_valid() -> None:
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert examples
    for e in examples:
        load_config(str(e))


def test_a_missing_plan_file_is_named_with_its_key_path(tmp_path: Path) -> None:
    f = write(tmp_path, "tiers:\n  a:\n    plan: nowhere.yaml\n    targets: [{vllm: 'http://x:1/metrics'}]\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value) == f"{f}: tiers.a.plan: plan file {tmp_path / 'nowhere.yaml'} not found"


def test_plan_file_errors_name_the_plan_file(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("gpus_per_instance: 0\n")
    f = write(tmp_path, "tiers:\n  a:\n    plan: p.yaml\n    targets: [{vllm: 'http://x:1/metrics'}]\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value).startswith(str(tmp_path / "p.yaml") + ": ")


# ---------------------------------------------------------------- hostile files (hardening issue, defect 7)

def _minimal() -> str:
    return (ROOT / "examples" / "minimal.yaml").read_text()


def _alias_bomb(levels: int) -> str:
    text = 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels + 1):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n"
    return text + _minimal().replace("tiers:", f"interval: *a{levels}\ntiers:", 1)


def _write_bytes(tmp_path: Path, name: str, data: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


HOSTILE: dict[str, tuple[Callable[[], bytes], str]] = {
    "non-utf8": (lambda: b"\xff\xfe\x00t\x00i\x00e\x00r\x00s\x00:\x00", "not UTF-8"),
    "binary": (lambda: bytes(range(256)) * 64, "not UTF-8"),
    "nested-5000": (lambda: ("tiers: " + "[" * 5000 + "]" * 5000 + "\n").encode(), "nesting deeper than"),
    "nested-maps": (lambda: "".join("  " * i + f"k{i}:\n" for i in range(200)).encode(), "nesting deeper than"),
    "alias-bomb-7": (lambda: _alias_bomb(7).encode(), "expands to more than"),
    "alias-bomb-9": (lambda: _alias_bomb(9).encode(), "expands to more than"),
    "port-99999": (lambda: _minimal().replace("tiers:", "listen: 0.0.0.0:99999\ntiers:", 1).encode(), "port must be"),
    "absurd-interval": (lambda: _minimal().replace("tiers:", "interval: " + "9" * 300 + "y\ntiers:", 1).encode(),
                        "interval"),
    "huge-interval": (lambda: _minimal().replace("tiers:", "interval: 99999y\ntiers:", 1).encode(), "at most"),
    "50MB": (lambda: (_minimal() + ("# " + "x" * 1022 + "\n") * (50 * 1024)).encode(), "byte limit"),
    "duplicate-key": (lambda: _minimal().replace("tiers:", "interval: 15s\ninterval: 30s\ntiers:", 1).encode(),
                      "duplicate key 'interval'"),
    "timeout-overruns-interval": (lambda: _minimal().replace("tiers:", "interval: 2s\nscrape_timeout: 1.9s\ntiers:", 1)
                                  .encode(), "scrape_timeout: must be at most 80% of interval"),
}

# peak resident memory from /proc (VmHWM, kB): getrusage's maxrss would carry over pytest's own
# peak through fork and exec
_MEASURE = """
import sys
from exporter.cli import main
rc = main(sys.argv[2:])
hwm = next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
with open(sys.argv[1], "w") as fh:
    fh.write(hwm)
sys.exit(rc)
"""


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_config_exits_2_with_one_short_line(case: str, tmp_path: Path) -> None:
    """Refused at its bound (the message names it: bytes, depth, nodes), in bounded memory. How long a
    refusal takes against the interpreter's own start is measured by bench/bench_lifecycle.py."""
    make, expect = HOSTILE[case]
    f = _write_bytes(tmp_path, "fleet.yaml", make())
    rss = tmp_path / "rss"
    r = subprocess.run([sys.executable, "-c", _MEASURE, str(rss), "validate-config", f], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    lines = r.stderr.splitlines()
    assert r.returncode == 2, (case, r.returncode, r.stderr[-500:])
    assert len(lines) == 1 and lines[0].startswith(f"fleetwatch: {f}: ") and expect in lines[0], (case, r.stderr[:500])
    assert len(lines[0]) < 300, f"{case}: the message echoes too much ({len(lines[0])} characters)"
    assert r.stdout == ""
    assert int(rss.read_text()) < 100 * 1024, f"{case}: {int(rss.read_text()) // 1024} MB"


def test_serve_refuses_a_bad_listen_flag_without_a_traceback(tmp_path: Path) -> None:
    f = write(tmp_path, GOOD)
    r = subprocess.run([sys.executable, "-m", "exporter", "serve", "--config", f, "--listen", "0.0.0.0:99999"],
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["fleetwatch: --listen: port must be 0-65535, got 99999"]


def test_validate_config_warns_when_the_plan_contradicts_its_own_figures(tmp_path: Path) -> None:
    """Valid (exit 0), but a plan whose peak, usable RPS and safety factor need more instances than it decided
    gets a warning naming the key, with the arithmetic; every shipped example holds its own arithmetic."""
    from exporter.sizing import recommended_instances

    f = write(tmp_path, GOOD)
    plan = load_config(f).tiers["h100"].plan
    needed = recommended_instances(plan.peak_rps, plan.benchmark.usable_rps_per_instance, plan.safety_factor)
    short = write(tmp_path, GOOD.replace(f"instances: {plan.instances}", f"instances: {needed - 1}", 1))
    r = subprocess.run([sys.executable, "-m", "exporter", "validate-config", short], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith(f"{short}: ok")
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"fleetwatch: warning: {short}: tiers.h100.plan.instances: {needed - 1} is below the "
                           f"{needed} the plan's own figures need"), line
    for example in sorted((ROOT / "examples").glob("*.yaml")) + [ROOT / "deploy/kubernetes/base/fleet.yaml"]:
        r = subprocess.run([sys.executable, "-m", "exporter", "validate-config", str(example)], capture_output=True,
                           text=True)
        assert r.returncode == 0 and r.stderr == "", (example, r.stderr)


@pytest.mark.parametrize("labels, path, reason", [
    ("{severity: page}", "alert_labels.severity", "fleetwatch's alerts set themselves"),
    ("{'2bad': x}", "alert_labels.2bad", "a label name is letters"),
    ("{team: [a, b]}", "alert_labels.team", "expected a string"),
    ("[namespace]", "alert_labels", "expected a mapping"),
])
def test_alert_labels_are_label_names_with_string_values(tmp_path: Path, labels: str, path: str, reason: str) -> None:
    f = write(tmp_path, f"alert_labels: {labels}\n" + GOOD)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value).startswith(f"{f}: {path}: ") and reason in str(e.value), str(e.value)
    ok = load_config(write(tmp_path, "alert_labels: {namespace: llm, team: 7}\n" + GOOD))
    assert dict(ok.alert_labels) == {"namespace": "llm", "team": "7"}


def test_alerting_block_is_read_and_checked(tmp_path: Path) -> None:
    """alerting.for per family and severity, over the defaults; a key a family does not have, or a page
    that would wait longer than its warning, is a config error naming the key."""
    from exporter.model import ALERT_FOR

    base = (ROOT / "examples" / "fleet.yaml").read_text().replace("plans/", str(ROOT / "examples" / "plans") + "/")
    good = tmp_path / "good.yaml"
    good.write_text(base)
    cfg = load_config(str(good))
    assert cfg.alerting.for_seconds("latency", "critical") == 120.0
    assert cfg.alerting.for_seconds("capacity", "warning") == ALERT_FOR["capacity"]["warning"]
    for block, where in (("alerting: {for: {latency: {critcal: 2m}}}", "alerting.for.latency.critcal"),
                         ("alerting: {for: {resize: {warning: 5m}}}", "alerting.for.resize.warning"),
                         ("alerting: {for: {latency: {critical: 20m, warning: 5m}}}", "alerting.for.latency"),
                         ("alerting: {runbook: x}", "alerting.runbook")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(re.sub(r"(?ms)^alerting:.*?(?=^\S)", "", base) + block + "\n")
        with pytest.raises(ConfigError) as e:
            load_config(str(bad))
        assert e.value.path == where, (where, str(e.value))


def test_readme_states_the_alerting_for_defaults_the_code_has() -> None:
    """README's config table gives each family's default for:, defined once in model.ALERT_FOR."""
    from exporter.config import format_duration
    from exporter.model import ALERT_FOR

    row = next(ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("| `alerting.for."))
    defaults = row.split("|")[2]
    for family, by in ALERT_FOR.items():
        if set(by) == {"critical", "warning"}:
            said = f"{family} {format_duration(by['critical'])} / {format_duration(by['warning'])}"
        else:
            ((severity, seconds),) = by.items()
            said = f"{format_duration(seconds)} {severity}"
        assert said in defaults, (family, said, defaults)
