"""What `fleetwatch plan` reads: the workload YAML, a model's config.json, a GPU catalogue
override, a concurrency sweep (vLLM's `vllm bench serve --save-result` JSON, or CSV), and for
Step 13 a fleetwatch report. Each problem is a ConfigError naming the file, the key and why."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Mapping

from ..config import MAX_NUMBER, MAX_RPS, ConfigError, Reader, load_yaml, parse_duration
from ..files import loads_json, read_text
from ..model import Slo
from .architecture import Architecture, ArchitectureError, count_params, from_hf_config
from .curve import SweepPoint
from .gpus import CatalogueError, Gpu, canonical, merge
from .sizing import Lengths, Workload
from ..text import num

MAX_JSON_BYTES = 16 << 20  # a sweep's result files carry per-request arrays: a few MB each
MAX_SWEEP_FILES = 1000  # result files in a sweep directory
MAX_MEASURE = 1e9  # RPS, seconds, utilization: no real sweep measures more
MAX_CONCURRENCY = 1_000_000


MAX_TOKENS = 10_000_000  # a request's prompt or output: past any model's context
MAX_SLO = 86_400.0  # seconds: a latency objective longer than a day is a typo
MIN_SLO = 0.001  # and one under a millisecond is no latency an engine reaches


def _seconds(c: Reader, v: Any, path: str) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        s = c.number(v, path, minimum=0, strict_min=True)
    else:
        try:
            s = parse_duration(v)
        except ValueError as e:
            raise c.err(path, str(e)) from None
        if s <= 0:
            raise c.err(path, "must be longer than 0s")
    if not MIN_SLO <= s <= MAX_SLO:
        raise c.err(path, f"must be from 1ms to 1d, got {num(s)} s")
    return s


def _lengths(c: Reader, v: Any, path: str) -> Lengths:
    m = c.mapping(v, path, {"p50", "p95", "p99"}, {"p50", "p95", "p99"})
    p = {k: c.number(m[k], f"{path}.{k}", minimum=1, maximum=MAX_TOKENS) for k in ("p50", "p95", "p99")}
    if not p["p50"] <= p["p95"] <= p["p99"]:
        raise c.err(path, f"percentiles must not decrease: p50 {p['p50']:g}, p95 {p['p95']:g}, p99 {p['p99']:g}")
    return Lengths(p["p50"], p["p95"], p["p99"])


WORKLOAD_KEYS = {"input_tokens", "output_tokens", "peak_rps", "average_rps", "slo", "online_share",
                 "concurrency_per_instance", "safety_factor", "simple_share", "shared_prefixes", "lora", "observed"}
# what `plan --workload-from` records beside the figures: where they came from (read, not used)
OBSERVED_KEYS = {"source", "tier", "range", "at", "requests", "prefix_cache_hit_ratio", "daily_profile_rps"}


def load_workload(file: str) -> Workload:
    c = Reader(file)
    raw = load_yaml(file, "workload")
    m = c.mapping(raw, "", WORKLOAD_KEYS, {"input_tokens", "output_tokens", "peak_rps", "average_rps", "slo"})
    slo = c.mapping(m["slo"], "slo", {"ttft_p99", "itl_p99"}, {"ttft_p99", "itl_p99"})
    peak = c.number(m["peak_rps"], "peak_rps", minimum=0, strict_min=True, maximum=MAX_RPS)
    average = c.number(m["average_rps"], "average_rps", minimum=0, maximum=MAX_RPS)
    if average > peak:
        raise c.err("average_rps", f"{num(average)} is above peak_rps {num(peak)}")
    lora = c.mapping(m["lora"], "lora", {"adapters", "rank"}, {"adapters", "rank"}) if m.get("lora") else {}
    if m.get("observed") is not None:
        c.mapping(m["observed"], "observed", OBSERVED_KEYS)
    safety = c.optional(m, "safety_factor", "", lambda v, p: c.number(v, p, minimum=0, maximum=2))
    online = c.optional(m, "online_share", "", lambda v, p: c.number(v, p, minimum=0, maximum=1))
    return Workload(
        input_tokens=_lengths(c, m["input_tokens"], "input_tokens"),
        output_tokens=_lengths(c, m["output_tokens"], "output_tokens"),
        peak_rps=peak, average_rps=average,
        slo=Slo(_seconds(c, slo["ttft_p99"], "slo.ttft_p99"), _seconds(c, slo["itl_p99"], "slo.itl_p99")),
        online_share=1.0 if online is None else online,
        concurrency_per_instance=c.optional(m, "concurrency_per_instance", "",
                                            lambda v, p: c.integer(v, p, minimum=1, maximum=1_000_000)) or 32,
        safety_factor=0.2 if safety is None else safety,
        simple_share=c.optional(m, "simple_share", "", lambda v, p: c.number(v, p, minimum=0, maximum=1)) or 0.0,
        shared_prefixes=bool(c.optional(m, "shared_prefixes", "", c.boolean)),
        lora_adapters=c.integer(lora["adapters"], "lora.adapters", maximum=1_000_000) if lora else 0,
        lora_rank=c.integer(lora["rank"], "lora.rank", minimum=1, maximum=65_536) if lora else 0,
    )


def _read_json(file: str, what: str) -> Any:
    text = read_text(file, MAX_JSON_BYTES, what)
    try:
        return loads_json(text, file)
    except ConfigError as whole:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) < 2:
            raise
        try:  # JSON lines: one result per line
            return [loads_json(line, file) for line in lines]
        except ConfigError:
            raise whole from None


def load_architecture(file: str) -> Architecture:
    """A Hugging Face config.json, or a YAML/JSON block with the same keys (and num_parameters)."""
    doc = _read_json(file, "model config") if file.endswith(".json") else load_yaml(file, "model config")
    if not isinstance(doc, dict):
        raise ConfigError(file, "", "expected a JSON object (a model's config.json)")
    try:
        arch = from_hf_config(doc)
        if arch.params is None:
            count_params(arch)  # every shape the parameter count needs is there, said now, not mid-sizing
        return arch
    except ArchitectureError as e:
        raise ConfigError(file, "", str(e)) from None


def _vllm_point(c: Reader, doc: Any, where: str) -> SweepPoint:
    if not isinstance(doc, dict):
        raise c.err(where, "expected a vllm bench serve result object")

    def num(*keys: str, required: bool = True) -> float | None:
        for k in keys:
            v = doc.get(k)
            if v is not None and not isinstance(v, bool):
                return _measure(c, v, where, k)
        if required:
            raise c.err(where, f"no {' or '.join(keys)}")
        return None

    concurrency = doc.get("max_concurrency")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 0 < concurrency <= MAX_CONCURRENCY:
        raise c.err(f"{where}.max_concurrency", "a sweep point needs the concurrency it ran at (--max-concurrency)")
    itl = num("p99_itl_ms", "p99_tpot_ms")
    e2e = num("mean_e2el_ms", required=False)

    def text(*keys: str) -> str | None:
        v = next((doc[k] for k in keys if isinstance(doc.get(k), str) and doc[k].strip()), None)
        return v.strip()[:200] if v else None

    return SweepPoint(concurrency=concurrency, rps=num("request_throughput") or 0.0,
                      ttft_p99=(num("p99_ttft_ms") or 0.0) / 1000, itl_p99=(itl or 0.0) / 1000,
                      mean_latency=None if e2e is None else e2e / 1000,
                      itl_from_tpot=doc.get("p99_itl_ms") is None, model=text("model_id", "model"),
                      gpu=text("gpu", "gpu_type", "device", "hardware"))


def model_names(file: str, arch: Architecture) -> set[str]:
    """What the plan's model is called: the config's _name_or_path, the folder that holds it, and the
    Hugging Face cache's models--org--name, each reduced to its last part, lower-case."""
    names = {arch.name}
    p = Path(file).resolve()
    for part in p.parts[:-1]:
        if part.startswith("models--"):
            names.add(part.split("--")[-1])
    names.add(p.parent.name)
    return {n.rstrip("/").rsplit("/", 1)[-1].lower() for n in names if n}


def sweep_warnings(points: list[SweepPoint], plan_models: set[str], gpu: Gpu,
                   catalogue: Mapping[str, Gpu]) -> list[str]:
    """What a sweep says that does not match the plan: ITL read from TPOT, another model, another GPU."""
    out = []
    tpot = sorted({p.concurrency for p in points if p.itl_from_tpot})
    if tpot:
        out.append(f"the sweep has no p99_itl_ms at concurrency {', '.join(map(str, tpot[:5]))}"
                   + ("..." if len(tpot) > 5 else "") + ": its p99_tpot_ms (time per output token, averaged per "
                   "request) stands in for ITL P99, and understates the P99 of single steps")
    models = sorted({p.model for p in points if p.model})
    other = [m for m in models if m.rstrip("/").rsplit("/", 1)[-1].lower() not in plan_models]
    if other and plan_models:
        out.append(f"the sweep ran {', '.join(other[:3])}, not the planned model ({', '.join(sorted(plan_models))}): "
                   f"its throughput is another model's")
    gpus = sorted({p.gpu for p in points if p.gpu})
    wrong = [g for g in gpus if canonical(g, catalogue) != gpu.name and g.upper() != gpu.name.upper()]
    if wrong:
        out.append(f"the sweep ran on {', '.join(wrong[:3])}, not {gpu.name}: its throughput is another GPU's")
    return out


def load_sweep(file: str) -> list[SweepPoint]:
    """vLLM's result JSON (one object, a list, JSON lines, or a directory of them), or CSV with columns
    concurrency, rps, ttft_p99, itl_p99 (seconds) and optionally mean_latency, gpu_utilization."""
    c = Reader(file)
    p = Path(file)
    if p.is_dir():
        points = []
        files = sorted(p.glob("*.json"))
        if len(files) > MAX_SWEEP_FILES:
            raise c.err("", f"{len(files)} result files; a sweep has at most {MAX_SWEEP_FILES}")
        for f in files:
            points += load_sweep(str(f))
        if not points:
            raise c.err("", "a directory with no *.json results")
        return points
    if file.endswith(".csv"):
        try:
            rows = csv.DictReader(io.StringIO(read_text(file, MAX_JSON_BYTES, "sweep")))
            out = [_csv_point(c, r, i + 2) for i, r in enumerate(rows)]
        except csv.Error as e:
            raise c.err("", f"not CSV: {e}") from None
        if not out:
            raise c.err("", "no rows")
        return out
    doc = _read_json(file, "sweep")
    docs = doc if isinstance(doc, list) else [doc]
    return [_vllm_point(c, d, f"[{i}]" if isinstance(doc, list) else "") for i, d in enumerate(docs)]


def _measure(c: Reader, v: Any, where: str, key: str, *, required: bool = True) -> float | None:
    """A sweep's number: finite, not negative, and not absurd (a latency of years, a billion RPS)."""
    if v is None or v == "":
        if required:
            raise c.err(where, f"needs {key}")
        return None
    try:
        x = float(v)
    except (TypeError, ValueError, OverflowError):
        raise c.err(where, f"{key}: expected a number, got {str(v)[:40]}") from None
    if not math.isfinite(x) or x < 0 or x > MAX_MEASURE:
        raise c.err(where, f"{key}: expected a number from 0 to {MAX_MEASURE:.0e}, got {str(v)[:40]}")
    return x


def _csv_point(c: Reader, r: Mapping[str, Any], row: int) -> SweepPoint:
    where = f"row {row}"
    conc = _measure(c, r.get("concurrency"), where, "concurrency")
    assert conc is not None
    if conc != int(conc) or not 0 < conc <= MAX_CONCURRENCY:
        raise c.err(where, f"concurrency: expected a whole number from 1 to {MAX_CONCURRENCY:,}")
    rps, ttft, itl = (_measure(c, r.get(k), where, k) or 0.0 for k in ("rps", "ttft_p99", "itl_p99"))
    return SweepPoint(int(conc), rps, ttft, itl,
                      _measure(c, r.get("mean_latency"), where, "mean_latency", required=False),
                      _measure(c, r.get("gpu_utilization"), where, "gpu_utilization", required=False))


def load_catalogue(file: str) -> dict[str, Gpu]:
    """The built-in catalogue with the file's GPUs added or overridden."""
    raw = load_yaml(file, "GPU catalogue")
    if not isinstance(raw, dict):
        raise ConfigError(file, "", "expected a mapping of GPU name to fields")
    try:
        return merge(raw)
    except CatalogueError as e:
        raise ConfigError(file, e.path, e.reason) from None


def observed(report_file: str, tier: str | None) -> tuple[str, Lengths | None, Lengths | None, float | None]:
    """(tier, input lengths, output lengths, peak RPS) that a fleetwatch JSON report observed."""
    c = Reader(report_file)
    doc = _read_json(report_file, "report")
    tiers = doc.get("tiers") if isinstance(doc, dict) else None
    if not isinstance(tiers, dict) or not tiers:
        raise c.err("tiers", "not a fleetwatch report (fleetwatch check --format json)")
    if tier is None:
        if len(tiers) != 1:
            raise c.err("tiers", f"the report has tiers {', '.join(sorted(tiers))}: pick one with --tier")
        tier = next(iter(tiers))
    if tier not in tiers:
        raise c.err("tiers", f"no tier {tier!r} (the report has {', '.join(sorted(tiers))})")
    t = _section(c, tiers[tier], f"tiers.{tier}")
    wl = _section(c, t.get("workload"), f"tiers.{tier}.workload")

    def figure(v: Any, path: str, maximum: float) -> float | None:
        """A figure the report observed: None when it had none (null, or absent); else in range."""
        if v is None:
            return None
        return c.number(v, path, minimum=0, maximum=maximum)

    def lengths(key: str) -> Lengths | None:
        b = _section(c, wl.get(key), f"tiers.{tier}.workload.{key}")
        vals = [figure(b.get(k), f"tiers.{tier}.workload.{key}.{k}", MAX_TOKENS) for k in ("p50", "p95", "p99")]
        if all(v is not None and v > 0 for v in vals):
            return Lengths(*vals)  # type: ignore[arg-type]
        return None

    # the observed peak: the resize verdict's, once it rests on a day of history (before that it is
    # floored by the plan's own peak); else the arrival rate of the report's window
    where = f"tiers.{tier}"
    covers = figure(_section(c, t.get("history"), f"{where}.history").get("covers_seconds"),
                    f"{where}.history.covers_seconds", MAX_NUMBER)
    peak = figure(_section(c, t.get("resize"), f"{where}.resize").get("peak_rps"), f"{where}.resize.peak_rps", MAX_RPS) \
        if covers is not None and covers >= 86400 else None
    rps_row = _section(c, _section(c, t.get("metrics"), f"{where}.metrics").get("requests_per_second"),
                       f"{where}.metrics.requests_per_second")
    rps = figure(rps_row.get("value"), f"{where}.metrics.requests_per_second.value", MAX_RPS)
    seen = [v for v in (peak, rps) if v is not None and v > 0]
    return tier, lengths("input_tokens"), lengths("output_tokens"), max(seen) if seen else None


def _section(c: Reader, v: Any, path: str) -> Mapping[str, Any]:
    """A report's object at ``path``: absent or null is empty, anything but an object is an error."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise c.err(path, "expected an object (is this a fleetwatch check --format json report?)")
    return v
