"""`fleetwatch plan`'s three outputs: the plan YAML that `serve` reads, the human report, and JSON."""
from __future__ import annotations

import json
import math
from typing import Any

import yaml

from .curve import Curve
from ..config import exact_duration
from ..text import num, plural
from .sizing import RESOURCE_WORDS, SizingResult, Workload


_ms = exact_duration


def plan_document(result: SizingResult, wl: Workload, curve: Curve | None, hour_usd: float) -> dict[str, Any]:
    """The plan in the config's format (DESIGN.md); ``benchmark`` is null without a sweep."""
    return {
        "gpus_per_instance": result.tp * result.pp,
        "instances": result.instances,
        "gpu_hour_cost_usd": hour_usd,
        "peak_rps": wl.peak_rps,
        "safety_factor": wl.safety_factor,
        "slo": {"ttft_p99": _ms(wl.slo.ttft_p99), "itl_p99": _ms(wl.slo.itl_p99)},
        "benchmark": curve.as_benchmark() if curve is not None else None,
        "workload": {"input_tokens": {k: round(getattr(wl.input_tokens, k)) for k in ("p50", "p95", "p99")},
                     "output_tokens": {k: round(getattr(wl.output_tokens, k)) for k in ("p50", "p95", "p99")},
                     "prefix_reuse": wl.shared_prefixes},
        "precision": {"weights": result.precision.weights, "kv_cache": result.precision.kv_cache},
        "predicted": {"tokens_per_gpu_hour": _round(result.tokens_per_gpu_hour),
                      "average_utilization": _round(result.average_utilization, 4),
                      "kv_cache_tokens": result.kv_capacity_tokens,
                      "source": "roofline estimate" if result.estimate else "sweep" if curve is not None else None},
    }


def _round(x: float | None, digits: int = 0) -> float | None:
    return None if x is None else round(x, digits) if digits else float(round(x))


def plan_yaml(result: SizingResult, wl: Workload, curve: Curve | None, hour_usd: float) -> str:
    head = [f"# Sizing plan (`fleetwatch plan`): {result.gpu} at TP {result.tp}"
            + (f" x PP {result.pp}" if result.pp > 1 else "") + f", {result.precision.weights} weights.",
            f"# Binding constraint: {result.binding_constraint}: {result.binding_reason}"]
    if curve is None:
        head.append("# Not a complete plan yet: no sweep (--sweep), so the benchmark is null"
                    + (" and the instance count is a roofline ESTIMATE" if result.estimate else "")
                    + ". Run a concurrency sweep of this configuration (the benchmark) and plan again.")
    head += [f"# warning: {w}" for w in result.warnings]
    doc = plan_document(result, wl, curve, hour_usd)
    return "\n".join(head) + "\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=110)


def _gb(b: float | None) -> str:
    return "n/a" if b is None else f"{b / 1e9:.1f} GB"


def report_text(result: SizingResult) -> str:
    s = result.steps
    m = s["4_memory_floor"]["model"]
    out = [f"fleetwatch plan: {result.gpu}, weights {result.precision.weights}, "
           f"KV cache {result.precision.kv_cache}", "",
           f"model          {num(m['parameters'] / 1e9)}B parameters ({num(m['active_parameters'] / 1e9)}B active); "
           f"{m['model']}" + (f"; {m['quantization']}" if m["quantization"] else "")]
    hw = s["2_hardware"]
    out.append(f"hardware       {hw['archetype']} ({hw['why']}); binding resource {RESOURCE_WORDS[hw['binding_resource']]}; "
               f"best per dollar: {', '.join(r['gpu'] for r in hw['ranking'][:3]) or 'n/a'}")
    out += [f"        note: {n}" for n in hw["notes"]]
    r = s["3_routing"]
    routing = 'multi-tier' if r['multi_tier'] else 'single fleet' if r['multi_tier'] is False else 'unknown'
    out.append(f"routing        {routing}: {r['why']}")
    for t in r.get("tiers") or []:
        p = t.get("plan")
        out.append(f"        tier {t['tier']}: {num(t['peak_rps'], 4)} peak RPS: " + (
            f"{p['instances']} x {p['gpu']} TP {p['tp']} ({p['total_gpus']} GPUs)" if p and p["instances"] is not None
            else f"{p['min_gpus']} x {p['gpu']} per instance, TP {p['tp']}; no sweep" if p else t.get("reason", "")))
    for key, label in (("4_memory_floor", "memory floor  "), ("5_precision", "at precision  ")):
        m = s[key]
        out.append(f"{label} {_gb(m['memory_floor_bytes'])} = weights {_gb(m['weights_bytes'])} + activations "
                   f"{_gb(m['activations_bytes'])} + KV {_gb(m['kv_cache_bytes'])} + adapters "
                   f"{_gb(m['adapters_bytes'])} + framework {_gb(m['framework_overhead_bytes'])} "
                   f"({m['weights']}/{m['kv_cache']}, {m['memory_model']} memory model): {m['min_gpus']} GPUs; "
                   f"KV {m['kv_bytes_per_token']:,} B/token")
    m5 = s["5_precision"]
    out.append(f"kv cache       {m5['kv_capacity']['line']} (TP {result.tp}"
               + (f" x PP {result.pp}" if result.pp > 1 else "") + ")")
    if m5.get("overhead_source"):
        out.append(f"        memory: {m5['why']}; overhead from {m5['overhead_source']}")
    m4 = s["4_memory_floor"]
    out.append(f"        fleet KV at P95 concurrency: {_gb(m4['fleet_kv_cache_bytes'])} ({m4['fleet_why']})")
    ch = s["5_precision"]
    if ch["changes"]:
        out.append("        the precision changed: " + "; ".join(
            f"{k} {v['native'] / 1e9:.1f} -> {v['chosen'] / 1e9:.1f} GB" if k.endswith("bytes")
            else f"{k} {v['native']} -> {v['chosen']}" for k, v in ch["changes"].items())
            + f"; TP {ch['tp']['native']} -> {ch['tp']['chosen']}; replicas per node "
              f"{ch['replicas_per_node']['native']} -> {ch['replicas_per_node']['chosen']}")
    p = s["6_parallelism"]
    out.append(f"parallelism    TP {p['tp']}, PP {p['pp']}" + (f", EP {p['ep']}" if p.get("ep") else "")
               + f": {p['why']}")
    b = s["7_10_benchmark"]
    if b.get("estimate"):
        out.append(f"benchmark      ESTIMATE (roofline, no sweep): about {num(b['usable_rps_per_instance'])} RPS per "
                   f"instance, batch {b['batch']}, step {num(b['step_ms'])} ms, prefill {num(b['prefill_s'])} s; "
                   f"assumes {b['assumptions']}")
    elif "reason" in b:
        out.append(f"benchmark      n/a: {b['reason']}")
    else:
        gap = b["littles_law_gap"]
        out.append(f"benchmark      usable {num(b['usable_rps_per_instance'])} RPS per instance at SLO (bound by "
                   f"{b['binding']}), C_max {b['c_max']}, Little's Law gap "
                   f"{'n/a' if gap is None else f'{gap:.2f}x'}")
        out += [f"        warning: {w}" for w in b["warnings"]]
    out.append("checklist      " + "; ".join(f"{i['item']} {'ON' if i['on'] else 'off'}" for i in s["8_9_checklist"]))
    out += [f"        {i['item']}: {i['why']}" for i in s["8_9_checklist"]]
    f = s["11_fleet"]
    out.append("fleet          " + (f"{plural(f['instances'], 'instance')}, {plural(f['total_gpus'], 'GPU')}: {f['why']}"
                                          if "reason" not in f else f"n/a: {f['reason']}"))
    c = s["12_cost"]
    if "reason" in c:
        out.append(f"cost           n/a: {c['reason']}")
    else:
        util = c["average_utilization"]
        tph = c.get("tokens_per_gpu_hour")
        out.append(f"cost           {num(c['cost_per_million_tokens_usd'])} USD per million tokens, "
                   f"{c['annual_cost_usd']:,.0f} USD a year, average utilization "
                   f"{'n/a' if util is None else f'{util:.0%}'}, "
                   f"{'n/a' if tph is None else f'{tph:,.0f}'} tokens per GPU-hour at average load"
                   + (" (estimate)" if result.estimate else "") + f" ({c['why']})")
    out += [f"warning        {w}" for w in result.warnings]
    out += ["", f"binding constraint: {result.binding_constraint}: {result.binding_reason}"]
    return "\n".join(out)


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def report_json(result: SizingResult, plan: dict[str, Any]) -> str:
    return json.dumps(_clean({**result.as_dict(), "plan": plan}), indent=2, allow_nan=False)
