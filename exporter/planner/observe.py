"""`fleetwatch plan --workload-from URL`: the workload profile derived from the Prometheus that scrapes
the fleet, so measuring, planning and validating close into one loop without anyone typing
percentiles.

The PromQL is the Prometheus-backed mode's own (promview.quantile_expr, the catalogue's rows), over
the requested range instead of the validation window: one definition of each figure. Queries are
built and their answers turned into a workload by pure functions; ``derive`` is the one edge that
asks Prometheus.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from .. import catalogue
from .. import engines as I
from ..config import ConfigError, Reader, exact_duration, format_duration, parse_duration
from ..model import PrometheusSource, Slo
from ..promview import quantile_expr, windowed
from ..secrets import redact_url
from ..sources.prometheus_api import Labels, PrometheusApi, PrometheusError

PEAK_STEP = 300.0  # the peak is the highest 5-minute arrival rate in the range
PROFILE_STEP = 3600.0  # the daily profile: mean arrival rate per hour of the day (UTC)
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
TIMEOUT = 60.0  # a week of histograms over a large fleet takes Prometheus a while
MAX_BYTES = 32 << 20
SHARED_PREFIX_HIT_RATE = 0.10  # a prefix-cache hit rate above this is reuse worth planning for


class WorkloadError(ValueError):
    """Prometheus answered, but not with what a workload needs (no data for the tier, no SLOs)."""


def _tier(tier: str) -> str:
    return '{tier="' + tier.replace("\\", "\\\\").replace('"', '\\"') + '"}'


def queries(tier: str, seconds: float) -> dict[str, str]:
    """figure -> the instant PromQL that answers it at the range's end."""
    sel = _tier(tier)
    out = {f"{kind}_{name}": quantile_expr(key, q, "tier", seconds, selector=sel)
           for kind, key in (("input", "prompt_tokens_per_request"), ("output", "generation_tokens_per_request"))
           for name, q in QUANTILES}
    w = format_duration(seconds)
    arrivals = f"sum by (tier) ({I.count_increase('prompt_tokens_per_request', sel)})"
    out["requests"] = arrivals.replace("{w}", w)
    peak = peak_step(seconds)
    step = format_duration(peak)
    rate = f"sum by (tier) ({I.count_increase('prompt_tokens_per_request', sel)})".replace("{w}", step)
    out["peak_rps"] = f"max_over_time(({rate} / {peak:g})[{w}:{step}])"
    out["prefix_cache_hit_ratio"] = windowed(catalogue.row("prefix_cache_hit_ratio").promql, seconds)
    out["slo_ttft_p99"] = f'max by (tier) (fleetwatch_plan_slo_ttft_p99_seconds{sel})'
    out["slo_itl_p99"] = f'max by (tier) (fleetwatch_plan_slo_itl_p99_seconds{sel})'
    return out


def peak_step(seconds: float) -> float:
    """The window of the peak's rate: 5 minutes, or a quarter of a range shorter than 20 minutes."""
    return min(PEAK_STEP, max(1.0, seconds / 4))


def profile_query(tier: str) -> str:
    """The arrival rate over each hour, for a range query at a one-hour step."""
    sel = _tier(tier)
    return (f"sum by (tier) ({I.count_increase('prompt_tokens_per_request', sel)})"
            .replace("{w}", format_duration(PROFILE_STEP)) + f" / {PROFILE_STEP:g}")


def tiers_query(seconds: float) -> str:
    return f"count by (tier) ({I.count_increase('prompt_tokens_per_request')})".replace("{w}", format_duration(seconds))


@dataclass(frozen=True)
class Observed:
    """What the range showed for one tier."""

    tier: str
    seconds: float
    at: float
    input_tokens: Mapping[str, float]
    output_tokens: Mapping[str, float]
    requests: float
    peak_rps: float
    prefix_cache_hit_ratio: float | None
    daily_profile: tuple[float | None, ...]  # mean RPS per UTC hour of the day, None where the range had none
    slo: Slo
    slo_source: str


def _value(answers: Mapping[str, Sequence[tuple[Labels, float]]], key: str, tier: str) -> float | None:
    for labels, v in answers.get(key, ()):
        if labels.get("tier", tier) == tier and math.isfinite(v):
            return v
    return None


def daily_profile(points: Sequence[tuple[float, float]]) -> tuple[float | None, ...]:
    """Mean of the hourly rates by UTC hour of the day (the hour each sample's window ended in)."""
    sums = [0.0] * 24
    counts = [0] * 24
    for t, v in points:
        if math.isfinite(v):
            h = int(((t - PROFILE_STEP / 2) % 86400) // 3600)
            sums[h] += v
            counts[h] += 1
    return tuple(round(s / c, 6) if c else None for s, c in zip(sums, counts))


def observed(tier: str, seconds: float, at: float, answers: Mapping[str, Sequence[tuple[Labels, float]]],
             profile: Sequence[tuple[float, float]], slo: Slo | None, slo_source: str) -> Observed:
    """The tier's workload from the answers to ``queries``; WorkloadError says what is missing."""
    span = format_duration(seconds)
    lengths: dict[str, dict[str, float]] = {}
    for kind, what in (("input", "prompt-length"), ("output", "output-length")):
        vals = {name: _value(answers, f"{kind}_{name}", tier) for name, _ in QUANTILES}
        if any(v is None for v in vals.values()):
            raise WorkloadError(f"tier {tier}: no {what} histogram observations in the last {span}: is this the "
                                f"Prometheus that scrapes the fleet, with the tier label on its engine targets?")
        lengths[kind] = {k: max(1.0, float(v or 0.0)) for k, v in vals.items()}
    requests = _value(answers, "requests", tier) or 0.0
    if requests <= 0:
        raise WorkloadError(f"tier {tier}: no finished requests in the last {span}")
    peak = _value(answers, "peak_rps", tier)
    if slo is None:
        ttft, itl = _value(answers, "slo_ttft_p99", tier), _value(answers, "slo_itl_p99", tier)
        if ttft is None or itl is None or ttft <= 0 or itl <= 0:
            raise WorkloadError(f"tier {tier}: no SLOs: give --config with the tier's plan, or let this Prometheus "
                                f"scrape fleetwatch (its fleetwatch_plan_slo_*_seconds gauges)")
        slo, slo_source = Slo(ttft, itl), "the plan figures fleetwatch exports (fleetwatch_plan_slo_*_seconds)"
    average = requests / seconds
    return Observed(tier=tier, seconds=seconds, at=at, input_tokens=lengths["input"], output_tokens=lengths["output"],
                    requests=requests, peak_rps=max(peak or 0.0, average), prefix_cache_hit_ratio=_value(
                        answers, "prefix_cache_hit_ratio", tier), daily_profile=daily_profile(profile),
                    slo=slo, slo_source=slo_source)


def workload_yaml(o: Observed, url: str) -> str:
    """The workload file `fleetwatch plan --workload` reads, with where each figure came from."""
    hit = o.prefix_cache_hit_ratio
    doc: dict[str, Any] = {
        "input_tokens": {k: round(v) for k, v in o.input_tokens.items()},
        "output_tokens": {k: round(v) for k, v in o.output_tokens.items()},
        "peak_rps": round(o.peak_rps, 4),
        "average_rps": round(o.requests / o.seconds, 4),
        "slo": {"ttft_p99": exact_duration(o.slo.ttft_p99), "itl_p99": exact_duration(o.slo.itl_p99)},
        "shared_prefixes": bool(hit is not None and hit > SHARED_PREFIX_HIT_RATE),
        "observed": {"source": url, "tier": o.tier, "range": format_duration(o.seconds),
                     "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(o.at)),
                     "requests": round(o.requests), "prefix_cache_hit_ratio": None if hit is None else round(hit, 4),
                     "daily_profile_rps": list(o.daily_profile)},
    }
    url = redact_url(url)
    head = [f"# Workload of tier {o.tier}, derived by `fleetwatch plan --workload-from` from {url}",
            f"# over the {format_duration(o.seconds)} before {doc['observed']['at']}: length percentiles are "
            f"histogram_quantile over the engines' prompt and output histograms; peak_rps is the highest "
            f"{format_duration(peak_step(o.seconds))} arrival rate; SLOs from {o.slo_source}.",
            "# Percentiles are interpolated within histogram buckets: as exact as the engine's buckets."]
    return "\n".join(head) + "\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=110)


def _config_slo(file: str, tier: str | None) -> tuple[str | None, Slo]:
    from ..config import load_config

    cfg = load_config(file)
    if tier is None:
        if len(cfg.tiers) != 1:
            raise ConfigError(file, "tiers", f"several tiers ({', '.join(sorted(cfg.tiers))}): pick one with --tier")
        tier = next(iter(cfg.tiers))
    if tier not in cfg.tiers:
        raise ConfigError(file, "tiers", f"no tier {tier!r} (the config has {', '.join(sorted(cfg.tiers))})")
    return tier, cfg.tiers[tier].plan.slo


def derive(url: str, tier: str | None, seconds: float, at: float, *, slo: Slo | None = None,
           slo_source: str = "", token_file: str | None = None, verify: bool = True,
           api: PrometheusApi | None = None) -> Observed:
    """Ask Prometheus at ``url`` for the tier's workload over the ``seconds`` before ``at``."""
    api = api or PrometheusApi(PrometheusSource(url.rstrip("/"), token_file), timeout=TIMEOUT, max_bytes=MAX_BYTES,
                               verify=verify)
    ask: Callable[[str], list[tuple[Labels, float]]] = lambda expr: api.query(expr, at)  # noqa: E731
    if tier is None:
        found = sorted({labels.get("tier", "") for labels, _ in ask(tiers_query(seconds))} - {""})
        if len(found) != 1:
            raise WorkloadError("no tier with requests in the range" if not found else
                                f"tiers {', '.join(found)} have requests: pick one with --tier")
        tier = found[0]
    answers = {key: ask(expr) for key, expr in queries(tier, seconds).items()}
    profile: list[tuple[float, float]] = []
    if seconds >= PROFILE_STEP:
        for _, points in api.query_range(profile_query(tier), at - seconds + PROFILE_STEP, at, PROFILE_STEP):
            profile += points
    return observed(tier, seconds, at, answers, profile, slo, slo_source)


def check_url(url: str) -> str:
    """An http(s) URL with a host and a valid port, checked as the config's URLs are; ValueError says why not."""
    try:
        return Reader("").url(url, "")
    except ConfigError as e:
        raise ValueError(e.reason) from None


def derive_to_file(args: argparse.Namespace) -> str:
    """The CLI's edge: derive, write the workload file, return its path. Errors are ValueError or ConfigError."""
    try:
        check_url(args.workload_from)
    except ValueError as e:
        raise ValueError(f"--workload-from {redact_url(args.workload_from)}: {e}") from None
    try:
        seconds = parse_duration(args.range)
    except ValueError as e:
        raise ValueError(f"--range: {e}") from None
    if seconds < 5:
        raise ValueError("--range: at least 5s (a rate needs two scrapes in it)")
    at = time.time() if getattr(args, "at", None) is None else float(args.at)
    if not math.isfinite(at) or at <= 0:
        raise ValueError(f"--at: expected a Unix time in seconds, got {args.at}")
    tier, slo, source = args.tier, None, ""
    if args.config:
        tier, slo = _config_slo(args.config, args.tier)
        source = f"tier {tier}'s plan in {args.config}"
    try:
        o = derive(args.workload_from, tier, seconds, at, slo=slo, slo_source=source,
                   token_file=args.bearer_token_file)
    except (PrometheusError, WorkloadError) as e:
        raise ValueError(f"--workload-from {redact_url(args.workload_from)}: {e}") from None
    out = Path(args.workload_out)
    try:
        out.write_text(workload_yaml(o, args.workload_from), encoding="utf-8")
    except OSError as e:
        raise ValueError(f"--workload-out {out}: {e.strerror or e}") from None
    return str(out)
