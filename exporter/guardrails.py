"""9.4: the gateway guardrails the observed traffic calls for, and the drift that says the
workload is no longer the one the plan (Step 1) was sized for. Pure functions of a window.

- ``max_input_tokens``: 2-3x the observed P95 input length ("enough headroom for legitimate long
  requests while preventing pathological cases from exhausting the KV cache");
- ``max_output_tokens``: from the observed P99 output length, generous but finite (1.5-2.5x);
- ``circuit_breaker_queue_threshold``: 80-90% of Little's Law's maximum safe queue depth,
  ``slo.ttft_p99 x plan.peak_rps`` (the static number of 9.4's worked example).
Each recommendation is a Guardrail (value, low, high, basis); ``value`` is the middle of the range.
"""
from __future__ import annotations

import math
from typing import Callable

from .model import LengthProfile, Plan
from .model import Finding, Guardrail, Status
from .window import Asks, Percentile, Quantity, TierView
from .text import num, plural

INPUT_RANGE = (2.0, 3.0)  # x observed P95 input tokens
OUTPUT_RANGE = (1.5, 2.5)  # x observed P99 output tokens
BREAKER_RANGE = (0.8, 0.9)  # x Little's Law max safe queue depth
RUNAWAY_WARNING = 0.05  # share of requests stopped by max_tokens
RUNAWAY_CRITICAL = 0.20
MIN_FINISHED = 20  # fewer finished requests in the window say nothing about shares
MIN_TAIL_SAMPLES = 10  # a percentile with fewer requests beyond it is noise, not drift (P95: 200, P99: 1000)


# what the recommendations, the drift findings and the runaway finding ask of a window
ASKS = Asks((Percentile("prompt_tokens_per_request", 0.95), Percentile("generation_tokens_per_request", 0.95),
             Percentile("generation_tokens_per_request", 0.99)), finish_reasons=True)

def _range(base: float | None, lo: float, hi: float, rounding: Callable[[float], int], basis: str,
           reason: str) -> Guardrail:
    if base is None:
        return Guardrail(None, None, None, reason)
    return Guardrail(rounding(base * (lo + hi) / 2), rounding(base * lo), rounding(base * hi), basis)


def recommendations(tw: TierView, plan: Plan) -> dict[str, Guardrail]:
    p95_in = tw.quantile("prompt_tokens_per_request", 0.95)
    p99_out = tw.quantile("generation_tokens_per_request", 0.99)
    limit = plan.slo.ttft_p99 * plan.peak_rps
    return {
        "max_input_tokens": _range(
            p95_in.value, *INPUT_RANGE, math.ceil,
            f"{num(INPUT_RANGE[0])}-{num(INPUT_RANGE[1])}x the observed P95 input of {p95_in.value or 0:.0f} tokens "
            f"({p95_in.samples} requests)", f"input length unknown: {p95_in.reason}"),
        "max_output_tokens": _range(
            p99_out.value, *OUTPUT_RANGE, math.ceil,
            f"{num(OUTPUT_RANGE[0])}-{num(OUTPUT_RANGE[1])}x the observed P99 output of {p99_out.value or 0:.0f} tokens "
            f"({p99_out.samples} requests)", f"output length unknown: {p99_out.reason}"),
        "circuit_breaker_queue_threshold": _range(
            limit, *BREAKER_RANGE, math.floor,
            f"{num(BREAKER_RANGE[0])}-{num(BREAKER_RANGE[1])}x Little's Law max safe queue depth at the plan's peak: "
            f"{num(plan.slo.ttft_p99)} s TTFT SLO x {num(plan.peak_rps)} peak RPS = {num(limit)} queued requests",
            "no SLO or peak"),
    }


def _drift(kind: str, what: str, q: float, observed: Quantity, planned: float | None, tol: float) -> Finding | None:
    enough = observed.samples * (1 - q) >= MIN_TAIL_SAMPLES - 1e-9
    if observed.value is None or not enough or planned is None or planned <= 0:
        return None
    observed_value = observed.value
    change = observed_value / planned - 1
    if abs(change) <= tol:
        return None
    return Finding(kind, Status.WARNING,
                   f"{what} is {num(observed_value)} tokens over {plural(observed.samples, 'request')}, "
                   f"{abs(change) * 100:.0f}% {'above' if change > 0 else 'below'} the plan's {num(planned)} "
                   f"(tolerance {tol * 100:.0f}%): the workload has drifted from the plan's workload profile; "
                   f"re-characterize it before it breaches the SLO.")


def drift_findings(tw: TierView, plan: Plan) -> list[Finding]:
    """Length percentiles against the plan's ``workload:`` block; nothing when either is unknown."""
    wl = plan.workload
    if wl is None:
        return []
    out: list[Finding] = []
    tol = wl.drift_tolerance
    prof_in = wl.input_tokens or LengthProfile()
    f = _drift("input_length_drift", "input P95", 0.95, tw.quantile("prompt_tokens_per_request", 0.95),
               prof_in.p95, tol)
    if f is not None:
        out.append(f)
    prof_out = wl.output_tokens or LengthProfile()
    for label, q, planned in (("output P95", 0.95, prof_out.p95), ("output P99", 0.99, prof_out.p99)):
        f = _drift("output_length_drift", label, q, tw.quantile("generation_tokens_per_request", q), planned, tol)
        if f is not None:
            out.append(f)
            break  # one output drift finding per tier: P95 first, then P99
    return out


def runaway_finding(tw: TierView) -> Finding | None:
    """Requests stopped by max_tokens (finished_reason="length") as a share of those finished."""
    length = tw.increase("requests_finished_reason:length")
    total = sum(v or 0.0 for v in (tw.increase(k) for k in tw.counter_keys("requests_finished_reason:")))
    if length is None or total < MIN_FINISHED:
        return None
    share = length / total
    if share <= RUNAWAY_WARNING:
        return None
    status = Status.CRITICAL if share > RUNAWAY_CRITICAL else Status.WARNING
    return Finding("runaway_generation", status,
                   f"{share * 100:.0f}% of finished requests hit max_tokens (finished_reason=length; "
                   f"{RUNAWAY_WARNING * 100:.0f}% is the warning line): runaway generation holds decode slots. "
                   f"Enforce max_new_tokens at the gateway (see guardrails) and look for repetition-loop prompts; "
                   f"the output-length profile the plan was sized on no longer holds.")
