"""The engines fleetwatch reads. Each is one module (``exporter/sources/<name>.py``: its metric
names by version, its parser, its PromQL particulars, its default port); registering one is one
line here (``ENGINES``). Everything else (config keys, the sidecar, the CLI, the PromQL of every
row) reads this.

Each engine's names are read twice: its parser stores the first name present in a scrape under
the canonical input (exporter/inputs.py), and the renderings below turn every engine's names into
PromQL as ``rate(new[w]) or rate(old[w]) or ...``. ``or`` keeps the left side's series where both
carry the same labels, so in both readings the newest name wins and an old alias is never added
to its replacement.
"""
from __future__ import annotations

from .sources import Engine, sglang, trtllm, vllm

ENGINES: tuple[Engine, ...] = (vllm.ENGINE, sglang.ENGINE, trtllm.ENGINE)


def engine(name: str) -> Engine:
    """The registered engine ``name``; KeyError if none."""
    for e in ENGINES:
        if e.name == name:
            return e
    raise KeyError(name)


def engine_names() -> tuple[str, ...]:
    return tuple(e.name for e in ENGINES)


def in_words(suffix: str = "", last: str = " or ") -> str:
    """The engines' config keys as a user reads them: "vllm or sglang" (``suffix`` after each)."""
    names = [n + suffix for n in engine_names()]
    return ", ".join(names[:-1]) + last + names[-1] if len(names) > 1 else names[0]


def names(canonical: str, engine_name: str) -> tuple[str, ...]:
    """The raw names of ``canonical`` on ``engine_name``, newest first."""
    return next((e.names.get(canonical, ()) for e in ENGINES if e.name == engine_name), ())


def all_names(canonical: str) -> tuple[str, ...]:
    """Every registered engine's names of ``canonical``, engine by engine, newest first."""
    return tuple(n for e in ENGINES for n in e.names.get(canonical, ()))


# ---------------------------------------------------------------- PromQL renderings
# ``{w}`` stays a placeholder for the window, filled in by the rule generator.


def _either(template: str, canonical: str, suffix: str = "", selector: str = "") -> str:
    parts = [template.replace("{m}", n + suffix + selector) for n in all_names(canonical)]
    return parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")"


def rate(canonical: str, selector: str = "") -> str:
    return _either("rate({m}[{w}])", canonical, "", selector)


def increase(canonical: str) -> str:
    return _either("increase({m}[{w}])", canonical)


def delta(canonical: str) -> str:
    return _either("delta({m}[{w}])", canonical)


def avg_over_time(canonical: str) -> str:
    return _either("avg_over_time({m}[{w}])", canonical)


def bucket_rate(canonical: str, selector: str = "") -> str:
    """``selector`` (``{instance=~"..."}``) narrows every name, for per-instance panels."""
    return _either("rate({m}[{w}])", canonical, "_bucket", selector)


def histogram_rates(canonical: str, selector: str = "") -> tuple[str, str]:
    """(rate of a histogram's _sum, rate of its _count): their ratio is the mean observation."""
    return (_either("rate({m}[{w}])", canonical, "_sum", selector),
            _either("rate({m}[{w}])", canonical, "_count", selector))


def count_increase(canonical: str, selector: str = "") -> str:
    """Observations of a histogram in the window: the increase of its ``_count``."""
    return _either("increase({m}[{w}])", canonical, "_count", selector)


def instant(canonical: str, selector: str = "") -> str:
    parts = [n + selector for n in all_names(canonical)]
    return parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")"


def valid_gauge(canonical: str) -> str:
    """A rate gauge over the window where each engine's reading means something (each engine says
    when, in its ``gauge_promql``), for engines that have the gauge but not the counters."""
    return " or ".join(e.gauge_promql[canonical] for e in ENGINES if canonical in e.gauge_promql)
