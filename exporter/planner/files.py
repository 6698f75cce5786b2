"""What `fleetwatch plan` reads: the workload YAML, a model's config.json, a GPU catalogue
override, a concurrency sweep (vLLM's `vllm bench serve --save-result` JSON, or CSV), and for
Step 13 a fleetwatch report. Each problem is a ConfigError naming the file, the key and why."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Mapping

from ..config import ConfigError, _Ctx, _load_yaml, parse_duration
from ..model import Slo
from .architecture import Architecture, ArchitectureError, from_hf_config
from .curve import SweepPoint
from .sizing import Lengths, Workload
from ..text import num

MAX_JSON_BYTES = 16 << 20  # a sweep's result files carry per-request arrays: a few MB each


def _seconds(c: _Ctx, v: Any, path: str) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
        return float(v)
    try:
        s = parse_duration(v)
    except ValueError as e:
        raise c.err(path, str(e)) from None
    if s <= 0:
        raise c.err(path, "must be longer than 0s")
    return s


def _lengths(c: _Ctx, v: Any, path: str) -> Lengths:
    m = c.mapping(v, path, {"p50", "p95", "p99"}, {"p50", "p95", "p99"})
    p = {k: c.number(m[k], f"{path}.{k}", minimum=1) for k in ("p50", "p95", "p99")}
    if not p["p50"] <= p["p95"] <= p["p99"]:
        raise c.err(path, f"percentiles must not decrease: p50 {p['p50']:g}, p95 {p['p95']:g}, p99 {p['p99']:g}")
    return Lengths(p["p50"], p["p95"], p["p99"])


WORKLOAD_KEYS = {"input_tokens", "output_tokens", "peak_rps", "average_rps", "slo", "online_share",
                 "concurrency_per_instance", "safety_factor", "simple_share", "shared_prefixes", "lora"}


def load_workload(file: str) -> Workload:
    c = _Ctx(file)
    raw = _load_yaml(file)
    m = c.mapping(raw, "", WORKLOAD_KEYS, {"input_tokens", "output_tokens", "peak_rps", "average_rps", "slo"})
    slo = c.mapping(m["slo"], "slo", {"ttft_p99", "itl_p99"}, {"ttft_p99", "itl_p99"})
    peak = c.number(m["peak_rps"], "peak_rps", minimum=0, strict_min=True)
    average = c.number(m["average_rps"], "average_rps", minimum=0)
    if average > peak:
        raise c.err("average_rps", f"{num(average)} is above peak_rps {num(peak)}")
    lora = c.mapping(m["lora"], "lora", {"adapters", "rank"}, {"adapters", "rank"}) if m.get("lora") else {}
    safety = c.optional(m, "safety_factor", "", lambda v, p: c.number(v, p, minimum=0, maximum=2))
    online = c.optional(m, "online_share", "", lambda v, p: c.number(v, p, minimum=0, maximum=1))
    return Workload(
        input_tokens=_lengths(c, m["input_tokens"], "input_tokens"),
        output_tokens=_lengths(c, m["output_tokens"], "output_tokens"),
        peak_rps=peak, average_rps=average,
        slo=Slo(_seconds(c, slo["ttft_p99"], "slo.ttft_p99"), _seconds(c, slo["itl_p99"], "slo.itl_p99")),
        online_share=1.0 if online is None else online,
        concurrency_per_instance=c.optional(m, "concurrency_per_instance", "",
                                            lambda v, p: c.integer(v, p, minimum=1)) or 32,
        safety_factor=0.2 if safety is None else safety,
        simple_share=c.optional(m, "simple_share", "", lambda v, p: c.number(v, p, minimum=0, maximum=1)) or 0.0,
        shared_prefixes=bool(c.optional(m, "shared_prefixes", "", c.boolean)),
        lora_adapters=c.integer(lora["adapters"], "lora.adapters") if lora else 0,
        lora_rank=c.integer(lora["rank"], "lora.rank", minimum=1) if lora else 0,
    )


def _read_json(file: str) -> Any:
    try:
        p = Path(file)
        if p.stat().st_size > MAX_JSON_BYTES:
            raise ConfigError(file, "", f"larger than {MAX_JSON_BYTES} bytes")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(file, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(file, "", f"cannot read: {e}") from None
    try:
        return json.loads(text)
    except ValueError:
        try:  # JSON lines: one result per line
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as e:
            raise ConfigError(file, "", f"not JSON: {e}") from None


def load_architecture(file: str) -> Architecture:
    """A Hugging Face config.json, or a YAML/JSON block with the same keys (and num_parameters)."""
    doc = _read_json(file) if file.endswith(".json") else _load_yaml(file)
    if not isinstance(doc, dict):
        raise ConfigError(file, "", "expected a JSON object (a model's config.json)")
    try:
        return from_hf_config(doc)
    except ArchitectureError as e:
        raise ConfigError(file, "", str(e)) from None


def _vllm_point(c: _Ctx, doc: Any, where: str) -> SweepPoint:
    if not isinstance(doc, dict):
        raise c.err(where, "expected a vllm bench serve result object")

    def num(*keys: str, required: bool = True) -> float | None:
        for k in keys:
            v = doc.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v)
        if required:
            raise c.err(where, f"no {' or '.join(keys)}")
        return None

    concurrency = doc.get("max_concurrency")
    if not isinstance(concurrency, int) or concurrency <= 0:
        raise c.err(f"{where}.max_concurrency", "a sweep point needs the concurrency it ran at (--max-concurrency)")
    itl = num("p99_itl_ms", "p99_tpot_ms")
    e2e = num("mean_e2el_ms", required=False)
    return SweepPoint(concurrency=concurrency, rps=num("request_throughput") or 0.0,
                      ttft_p99=(num("p99_ttft_ms") or 0.0) / 1000, itl_p99=(itl or 0.0) / 1000,
                      mean_latency=None if e2e is None else e2e / 1000)


def load_sweep(file: str) -> list[SweepPoint]:
    """vLLM's result JSON (one object, a list, JSON lines, or a directory of them), or CSV with columns
    concurrency, rps, ttft_p99, itl_p99 (seconds) and optionally mean_latency, gpu_utilization."""
    c = _Ctx(file)
    p = Path(file)
    if p.is_dir():
        points = []
        for f in sorted(p.glob("*.json")):
            points += load_sweep(str(f))
        if not points:
            raise c.err("", "a directory with no *.json results")
        return points
    if file.endswith(".csv"):
        try:
            rows = list(csv.DictReader(io.StringIO(p.read_text(encoding="utf-8"))))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise c.err("", f"cannot read CSV: {e}") from None
        out = []
        for i, r in enumerate(rows):
            try:
                out.append(SweepPoint(int(r["concurrency"]), float(r["rps"]), float(r["ttft_p99"]), float(r["itl_p99"]),
                                      float(r["mean_latency"]) if r.get("mean_latency") else None,
                                      float(r["gpu_utilization"]) if r.get("gpu_utilization") else None))
            except (KeyError, TypeError, ValueError) as e:
                raise c.err(f"row {i + 2}", f"needs concurrency, rps, ttft_p99, itl_p99 as numbers ({e})") from None
        if not out:
            raise c.err("", "no rows")
        return out
    doc = _read_json(file)
    docs = doc if isinstance(doc, list) else [doc]
    return [_vllm_point(c, d, f"[{i}]" if isinstance(doc, list) else "") for i, d in enumerate(docs)]


def load_catalogue(file: str) -> Mapping[str, Any]:
    raw = _load_yaml(file)
    if not isinstance(raw, dict):
        raise ConfigError(file, "", "expected a mapping of GPU name to fields")
    return raw


def observed(report_file: str, tier: str | None) -> tuple[str, Lengths | None, Lengths | None, float | None]:
    """(tier, input lengths, output lengths, peak RPS) that a fleetwatch JSON report observed."""
    c = _Ctx(report_file)
    doc = _read_json(report_file)
    tiers = doc.get("tiers") if isinstance(doc, dict) else None
    if not isinstance(tiers, dict) or not tiers:
        raise c.err("tiers", "not a fleetwatch report (fleetwatch check --format json)")
    if tier is None:
        if len(tiers) != 1:
            raise c.err("tiers", f"the report has tiers {', '.join(sorted(tiers))}: pick one with --tier")
        tier = next(iter(tiers))
    if tier not in tiers:
        raise c.err("tiers", f"no tier {tier!r} (the report has {', '.join(sorted(tiers))})")
    t = tiers[tier]
    wl = t.get("workload") or {}

    def lengths(key: str) -> Lengths | None:
        b = wl.get(key) or {}
        vals = [b.get(k) for k in ("p50", "p95", "p99")]
        if all(isinstance(v, (int, float)) and v > 0 for v in vals):
            return Lengths(*(float(v) for v in vals))  # type: ignore[arg-type]
        return None

    # the observed peak: the resize verdict's, once it rests on a day of history (before that it is
    # floored by the plan's own peak); else the arrival rate of the report's window
    covers = (t.get("history") or {}).get("covers_seconds")
    peak = (t.get("resize") or {}).get("peak_rps") if isinstance(covers, (int, float)) and covers >= 86400 else None
    rps = ((t.get("metrics") or {}).get("requests_per_second") or {}).get("value")
    seen = [v for v in (peak, rps) if isinstance(v, (int, float)) and v > 0]
    return tier, lengths("input_tokens"), lengths("output_tokens"), max(seen) if seen else None
