"""``fleetwatch backtest --report DIR``: the replay as a page a person reads, with its pictures beside it.

Per tier three plots (matplotlib, PNG): TTFT and ITL P99 against the SLO, fleet utilization against its
band, and the instances deployed, recommended and scheduled; the tier's firing alerts are shaded on each.
Then the plans side by side. The page loads nothing from the network: its images are files next to it
and its style is inline.
"""
from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from ..backtest import SLOS, Backtest, TierStep, clock, span_text
from ..model import Config

SEVERITY_SHADE = {"critical": ("#d62728", 0.18), "warning": ("#ff7f0e", 0.12)}


def _times(steps: Sequence[TierStep]) -> list[Any]:  # datetimes, which matplotlib's stubs do not list
    return [datetime.fromtimestamp(s.at, timezone.utc) for s in steps]


def _series(steps: Sequence[TierStep], key: str) -> list[float]:
    return [v if (v := s.values.get(key)) is not None else float("nan") for s in steps]


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _shade(ax: Any, bt: Backtest, tier: str, about: tuple[str, ...]) -> None:
    """When the tier's alerts about this plot (a name containing one of ``about``) fired, per severity (a
    union: several at once shade no darker)."""
    if bt.alerts is None:
        return
    spans: dict[str, list[tuple[float, float]]] = {}
    for f in bt.alerts.episodes:
        labels = dict(f.labels)
        if labels.get("tier") == tier and any(a in labels.get("alertname", "") for a in about):
            sev = labels.get("severity", "warning")
            spans.setdefault(sev if sev in SEVERITY_SHADE else "warning", []).append(
                (max(f.start, bt.start), f.end if f.end is not None else bt.end))
    for sev in ("warning", "critical"):
        colour, alpha = SEVERITY_SHADE[sev]
        for k, (a, b) in enumerate(_union(spans.get(sev, []))):
            ax.axvspan(datetime.fromtimestamp(a, timezone.utc), datetime.fromtimestamp(b, timezone.utc), color=colour,
                       alpha=alpha, lw=0, label=f"{sev}: {' or '.join(about)} alert firing" if k == 0 else None)


def draw_tier(bt: Backtest, config: Config, tier: str, out: Path) -> list[str]:
    """The tier's three plots into ``out``: their file names."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    steps = bt.steps[tier]
    plan = config.tiers[tier].plan
    t = _times(steps)
    names = []

    def finish(fig: Any, ax: Any, name: str, title: str, ylabel: str) -> None:
        ax.set_title(title, fontsize=11, loc="left")
        ax.set_ylabel(ylabel)
        fmt = "%m-%d %H:%M" if bt.end - bt.start > 86400 else "%H:%M:%S"
        ax.xaxis.set_major_formatter(mdates.DateFormatter(fmt))  # type: ignore[no-untyped-call]
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)  # beside, not over
        fig.autofmt_xdate()
        fig.subplots_adjust(left=0.07, right=0.70, bottom=0.24, top=0.88)  # the same plot area whatever the legend
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        names.append(name)

    fig, ax = plt.subplots(figsize=(10.5, 3.0))
    for (fld, key, title), colour in zip(SLOS, ("#1f77b4", "#2ca02c")):
        ax.plot(t, _series(steps, key), color=colour, lw=1.4, label=f"{title} observed")
        ax.axhline(getattr(plan.slo, fld), color=colour, ls="--", lw=1, label=f"{title} SLO")
    _shade(ax, bt, tier, ("TTFT", "ITL"))
    ax.set_ylim(bottom=0)
    finish(fig, ax, f"{tier}-latency.png", f"{tier}: TTFT and ITL P99 against the SLO", "seconds")

    fig, ax = plt.subplots(figsize=(10.5, 3.0))
    ax.plot(t, _series(steps, "fleet_utilization_ratio"), color="#9467bd", lw=1.4, label="fleet utilization")
    _band_lines(ax, config, tier)
    _shade(ax, bt, tier, ("Utilization", "NoHeadroom"))
    ax.set_ylim(bottom=0)
    finish(fig, ax, f"{tier}-utilization.png", f"{tier}: fleet utilization against its band", "share of usable capacity")

    fig, ax = plt.subplots(figsize=(10.5, 3.0))
    ax.step(t, [s.deployed for s in steps], where="post", color="#333333", lw=1.6, label="deployed")
    ax.step(t, [s.recommended if s.recommended is not None else float("nan") for s in steps], where="post",
            color="#d62728", lw=1.2, label="recommended")
    ax.step(t, [s.scheduled if s.scheduled is not None else float("nan") for s in steps], where="post",
            color="#17becf", lw=1.2, ls="--", label="scheduled")
    ax.axhline(plan.instances, color="#7f7f7f", ls=":", lw=1, label="plan")
    _shade(ax, bt, tier, ("Scale", "TargetDown"))
    ax.set_ylim(bottom=0)
    finish(fig, ax, f"{tier}-instances.png", f"{tier}: instances deployed, recommended and scheduled", "instances")
    return names


def _band_lines(ax: Any, config: Config, tier: str) -> None:
    from ..catalogue import ROWS, rules_band

    key = "fleet_utilization_ratio"
    tc = config.tiers[tier]
    band = rules_band(next(r for r in ROWS if r.key == key), tc.plan, tc.bands.get(key))
    if band is None:
        return
    for name, colour in (("warning_below", "#ff7f0e"), ("critical_below", "#d62728"), ("warning_above", "#ff7f0e"),
                         ("critical_above", "#d62728")):
        th = getattr(band, name)
        if th is not None:
            ax.axhline(th.value, color=colour, ls="--", lw=1, label=name.replace("_", " "))


STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:980px;color:#222}
h1{font-size:20px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{display:block;margin:8px 0;max-width:100%}
.note{color:#555;font-size:13px}ul{margin:4px 0}"""


def page(bt: Backtest, config: Config, images: dict[str, list[str]]) -> str:
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>fleetwatch backtest</title>"
           f"<style>{STYLE}</style></head><body>",
           f"<h1>fleetwatch backtest: {e(clock(bt.start))} to {e(clock(bt.end))} UTC</h1>",
           f"<p class='note'>A cycle every {e(span_text(bt.step))} over a {e(span_text(bt.window))} window, as the "
           f"Prometheus-backed daemon would have run then. Shaded on each plot: when the replayed rules' alerts "
           f"about it fired (orange a warning, red a critical).</p>"]
    for name, s in bt.tiers.items():
        out.append(f"<h2>tier {e(name)}</h2><ul>")
        for fld, _, title in SLOS:
            out.append(f"<li>{e(title)} above the SLO for {e(span_text(s.outside_slo_seconds[fld]))}</li>")
        for what, ps in (("undersized (scale up)", s.undersized), ("over capacity", s.over_capacity),
                         ("utilization trap", s.utilization_trap)):
            said = "; ".join((f"{clock(p.start)} to {clock(p.end)}" if p.end > p.start else f"at {clock(p.start)}")
                             + (f" ({p.detail})" if p.detail else "") for p in ps[:6]) or "never"
            out.append(f"<li>{e(what)}: {e(said)}</li>")
        out.append("</ul>")
        for img in images.get(name, []):
            out.append(f"<img src='{e(img)}' alt='{e(img.removesuffix('.png').replace('-', ' '))}'>")
        out.append("<table><tr><th>plan</th><th>instances</th><th>GPU-hours</th><th>cost (USD)</th>"
                   "<th>SLO-violation minutes</th><th>beyond the benchmark (min)</th></tr>")
        for p in s.plans:
            out.append(f"<tr><td>{e(p.name)}</td><td>{p.instances}</td><td>{p.gpu_hours:,.2f}</td>"
                       f"<td>{p.cost_usd:,.2f}</td><td>{p.slo_violation_minutes:,.1f}</td>"
                       f"<td>{p.beyond_benchmark_minutes:,.1f}</td></tr>")
        out.append("</table><p class='note'>SLO-violation minutes come from each plan's own benchmark curve at the RPS "
                   "per instance it would have had on this traffic; load past the curve's last point counts as a "
                   "violation.</p>")
    if bt.alerts is not None:
        out.append(f"<h2>alerts</h2><p>{len(bt.alerts.episodes)} firing episodes; "
                   f"{len(bt.alerts.notifications)} notifications Alertmanager would have sent.</p>"
                   "<table><tr><th>alert</th><th>labels</th><th>firing from</th><th>resolved</th></tr>")
        for f in bt.alerts.episodes:
            labels = ", ".join(f"{k}={v}" for k, v in f.labels if k != "alertname")
            out.append(f"<tr><td>{e(f.alert)}</td><td>{e(labels)}</td><td>{e(clock(f.start))}</td>"
                       f"<td>{e(clock(f.end)) if f.end is not None else 'still firing'}</td></tr>")
        out.append("</table>")
        if bt.alerts.flapping:
            out.append("<p>Flapping: " + e("; ".join(f"{dict(k)['alertname']} {dict(k).get('tier', '')} fired "
                                                    f"{n} times" for k, n in bt.alerts.flapping.items())) + "</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(bt: Backtest, config: Config, out: Path) -> Path:
    """The page and its plots into ``out`` (created): the page's path."""
    out.mkdir(parents=True, exist_ok=True)
    images = {tier: draw_tier(bt, config, tier, out) for tier in bt.tiers}
    index = out / "index.html"
    index.write_text(page(bt, config, images), encoding="utf-8")
    return index
