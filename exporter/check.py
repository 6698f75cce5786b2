"""``fleetwatch check``: scrape every target twice, ``window`` apart, and report once."""
from __future__ import annotations

import json
import time
from collections import Counter
from typing import Callable

from .model import Config
from .lifecycle import ONE_SHOT, Daemon
from .model import Report, Status
from .scrape import Scraper
from .text import num, plural, seconds


def run_check(config: Config, window: float, *, scraper: Scraper | None = None,
              sleep: Callable[[float], None] = time.sleep) -> Report:
    with Daemon(config, ONE_SHOT, scraper=scraper) as daemon:
        pipeline = daemon.pipeline
        if daemon.scraper is None:  # source: prometheus, which holds the window already
            return pipeline.evaluate_prometheus(time.time(), window)
        first = daemon.scraper.scrape()
        pipeline.ingest(first)
        sleep(window)
        last = daemon.scraper.scrape()
        pipeline.ingest(last)
        now = last[0].timestamp if last else time.time()
        return pipeline.evaluate_span(now, now - (first[0].timestamp if first else now), scrapes=2)


def _num(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "ratio":
        return f"{v * 100:.1f}%"
    if unit == "s":
        return seconds(v)
    return num(v)


SHARED_REASON = 3  # an unknown reason on this many rows of a tier is said once, above its rows


def _pct(v: float) -> str:
    return num(v * 100)


def format_table(report: Report) -> str:
    lines: list[str] = []
    for name, t in report.tiers.items():
        r = t.resize
        lines.append(f"== tier {name}: {t.instances_up}/{t.instances_total} instances up; "
                     f"resize {r.action}{' (provisional)' if r.provisional else ''} "
                     f"(recommended {r.recommended_instances})")
        lines.append(f"   {r.reason}" + (f" Provisional: {r.provisional}." if r.provisional else ""))
        shared = Counter(m.reason for m in t.metrics.values() if m.value is None and m.reason).most_common(1)
        common = shared[0][0] if shared and shared[0][1] >= SHARED_REASON else None
        if common is not None:  # the tier is down or warming up: said once, not on every row
            lines.append(f"   unknown for now: {common}")
        lines.append(f"   {'metric':<36} {'value':>12}  {'status':<8} note")
        for key, m in t.metrics.items():
            # an ok row says nothing more; a bad one its diagnosis; an unknown one why
            note = (m.diagnosis if m.status.value in ("warning", "critical") else None) or (
                ("see above" if m.reason == common else m.reason) if m.value is None else "") or ""
            src = f" [{m.source}]" if m.source and m.value is not None else ""
            lines.append(f"   {key:<36} {_num(m.value, m.unit):>12}  {m.status.value:<8} {note}{src}")
        lines.append("   plan checks:")
        for c in t.plan_checks:
            lines.append(f"     {c.status.value:<8} {c.check:<40} {c.message}")
        if t.findings:
            lines.append("   findings:")
            for f in t.findings:
                lines.append(f"     {f.status.value:<8} {f.kind:<28} {f.message}")
        parts = [f"{k} {_num(g.value, '')} ({_num(g.low, '')}-{_num(g.high, '')})"
                 + (" at the plan's peak" if k == "circuit_breaker_queue_threshold" else "")
                 for k, g in t.guardrails.items() if g.value is not None]
        if parts:
            lines.append(f"   guardrails: {'; '.join(parts)}")
        if t.workload is not None:
            inp, out = t.workload.input_tokens, t.workload.output_tokens
            lines.append(f"   workload: input p50/p95/p99 {_num(inp.p50, '')}/{_num(inp.p95, '')}/{_num(inp.p99, '')} "
                         f"tokens; output {_num(out.p50, '')}/{_num(out.p95, '')}/{_num(out.p99, '')}")
        sc = t.schedule
        if sc is not None:
            later = "; ".join(f"{n} in {h}" for h, n in sc.ahead.items())
            lines.append("   schedule: " + (
                f"{plural(sc.now or 0, 'instance')} now" + (f", {later}" if later else "") +
                f" ({sc.profile} P{_pct(sc.quantile)} load profile, read {seconds(sc.lead_seconds)} ahead: cold "
                f"start ({sc.lead_source}) plus margin)"
                if sc.status is Status.OK else f"unknown: {sc.reason}"))
        lv = t.utilization_levers
        if lv is not None and lv.idle_windows:
            windows = lv.idle_windows
            cost = sum(w.idle_cost_usd_per_day for w in windows)
            lines.append(f"   idle windows: {plural(len(windows), 'hour')} a day under 40% utilization (UTC "
                         f"{', '.join(str(w.hour_utc) for w in windows)}), {num(cost)} USD/day idle; scaling down "
                         f"when it could would save {_num(lv.scale_down_savings_usd_per_day, '')} USD/day")
        lines.append("")
    lines.append("CRITICAL" if report.critical else "no critical finding")
    return "\n".join(lines)


def format_json(report: Report) -> str:
    from .secrets import redact

    return redact(json.dumps(report.as_dict(), allow_nan=False, sort_keys=False))
