"""The live terminal view of `demo`, `serve --watch` and `check`: one screen, redrawn in place.

Per tier one block: instances and the resize verdict with its arithmetic, the rows that are not
ok first (coloured by status), the key rows always, sparklines of TTFT P99 and RPS over the run,
and findings with the instance to blame. A footer names what changed since the last interval.
Building the screen is pure (``screen``); ``LiveView`` only hands it to rich's Live.

rich (pinned): its Live redraws in place, its tables fit and truncate to the terminal's width,
and its Console honours NO_COLOR and TERM=dumb, which this would otherwise reimplement.
"""
from __future__ import annotations

import os
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Sequence

from .model import Report, Status, TierReport
from .secrets import redact
from .text import num

KEY_ROWS = ("ttft_p99_seconds", "itl_p99_seconds", "kv_cache_eviction_ratio", "fleet_utilization_ratio",
            "tokens_per_gpu_hour", "cost_per_million_tokens_usd")
SPARK = "▁▂▃▄▅▆▇█"
SPARK_POINTS = 24
MAX_EXTRA_ROWS = 5  # rows that are not ok, beyond the key rows, shown per tier (the rest counted)
COLOURS = {"ok": "green", "warning": "yellow", "critical": "bold red", "unknown": "dim"}


def sparkline(values: Sequence[float | None], width: int = SPARK_POINTS) -> str:
    """The last ``width`` values as block characters, scaled to their own range; gaps are blanks."""
    vals = list(values)[-width:]
    known = [v for v in vals if v is not None]
    if not known:
        return ""
    lo, hi = min(known), max(known)
    span = hi - lo
    return "".join(" " if v is None else SPARK[0 if span <= 0 else min(len(SPARK) - 1, int((v - lo) / span * len(SPARK)))]
                   for v in vals)


def _num(v: float | None, unit: str) -> str:
    if v is None:
        return "–"
    if unit == "s":
        return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "ratio":
        return f"{v * 100:.1f}%"
    if abs(v) >= 1e5:
        return f"{v:,.0f}"
    return f"{num(v)}"


@dataclass
class Trend:
    """Per tier, the run's TTFT P99 and RPS, for the sparklines."""

    ttft: dict[str, deque[float | None]] = field(default_factory=dict)
    rps: dict[str, deque[float | None]] = field(default_factory=dict)

    def add(self, report: Report) -> None:
        for name, t in report.tiers.items():
            self.ttft.setdefault(name, deque(maxlen=SPARK_POINTS)).append(t.metrics["ttft_p99_seconds"].value)
            self.rps.setdefault(name, deque(maxlen=SPARK_POINTS)).append(t.metrics["requests_per_second"].value)


def changes(before: Report | None, now: Report) -> list[str]:
    """What moved since the last interval: statuses, findings, recommendations."""
    if before is None:
        return []
    out: list[str] = []
    for name, t in now.tiers.items():
        b = before.tiers.get(name)
        if b is None:
            continue
        for key, m in t.metrics.items():
            old = b.metrics.get(key)
            if old is not None and old.status is not m.status:
                out.append(f"{name} {key} {old.status.value} → {m.status.value}")
        seen = {(f.kind, f.instance) for f in b.findings}
        out += [f"{name} new finding {f.kind}" + (f" ({f.instance})" if f.instance else "")
                for f in t.findings if (f.kind, f.instance) not in seen]
        gone = {(f.kind, f.instance) for f in t.findings}
        out += [f"{name} {k} cleared" for k, i in seen - gone]
        if (b.resize.action, b.resize.recommended_instances) != (t.resize.action, t.resize.recommended_instances):
            out.append(f"{name} resize {b.resize.action} {b.resize.recommended_instances} → "
                       f"{t.resize.action} {t.resize.recommended_instances}")
    return out


def _tier(name: str, t: TierReport, trend: Trend) -> list[Any]:
    from rich.table import Table
    from rich.text import Text

    r = t.resize
    head = Text()
    head.append(f"{name}  ", style="bold")
    head.append(f"{t.instances_up}/{t.instances_total} up  ")
    verdict = {"scale_up": "bold red", "recharacterize": "bold yellow", "scale_down": "cyan"}.get(r.action, "green")
    head.append((f"{r.action} → {r.recommended_instances}" if r.recommended_instances is not None else r.action)
                + (" (provisional)" if r.provisional else ""), style=verdict)
    head.append(f"   TTFT P99 {sparkline(trend.ttft.get(name, ()))}  RPS {sparkline(trend.rps.get(name, ()))}")
    why = Text(f"  {redact(r.reason)}", style="dim", overflow="fold")  # the arithmetic wraps: cut, it would lose its numbers
    table = Table(box=None, show_header=False, padding=(0, 1), expand=True, pad_edge=False)
    table.add_column("row", no_wrap=True, width=30)
    table.add_column("value", justify="right", no_wrap=True, width=11)
    table.add_column("status", no_wrap=True, width=8)
    table.add_column("note", overflow="ellipsis", no_wrap=True, ratio=1)  # the rest of the width, cut with …
    bad = [k for k, m in t.metrics.items() if m.status in (Status.WARNING, Status.CRITICAL) and k not in KEY_ROWS]
    hidden = max(0, len(bad) - MAX_EXTRA_ROWS)
    for key in [*bad[:MAX_EXTRA_ROWS], *KEY_ROWS]:
        m = t.metrics[key]
        note = m.diagnosis if m.status in (Status.WARNING, Status.CRITICAL) else (m.reason if m.value is None else "")
        table.add_row(key, _num(m.value, m.unit), Text(m.status.value, style=COLOURS[m.status.value]),
                      redact(note or ""))
    out: list[Any] = [head, why, table]
    worst = next((t.metrics[k] for k in [*bad, *KEY_ROWS] if t.metrics[k].status is Status.CRITICAL and
                  t.metrics[k].diagnosis), None) or next(
        (t.metrics[k] for k in [*bad, *KEY_ROWS] if t.metrics[k].status is Status.WARNING and t.metrics[k].diagnosis),
        None)
    if worst is not None:  # the worst row's diagnosis in full, where the table cut it
        out.append(Text(f"  {worst.key}: {redact(worst.diagnosis or '')}", style=COLOURS[worst.status.value]))
    if hidden:
        out.append(Text(f"  … {hidden} more rows not ok (fleetwatch check shows them all)", style="dim"))
    for f in t.findings[:3]:
        out.append(Text(f"  {f.status.value}: {f.kind}" + (f" [{f.instance}]" if f.instance else "") + f": {redact(f.message)}",
                        style=COLOURS[f.status.value], overflow="ellipsis", no_wrap=True))
    if len(t.findings) > 3:
        out.append(Text(f"  … {len(t.findings) - 3} more findings", style="dim"))
    return out


def screen(report: Report, trend: Trend, changed: Iterable[str], title: str) -> Any:
    """The whole screen for one report."""
    from rich.console import Group
    from rich.text import Text

    parts: list[Any] = [Text(redact(title), style="bold")]
    for name, t in report.tiers.items():
        parts.append(Text(""))
        parts += _tier(name, t, trend)
    moved = list(changed)
    parts.append(Text(""))
    more = f"; … {len(moved) - 6} more" if len(moved) > 6 else ""
    parts.append(Text("changed: " + ("; ".join(redact(m) for m in moved[:6]) + more
                                     if moved else "nothing since the last interval"),
                      overflow="ellipsis", no_wrap=True, style="bold" if moved else "dim"))
    parts.append(Text("CRITICAL" if report.critical else "no critical finding",
                      style="bold red" if report.critical else "green"))
    return Group(*parts)


def wanted(stream: IO[str], fmt: str) -> bool:
    """A live view only for a terminal that can redraw, and for the default table format."""
    return fmt == "table" and stream.isatty() and os.environ.get("TERM", "") != "dumb"


class LiveView:
    """Redraws the screen in place on each report; stops cleanly (the last screen stays)."""

    def __init__(self, title: str, stream: IO[str] = sys.stdout) -> None:
        from rich.console import Console
        from rich.live import Live

        self.title = title
        self.trend = Trend()
        self.previous: Report | None = None
        self.console = Console(file=stream)
        self.live = Live(console=self.console, auto_refresh=False, redirect_stderr=False, screen=False,
                         vertical_overflow="crop")

    def __enter__(self) -> "LiveView":
        self.live.start()
        return self

    def update(self, report: Report, subtitle: str = "") -> None:
        self.trend.add(report)
        moved = changes(self.previous, report)
        self.previous = report
        self.live.update(screen(report, self.trend, moved, f"{self.title}{subtitle}"), refresh=True)

    def __exit__(self, *exc: object) -> None:
        self.live.stop()
