"""What an operator reads speaks the operator's words and formats numbers for people.

Everything a user reads is gathered from the real producers: every command's --help, the reports of
demo scenarios that raise every kind of row, check, finding and verdict (table, JSON and the live
screen), the log lines of those runs and of scrapes that fail, fleetwatch's Alertmanager alerts, the
generated alert rules and runbook, the dashboards, and `fleetwatch plan` in its three formats. None may
cite the sizing chapter's section or step numbers, print a Python repr or a private class name, write
a number in scientific notation, or count one thing in the plural.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from exporter.alertmanager import alerts_from_report, identities
from exporter.check import format_json, format_table
from exporter.cli import build_parser, main
from exporter.config import load_config
from exporter.daemon import Pipeline
from exporter.demo.run import SimClock, reports, start_fleet
from exporter.model import Report
from exporter.render.dashboards import build as dashboards
from exporter.render.rules import build as rules, runbook
from exporter.scrape import Scraper

from fakes import FakeTarget, refused_url, write_config

ROOT = Path(__file__).resolve().parents[1]

# the chapter's numbering: "Step 13", "Steps 7-11", "9.3", "(9.2)", "section 9.1", and "(load)"
# a measured 9.5 (ms, s, %, x, ...) is a quantity, not a section: not after a digit or a dot, nor before a unit
BOOK = re.compile(r"\bSteps? \d|(?<![\d.])\b9\.[1-5]\b(?!\d|\s*(ms|s|min|h|%|x|GiB|MiB|RPS|tokens)\b)"
                  r"|\bsection 9\b|\(load\)")
SCIENTIFIC = re.compile(r"\b\d+(\.\d+)?e[+-]?\d+\b")
REPR = re.compile(r"\{'|\['|\('|object at 0x|\b_[A-Z]\w+|<class ")
ONE_MANY = re.compile(r"(?<![\d.,])1 (tiers|targets|instances|scrapes|GPUs|hours|cycles|requests|tries|days|seconds|"
                      r"minutes|queries|alerts|findings|rows)\b")
SCENARIOS = ("undersized", "mixed-tier", "runaway", "ttft-regression", "utilization-trap", "dead-instance",
             "length-drift", "kv-pressure")


def strings(doc: Any) -> Iterator[str]:
    """Every string value inside a JSON-like document."""
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for v in doc.values():
            yield from strings(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from strings(v)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def logged() -> Iterator[list[str]]:
    handler = Lines()
    logger = logging.getLogger("exporter")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def screen_text(report: Report) -> str:
    from rich.console import Console

    from exporter.live import Trend, screen

    trend = Trend()
    trend.add(report)
    console = Console(file=io.StringIO(), width=100, record=True)
    console.print(screen(report, trend, ["h100 fleet_utilization_ratio ok → warning"], "fleetwatch demo"))
    return console.export_text()


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with logged() as log_lines:
        for scenario in SCENARIOS:
            demo = start_fleet(scenario)
            try:
                runs = list(reports(demo, SimClock(demo.fleet), 60.0))
            finally:
                demo.close()
            for t, report in (runs[0], runs[-1]):
                key = f"{scenario} at {t:g}s"
                out[f"report table, {key}"] = [format_table(report)]
                out[f"report json, {key}"] = list(strings(json.loads(format_json(report))))
                out[f"live screen, {key}"] = [screen_text(report)]
                out[f"alerts, {key}"] = [v for a in alerts_from_report(report, identities(demo.config))
                                         for v in a.annotations.values()]
        # failing scrapes and a target backing off
        bad = FakeTarget(mode="http-404")
        try:
            cfg = load_config(write_config(str(tmp_path_factory.mktemp("words") / "f.yaml"), {"h100": [
                {"vllm": refused_url(), "name": "gone"}, {"vllm": bad.url, "name": "lost"}]},
                extra="interval: 1s\nscrape_timeout: 0.5s"))
            scraper = Scraper(cfg)
            pipe = Pipeline(cfg, scraper)
            try:
                for _ in range(5):
                    report = pipe.cycle()
            finally:
                scraper.close()
            out["report table, targets down"] = [format_table(report)]
            out["report json, targets down"] = list(strings(json.loads(format_json(report))))
        finally:
            bad.close()
    out["log lines"] = log_lines
    return out


def _help() -> dict[str, str]:
    parser = build_parser(["demo"])
    out = {"fleetwatch --help": parser.format_help()}
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():  # type: ignore[union-attr]
        out[f"fleetwatch {name} --help"] = p.format_help()
    return out


def _plan(fmt: str) -> str:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["plan", "--workload", str(ROOT / "examples/plan/workload.yaml"), "--model",
                   str(ROOT / "examples/plan/llama-3-70b.config.json"), "--gpu", "H100", "--sweep",
                   str(ROOT / "examples/plan/sweep.csv"), "--format", fmt])
    assert rc == 0
    return stdout.getvalue()


def generated() -> dict[str, list[str]]:
    cfg = load_config(str(ROOT / "examples" / "fleet.yaml"))
    import yaml

    built = rules(cfg)
    rule_doc = yaml.safe_load(built["fleetwatch.rules.yml"])
    annotations = [v for g in rule_doc["groups"] for r in g["rules"] if "alert" in r
                   for k, v in r["annotations"].items() if k != "runbook_url"]
    boards = [s for text in dashboards().values() for s in strings(json.loads(text))
              if not s.startswith(("tier:", "fleetwatch_")) and "(" not in s[:40]]
    out = {"alert rules": annotations, "runbook": [runbook(cfg)], "dashboards": boards}
    for fmt in ("table", "json", "yaml"):
        out[f"plan --format {fmt}"] = [_plan(fmt)]
    out.update({k: [v] for k, v in _help().items()})
    return out


def offences(pattern: re.Pattern[str], corpus: dict[str, list[str]]) -> list[str]:
    found = []
    for where, items in corpus.items():
        for text in items:
            for m in pattern.finditer(text):
                found.append(f"{where}: ...{text[max(0, m.start() - 50):m.end() + 30]!s}...")
    return found


@pytest.mark.parametrize("name, pattern", [("a section or step number", BOOK), ("scientific notation", SCIENTIFIC),
                                           ("a Python repr or private name", REPR), ("a wrong plural", ONE_MANY)])
def test_nothing_a_user_reads_has(name: str, pattern: re.Pattern[str], texts: dict[str, list[str]]) -> None:
    corpus = {**texts, **generated()}
    assert sum(len(v) for v in corpus.values()) > 500  # the gathering is not vacuous
    found = offences(pattern, corpus)
    assert not found, f"{len(found)} places with {name}:\n" + "\n".join(found[:40])


def test_the_patterns_catch_what_they_must() -> None:
    assert BOOK.search("return to Step 1") and BOOK.search("guardrails (9.4)") and BOOK.search("(load)")
    assert not BOOK.search("the window holds 9.5 ms of 5 min") and not BOOK.search("TTFT 9.2 s") and BOOK.search("see 9.3.")
    assert not BOOK.search("version 9.10") and not BOOK.search("49.3 ms")
    assert SCIENTIFIC.search("1.82e+03 RPS") and not SCIENTIFIC.search("h100e2 3e")
    assert REPR.search("{'15m': 4}") and REPR.search("_DeadlineHTTPConnection(host=")
    assert ONE_MANY.search("1 tiers") and not ONE_MANY.search("21 tiers") and not ONE_MANY.search("0.1 seconds")


def test_rules_help_names_its_metavar() -> None:
    assert "--for DURATION" in _help()["fleetwatch rules --help"]
