"""The GPU catalogue of Step 2: HBM, bandwidth, dense tensor throughput per precision, the fabric
between GPUs of a node, and an hourly price. Built-in figures are the vendors' published dense
(no sparsity) numbers; prices are list-price placeholders that a ``--gpu-catalog`` YAML (same
keys) overrides, as it overrides or adds any GPU."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

GB = 1e9
GIB = 1 << 30


@dataclass(frozen=True)
class Gpu:
    name: str
    hbm_gb: float  # nominal, as the datasheet says
    hbm_tb_s: float
    tflops: Mapping[str, float]  # dense tensor TFLOPS (INT8: TOPS) by precision; absent: no tensor-core path
    interconnect: str  # "nvlink" | "infinity_fabric" | "pcie"
    interconnect_gb_s: float
    hour_usd: float
    gpus_per_node: int = 8
    reported_gib: float | None = None  # what the device reports as its total (torch / vLLM's total_gpu_memory)

    @property
    def hbm_bytes(self) -> float:
        return self.hbm_gb * GB

    @property
    def reported_bytes(self) -> float:
        """The memory vLLM's gpu_memory_utilization is a share of: the device's reported total."""
        return self.reported_gib * GIB if self.reported_gib else self.hbm_bytes

    @property
    def switched_fabric(self) -> bool:
        """NVLink-class links between every GPU of the node: what TP > 2 needs."""
        return self.interconnect in ("nvlink", "infinity_fabric")


def _tf(fp16: float, fp8: float | None, int8: float | None) -> dict[str, float]:
    out = {"fp16": fp16, "bf16": fp16}
    if fp8 is not None:
        out["fp8"] = fp8
        out["mxfp4"] = fp8  # MXFP4 weights are dequantized to the FP8/16 path before Blackwell
    if int8 is not None:
        out["int8"] = int8
        out["int4"] = int8  # weight-only INT4 computes at the activation precision
    return out


# Reported totals: what torch.cuda.mem_get_info (and so vLLM's "total_gpu_memory") gives on each part,
# a little under the nominal size (ECC and the driver's reservation): 79.19 GiB on an 80 GB H100, not
# 80e9 bytes. Prices are list-price placeholders; --gpu-catalog overrides any of it.
CATALOGUE: dict[str, Gpu] = {g.name: g for g in (
    Gpu("H100-SXM", 80, 3.35, _tf(989, 1979, 1979), "nvlink", 900, 4.10, reported_gib=79.19),
    Gpu("H100-PCIe", 80, 2.0, _tf(756, 1513, 1513), "pcie", 128, 3.50, reported_gib=79.19),
    Gpu("H100-NVL", 94, 3.9, _tf(835, 1671, 1671), "pcie", 128, 3.80, reported_gib=93.1),
    Gpu("H200", 141, 4.8, _tf(989, 1979, 1979), "nvlink", 900, 5.00, reported_gib=139.8),
    Gpu("H20", 96, 4.0, _tf(148, 296, 296), "nvlink", 900, 2.00, reported_gib=95.0),
    Gpu("A100-40GB", 40, 1.555, _tf(312, None, 624), "nvlink", 600, 1.30, reported_gib=39.50),
    Gpu("A100-80GB", 80, 2.039, _tf(312, None, 624), "nvlink", 600, 1.80, reported_gib=79.15),
    Gpu("L4", 24, 0.3, _tf(121, 242, 242), "pcie", 64, 0.80, reported_gib=22.03),
    Gpu("L40S", 48, 0.864, _tf(362, 733, 733), "pcie", 64, 1.50, reported_gib=44.39),
    Gpu("MI300X", 192, 5.3, _tf(1307, 2615, 2615), "infinity_fabric", 896, 4.50, reported_gib=191.98),
    Gpu("MI325X", 256, 6.0, _tf(1307, 2615, 2615), "infinity_fabric", 896, 5.50, reported_gib=255.98),
    Gpu("B200", 180, 8.0, _tf(2250, 4500, 4500), "nvlink", 1800, 7.00, reported_gib=178.4),
    Gpu("GB200", 186, 8.0, _tf(2500, 5000, 5000), "nvlink", 1800, 8.50, gpus_per_node=4, reported_gib=184.0),
)}
# other spellings of one part (as people write them, and as nvidia-smi names it); the key is compared
# upper-case with spaces, dashes and underscores removed
ALIASES = {
    "H100": "H100-SXM", "H100SXM": "H100-SXM", "H100SXM5": "H100-SXM", "H10080GB": "H100-SXM",
    "H10080GBHBM3": "H100-SXM", "NVIDIAH10080GBHBM3": "H100-SXM", "H100SXM80GB": "H100-SXM",
    "H100PCIE": "H100-PCIe", "NVIDIAH100PCIE": "H100-PCIe", "H100PCIE80GB": "H100-PCIe",
    "H100NVL": "H100-NVL", "NVIDIAH100NVL": "H100-NVL", "H100NVL94GB": "H100-NVL",
    "H200SXM": "H200", "H200141GB": "H200", "NVIDIAH200": "H200", "H20096GB": "H20",
    "A10040GB": "A100-40GB", "A100SXM440GB": "A100-40GB", "NVIDIAA100SXM440GB": "A100-40GB",
    "A100PCIE40GB": "A100-40GB",
    "A10080GB": "A100-80GB", "A100SXM480GB": "A100-80GB", "NVIDIAA100SXM480GB": "A100-80GB",
    "A100PCIE80GB": "A100-80GB", "NVIDIAA10080GBPCIE": "A100-80GB",
    "L40S48GB": "L40S", "NVIDIAL40S": "L40S", "NVIDIAL4": "L4", "L424GB": "L4",
    "B200180GB": "B200", "NVIDIAB200": "B200",
}
# names that mean more than one part: an error that lists them, never a guess
AMBIGUOUS = {"A100": ("A100-40GB", "A100-80GB")}


def _key(name: str) -> str:
    return "".join(ch for ch in name.upper() if ch not in " -_")


def lookup(name: str, catalogue: Mapping[str, Gpu] = CATALOGUE) -> Gpu:
    """The catalogue's GPU by name or alias (case, spaces, dashes and underscores aside). A name that
    could mean two parts is an error naming both."""
    key = _key(name)
    for n, g in catalogue.items():  # a catalogue's own entry first: a --gpu-catalog may define "A100"
        if _key(n) == key:
            return g
    if key in AMBIGUOUS:
        raise KeyError(f"GPU {name} is ambiguous: say {' or '.join(AMBIGUOUS[key])}")
    target = ALIASES.get(key)
    for n, g in catalogue.items():
        if target is not None and n == target:
            return g
    raise KeyError(f"unknown GPU {name} (known: {', '.join(sorted(catalogue))}; add it with --gpu-catalog)")


def canonical(name: str, catalogue: Mapping[str, Gpu] = CATALOGUE) -> str | None:
    """The catalogue name ``name`` stands for, or None (unknown or ambiguous)."""
    try:
        return lookup(name, catalogue).name
    except KeyError:
        return None


INTERCONNECTS = ("nvlink", "infinity_fabric", "pcie")
PRECISIONS = ("fp16", "bf16", "fp8", "int8", "int4", "mxfp4")
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
        elif key == "reported_gib":
            out[key] = _figure(v, path)
        elif key == "gpus_per_node":
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 64:
                raise CatalogueError(path, f"expected a whole number from 1 to 64, got {str(v)[:40]}")
            out[key] = v
        else:
            raise CatalogueError(name, f"unknown key {str(key)[:40]} (known: hbm_gb, hbm_tb_s, tflops, interconnect, "
                                       f"interconnect_gb_s, hour_usd, gpus_per_node, reported_gib)")
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
        known = canonical(name, out)
        current = out[known] if known is not None else None
        if current is None:
            missing = {"hbm_gb", "hbm_tb_s", "tflops", "interconnect", "interconnect_gb_s", "hour_usd"} - set(checked)
            if missing:
                raise CatalogueError(name, f"a new GPU needs {', '.join(sorted(missing))}")
            out[name] = Gpu(name=name, **checked)
        else:
            out[current.name] = replace(current, **checked)
    return out
