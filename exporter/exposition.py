"""Prometheus text exposition parser (the hot path).

Selective: lines whose metric name does not start with one of ``prefixes`` are skipped before
any label parsing, so a 300 kB vLLM scrape costs only the families we read. Like Prometheus,
one malformed sample line rejects the whole scrape: half a scrape would silently skew ratios.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, NamedTuple


class ExpositionError(ValueError):
    """The body is not valid Prometheus text format."""


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,)?')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_ESC_RE = re.compile(r'\\[\\"n]')


def _unescape(s: str) -> str:
    return _ESC_RE.sub(lambda m: _ESCAPES[m.group(0)], s) if "\\" in s else s


def parse_value(text: str) -> float:
    t = text.strip()
    low = t.lower()
    if low in ("nan",):
        return math.nan
    if low in ("+inf", "inf"):
        return math.inf
    if low == "-inf":
        return -math.inf
    return float(t)


def parse(text: str, prefixes: Iterable[str] | None = None) -> list[Sample]:
    """Parse exposition text into samples, keeping only names starting with one of ``prefixes``."""
    pref = tuple(prefixes) if prefixes is not None else None
    out: list[Sample] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        if pref is not None and not line.startswith(pref):
            continue
        m = _NAME_RE.match(line)
        if not m:
            raise ExpositionError(f"line {lineno}: expected a metric name, got {line[:60]!r}")
        name = m.group(0)
        pos = m.end()
        labels: dict[str, str] = {}
        if pos < len(line) and line[pos] == "{":
            pos += 1
            while True:
                while pos < len(line) and line[pos] == " ":
                    pos += 1
                if pos < len(line) and line[pos] == "}":
                    pos += 1
                    break
                lm = _LABEL_RE.match(line, pos)
                if not lm:
                    raise ExpositionError(f"line {lineno}: malformed labels in {line[:80]!r}")
                labels[lm.group(1)] = _unescape(lm.group(2))
                pos = lm.end()
                if lm.group(3) is None:
                    while pos < len(line) and line[pos] == " ":
                        pos += 1
                    if pos >= len(line) or line[pos] != "}":
                        raise ExpositionError(f"line {lineno}: unterminated label set in {line[:80]!r}")
                    pos += 1
                    break
        rest = line[pos:].split()
        if not rest or len(rest) > 2:
            raise ExpositionError(f"line {lineno}: expected 'name value [timestamp]', got {line[:80]!r}")
        try:
            value = parse_value(rest[0])
            if len(rest) == 2:
                int(rest[1])
        except ValueError:
            raise ExpositionError(f"line {lineno}: bad number in {line[:80]!r}") from None
        out.append(Sample(name, labels, value))
    return out
