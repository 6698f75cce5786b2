"""The GPU catalogue of Step 2: HBM, bandwidth, dense tensor throughput per precision, the fabric
between GPUs of a node, and an hourly price. Built-in figures are the vendors' published dense
(no sparsity) numbers; prices are list-price placeholders that a ``--gpu-catalog`` YAML (same
keys) overrides, as it overrides or adds any GPU."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

GB = 1e9


@dataclass(frozen=True)
class Gpu:
    name: str
    hbm_gb: float
    hbm_tb_s: float
    tflops: Mapping[str, float]  # dense tensor TFLOPS (INT8: TOPS) by precision; absent: no tensor-core path
    interconnect: str  # "nvlink" | "infinity_fabric" | "pcie"
    interconnect_gb_s: float
    hour_usd: float
    gpus_per_node: int = 8

    @property
    def hbm_bytes(self) -> float:
        return self.hbm_gb * GB

    @property
    def switched_fabric(self) -> bool:
        """NVLink-class links between every GPU of the node: what TP > 2 needs."""
        return self.interconnect in ("nvlink", "infinity_fabric")


def _tf(fp16: float, fp8: float | None, int8: float | None) -> dict[str, float]:
    out = {"fp16": fp16, "bf16": fp16}
    if fp8 is not None:
        out["fp8"] = fp8
    if int8 is not None:
        out["int8"] = int8
        out["int4"] = int8  # weight-only INT4 computes at the activation precision
    return out


CATALOGUE: dict[str, Gpu] = {g.name: g for g in (
    Gpu("H100", 80, 3.35, _tf(989, 1979, 1979), "nvlink", 900, 4.10),
    Gpu("H200", 141, 4.8, _tf(989, 1979, 1979), "nvlink", 900, 5.00),
    Gpu("A100", 80, 2.039, _tf(312, None, 624), "nvlink", 600, 1.80),
    Gpu("L40S", 48, 0.864, _tf(362, 733, 733), "pcie", 64, 1.50),
    Gpu("MI300X", 192, 5.3, _tf(1307, 2615, 2615), "infinity_fabric", 896, 4.50),
    Gpu("B200", 180, 8.0, _tf(2250, 4500, 4500), "nvlink", 1800, 7.00),
)}
ALIASES = {"H100-SXM": "H100", "H100SXM": "H100", "A100-80GB": "A100", "A100_80GB": "A100"}


def lookup(name: str, catalogue: Mapping[str, Gpu] = CATALOGUE) -> Gpu:
    key = name.upper().replace(" ", "")
    key = ALIASES.get(key, key)
    for n, g in catalogue.items():
        if n.upper() == key:
            return g
    raise KeyError(f"unknown GPU {name} (known: {', '.join(sorted(catalogue))}; add it with --gpu-catalog)")


INTERCONNECTS = ("nvlink", "infinity_fabric", "pcie")
PRECISIONS = ("fp16", "bf16", "fp8", "int8", "int4")
MAX_FIGURE = 1e7  # GB, TB/s, TFLOPS, GB/s, USD an hour: no GPU comes near
MIN_FIGURE = 1e-3  # and none is this small: a figure of 1e-320 would overflow every ratio taken of it


class CatalogueError(ValueError):
    """A catalogue entry fleetwatch cannot use: ``path`` (GPU.key) and why."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


def _figure(v: Any, path: str) -> float:
    """A finite figure within [MIN_FIGURE, MAX_FIGURE], range-checked before any arithmetic."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)) \
            or not MIN_FIGURE <= v <= MAX_FIGURE:
        shown = f"a {len(str(abs(v)))}-digit number" if isinstance(v, int) and abs(v) > 10 ** 20 else str(v)[:40]
        raise CatalogueError(path, f"expected a number from {MIN_FIGURE:g} to {MAX_FIGURE:.0e}, got {shown}")
    return float(v)


def _fields(name: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in fields.items():
        path = f"{name}.{key}"
        if key in ("hbm_gb", "hbm_tb_s", "interconnect_gb_s"):
            out[key] = _figure(v, path)
        elif key == "hour_usd":  # above 0: the ranking is per dollar (an owned GPU has an amortized price)
            out[key] = _figure(v, path)
        elif key == "tflops":
            if not isinstance(v, dict) or not v:
                raise CatalogueError(path, f"expected a mapping of precision ({', '.join(PRECISIONS)}) to TFLOPS")
            bad = sorted(str(k) for k in v if k not in PRECISIONS)
            if bad:
                raise CatalogueError(path, f"unknown precision {bad[0][:20]} (known: {', '.join(PRECISIONS)})")
            out[key] = {str(k): _figure(x, f"{path}.{k}") for k, x in v.items()}
        elif key == "interconnect":
            if v not in INTERCONNECTS:
                raise CatalogueError(path, f"expected one of {', '.join(INTERCONNECTS)}, got {str(v)[:40]}")
            out[key] = v
        elif key == "gpus_per_node":
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 64:
                raise CatalogueError(path, f"expected a whole number from 1 to 64, got {str(v)[:40]}")
            out[key] = v
        else:
            raise CatalogueError(name, f"unknown key {str(key)[:40]} (known: hbm_gb, hbm_tb_s, tflops, interconnect, "
                                       f"interconnect_gb_s, hour_usd, gpus_per_node)")
    return out


def merge(overrides: Mapping[str, Any], base: Mapping[str, Gpu] = CATALOGUE) -> dict[str, Gpu]:
    """The catalogue with ``overrides`` (name -> any of hbm_gb, hbm_tb_s, tflops, interconnect,
    interconnect_gb_s, hour_usd, gpus_per_node) applied; a new name must give every key. Every figure
    is checked (CatalogueError names GPU.key): a catalogue is a file someone else may have written."""
    out = dict(base)
    for raw_name, fields in overrides.items():
        name = str(raw_name)
        if not isinstance(fields, dict):
            raise CatalogueError(name, "expected a mapping of GPU fields")
        checked = _fields(name, fields)
        current = next((g for n, g in out.items() if n.upper() == name.upper()), None)
        if current is None:
            missing = {"hbm_gb", "hbm_tb_s", "tflops", "interconnect", "interconnect_gb_s", "hour_usd"} - set(checked)
            if missing:
                raise CatalogueError(name, f"a new GPU needs {', '.join(sorted(missing))}")
            out[name] = Gpu(name=name, **checked)
        else:
            out[current.name] = replace(current, **checked)
    return out
