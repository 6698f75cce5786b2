"""`fleetwatch dashboards --preview DIR`: each generated dashboard drawn from a real Prometheus, panel
by panel in the dashboard's grid, to a PNG, so that a reader sees the dashboards before importing
them (no Grafana server is needed) and a test can look at what every panel shows.

The queries are the dashboards' own, their variables substituted as Grafana substitutes "All"
(``.*``) and ``$__rate_interval`` set to four steps. ``fetch`` is the I/O edge; ``draw`` turns what
it fetched into a picture with matplotlib (an optional dependency: ``pip install matplotlib``).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..model import PrometheusSource
from ..sources.prometheus_api import PrometheusApi, PrometheusError
from .dashboards import QUERY_VARIABLES, build

COLUMNS = 24  # Grafana's grid
MAX_SERIES = 12  # lines drawn per panel; the rest are counted in the legend
TIMEOUT = 30.0
MAX_BYTES = 32 << 20


@dataclass
class PanelData:
    """What one panel's queries returned: (legend, [(t, v)]) per series, or an error."""

    title: str
    kind: str
    unit: str
    w: int
    h: int
    x: int = 0
    y: int = 0
    series: list[tuple[str, list[tuple[float, float]]]] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)  # each series' query (its refId), in the same order
    error: str | None = None

    @property
    def empty(self) -> bool:
        return not any(points for _, points in self.series)


def substitute(expr: str, step: float, tier: str | None = None) -> str:
    """A panel query as Grafana sends it: every variable at "All", or ``tier`` in a row repeated per tier."""
    window = f"{int(4 * step)}s"
    one = tier.replace("\\", "\\\\").replace('"', '\\"') if tier is not None else None
    expr = expr.replace('tier="$tier"', f'tier="{one}"' if one is not None else 'tier=~".*"')
    expr = expr.replace("$tier", one if one is not None else ".*")
    for name in QUERY_VARIABLES:
        expr = expr.replace(f"${name}", ".*")
    return (expr.replace("$__rate_interval_ms", str(int(4 * step * 1000))).replace("$__rate_interval", window))


def _legend(template: str, labels: dict[str, str]) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), template).strip()
    return text or ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"


def _row(template: str, labels: dict[str, str]) -> str:
    """A table row's text: its legend, then every label that tells rows apart (a table shows them all)."""
    words = " ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in ("__name__", "job"))
    legend = re.sub(r"\{\{\s*\w+\s*\}\}", "", template).strip()
    return f"{legend} {words}".strip() or "value"


def all_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """The board's panels in order, collapsed rows' panels after their row (as when expanded)."""
    return [p for top in board["panels"] for p in (top, *top.get("panels", ()))]


def placements(board: dict[str, Any], tiers: Sequence[str]) -> list[tuple[dict[str, Any], int, int, str | None]]:
    """(panel, x, y, tier) as Grafana shows the board with collapsed rows opened and a row repeated over
    ``$tier`` drawn once per tier: what follows each is pushed down by what it added."""
    out: list[tuple[dict[str, Any], int, int, str | None]] = []
    shift = 0
    tops = board["panels"]
    i = 0
    while i < len(tops):
        top = tops[i]
        pos = top["gridPos"]
        if top["type"] == "row" and top.get("repeat") == "tier":
            block = [top]
            while i + 1 < len(tops) and tops[i + 1]["type"] != "row":
                i += 1
                block.append(tops[i])
            y0 = pos["y"]
            height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in block) - y0
            for n, tier in enumerate(tiers or [None]):
                for p in block:
                    out.append((p, p["gridPos"]["x"], p["gridPos"]["y"] + shift + n * height, tier))
            shift += height * (max(len(tiers), 1) - 1)
        else:
            out.append((top, pos["x"], pos["y"] + shift, None))
            inner = top.get("panels") or []
            for p in inner:
                out.append((p, p["gridPos"]["x"], p["gridPos"]["y"] + shift, None))
            if inner:
                shift += max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in inner) - (pos["y"] + pos["h"])
        i += 1
    return out


def fetch(board: dict[str, Any], api: PrometheusApi, start: float, end: float, step: float) -> list[PanelData]:
    tiers = sorted({labels.get("tier", "") for labels, _ in api.query("group by (tier) (fleetwatch_plan_instances)",
                                                                       end)} - {""})
    out = []
    for p, x, y, tier in placements(board, tiers):
        title = p["title"].replace("$tier", tier) if tier is not None else p["title"]
        d = PanelData(title, p["type"], p.get("fieldConfig", {}).get("defaults", {}).get("unit", ""),
                      p["gridPos"]["w"], p["gridPos"]["h"], x, y)
        try:
            for t in p.get("targets", []):
                expr = substitute(t["expr"], step, tier)
                if p["type"] in ("stat", "table") or t.get("instant"):
                    got = [(_row(t.get("legendFormat", ""), labels) if p["type"] == "table"
                            else _legend(t.get("legendFormat", ""), labels), [(end, v)])
                           for labels, v in api.query(expr, end)]
                else:
                    got = [(_legend(t.get("legendFormat", ""), labels), points)
                           for labels, points in api.query_range(expr, start, end, step)]
                d.series += got
                d.refs += [t["refId"]] * len(got)
        except PrometheusError as e:
            d.error = str(e)
        out.append(d)
    return out


def _number(v: float, unit: str) -> str:
    if not math.isfinite(v):
        return str(v)
    if unit == "percentunit":
        return f"{v:.1%}"
    if unit == "s":
        return f"{v * 1000:.0f} ms" if abs(v) < 1 else f"{v:.2f} s"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.3g}M"
    if abs(v) >= 1e3:
        return f"{v / 1e3:.3g}k"
    return f"{v:.3g}"


def draw(title: str, panels: Sequence[PanelData], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    placed = [(d, d.x, d.y) for d in panels]
    rows = max(y + d.h for d, _, y in placed)
    unit_h = 0.32  # inches per grid row
    header = 0.9  # inches above the grid for the dashboard's title
    fig = plt.figure(figsize=(18, rows * unit_h + header), dpi=80)
    fig.suptitle(title, x=0.01, y=1 - 0.15 / (rows * unit_h + header), ha="left", va="top", fontsize=13,
                 fontweight="bold")
    top = 1 - header / (rows * unit_h + header)
    for d, x, y in placed:
        h = d.h
        left, width = x / COLUMNS + 0.004, d.w / COLUMNS - 0.008
        bottom = top * (1 - (y + h) / rows) + 0.01
        height = top * h / rows - 0.02
        if d.kind == "row":
            fig.text(0.01, bottom + height / 2, d.title, fontsize=11, fontweight="bold", va="center")
            continue
        if d.kind in ("timeseries", "xychart", "heatmap"):  # room for the value axis's numbers
            left, width = left + 0.022, width - 0.024
        ax = fig.add_axes((left, bottom, width, max(height, 0.01)))
        ax.set_title(d.title, fontsize=9, loc="left")
        ax.tick_params(labelsize=6)
        if d.error or d.empty:
            ax.text(0.5, 0.5, d.error or "no data", ha="center", va="center", fontsize=8, color="gray",
                    transform=ax.transAxes, wrap=True)
            ax.set_xticks([])
            ax.set_yticks([])
        elif d.kind == "stat":
            v = next(v for _, pts in d.series for _, v in pts[-1:])
            ax.text(0.5, 0.45, _number(v, d.unit), ha="center", va="center", fontsize=18, transform=ax.transAxes)
            ax.axis("off")
        elif d.kind == "table":
            lines = [f"{name[:110]}: {_number(pts[-1][1], d.unit)}" for name, pts in d.series[:8] if pts]
            more = len(d.series) - 8
            ax.text(0.01, 0.95, "\n".join(lines) + (f"\n… {more} more" if more > 0 else ""), va="top", fontsize=6,
                    family="monospace", transform=ax.transAxes)
            ax.axis("off")
        elif d.kind == "heatmap":  # the buckets' mean rate over the range, as a distribution
            cumulative = sorted(((_le(name), sum(v for _, v in pts) / len(pts)) for name, pts in d.series if pts),
                                key=lambda b: b[0])
            # Prometheus buckets count everything up to their bound: each bar is its bucket's own share
            bars = [(le, v - (cumulative[i - 1][1] if i else 0.0)) for i, (le, v) in enumerate(cumulative)]
            ax.bar(range(len(bars)), [v for _, v in bars], color="tab:orange")
            ax.set_xticks(range(len(bars)), [f"{le:g}" for le, _ in bars], rotation=90, fontsize=5)
        elif d.kind == "xychart":  # the first query's series across, the others' against them, tier by tier
            first = d.refs[0]
            across = {name.split()[0]: dict(pts) for (name, pts), ref in zip(d.series, d.refs) if ref == first}
            for (name, pts), ref in zip(d.series, d.refs):
                xs = across.get(name.split()[0], {})
                paired = [(xs[t], v) for t, v in pts if t in xs and ref != first]
                if paired:
                    ax.scatter([x for x, _ in paired], [v for _, v in paired], s=4, label=name[:40])
            ax.set_xlabel(next(name for name, ref in zip((n for n, _ in d.series), d.refs) if ref == first)
                          .split(" ", 1)[-1], fontsize=6)
            if d.unit:
                ax.set_ylabel(d.unit, fontsize=6)
            ax.legend(fontsize=5, loc="upper left")
        else:
            t0 = min(t for _, pts in d.series for t, _ in pts[:1])
            for name, pts in d.series[:MAX_SERIES]:
                ax.plot([(t - t0) / 60 for t, _ in pts], [v for _, v in pts], label=name[:40], linewidth=1)
            ax.set_xlabel("minutes", fontsize=6)
            if d.unit:
                ax.set_ylabel(d.unit, fontsize=6)
            more = len(d.series) - MAX_SERIES
            ax.legend(fontsize=5, loc="upper left", title=f"+{more} more" if more > 0 else None,
                      title_fontsize=5)
    fig.savefig(path)
    plt.close(fig)


def _le(name: str) -> float:
    try:
        return float(name)
    except ValueError:
        return math.inf


def preview(url: str, out: Path, seconds: float, end: float, token_file: str | None = None,
            verify: bool = True, boards: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Draw every generated dashboard from the Prometheus at ``url`` over the ``seconds`` before ``end``
    into ``out``/<dashboard>.png; returns each file's panels that showed no data (or an error)."""
    api = PrometheusApi(PrometheusSource(url.rstrip("/"), token_file), timeout=TIMEOUT, max_bytes=MAX_BYTES,
                        verify=verify)
    step = max(1.0, seconds / 120)
    out.mkdir(parents=True, exist_ok=True)
    empty: dict[str, list[str]] = {}
    try:
        for name, text in (boards or build()).items():
            board = json.loads(text)
            data = fetch(board, api, end - seconds, end, step)
            png = out / (Path(name).stem + ".png")
            draw(board["title"], data, png)
            empty[png.name] = [d.title for d in data if d.kind != "row" and (d.error or d.empty)]
    finally:
        api.close()
    return empty
