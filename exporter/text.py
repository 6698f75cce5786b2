"""Numbers and counts as an operator reads them: no scientific notation, thousands separators, plurals.

Everything a person reads (reports, findings, reasons, logs, the live view) formats numbers here, so
that "1.82e+03 RPS", "1 tiers" and "{'15m': 4}" cannot appear. Pure.
"""
from __future__ import annotations

import math
from typing import Mapping

MAX_DECIMALS = 12


def num(v: float, digits: int = 3) -> str:
    """``v`` to ``digits`` significant digits, never in scientific notation: 1,820 · 24 · 4.1 · 0.0123.
    Whole numbers of ``digits`` digits or more keep every digit, with thousands separators."""
    if not math.isfinite(v):
        return "infinite" if math.isinf(v) else "not a number"
    if v == 0:
        return "0"
    decimals = max(0, min(MAX_DECIMALS, digits - 1 - math.floor(math.log10(abs(v)))))
    rounded = round(v, decimals)
    if decimals == 0 or abs(rounded) >= 10 ** digits:
        return f"{round(v):,}"
    text = f"{rounded:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def plural(n: float, word: str, many: str | None = None) -> str:
    """``n`` and ``word``, in the plural unless ``n`` is one: "1 tier", "2 tiers", "1,000 targets"."""
    return f"{num(n)} {word if n == 1 else (many or word + 's')}"


def seconds(v: float) -> str:
    """A duration: 250 ms · 1.2 s · 95 s · 12 min · 3.5 h."""
    if v < 1:
        return f"{num(v * 1000)} ms"
    if v < 120:
        return f"{num(v)} s"
    if v < 7200:
        return f"{num(v / 60)} min"
    return f"{num(v / 3600)} h"


def percent(v: float) -> str:
    """A ratio on the 0-1 scale as a percentage: 0.624 -> 62.4%."""
    return f"{num(v * 100)}%"


def pairs(m: Mapping[str, object]) -> str:
    """A mapping as words: "15m: 4, 1h: 4", never a Python repr."""
    return ", ".join(f"{k}: {num(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v}"
                     for k, v in m.items())
