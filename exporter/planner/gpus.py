"""The GPU catalogue of Step 2: HBM, bandwidth, dense tensor throughput per precision, the fabric
between GPUs of a node, and an hourly price. Built-in figures are the vendors' published dense
(no sparsity) numbers; prices are list-price placeholders that a ``--gpu-catalog`` YAML (same
keys) overrides, as it overrides or adds any GPU."""
from __future__ import annotations

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


def merge(overrides: Mapping[str, Any], base: Mapping[str, Gpu] = CATALOGUE) -> dict[str, Gpu]:
    """The catalogue with ``overrides`` (name -> any of hbm_gb, hbm_tb_s, tflops, interconnect,
    interconnect_gb_s, hour_usd, gpus_per_node) applied; a new name must give every key."""
    out = dict(base)
    for name, fields in overrides.items():
        if not isinstance(fields, dict):
            raise ValueError(f"{name}: expected a mapping of GPU fields")
        unknown = set(fields) - {"hbm_gb", "hbm_tb_s", "tflops", "interconnect", "interconnect_gb_s", "hour_usd",
                                 "gpus_per_node"}
        if unknown:
            raise ValueError(f"{name}: unknown keys {', '.join(sorted(unknown))}")
        current = next((g for n, g in out.items() if n.upper() == str(name).upper()), None)
        if current is None:
            missing = {"hbm_gb", "hbm_tb_s", "tflops", "interconnect", "interconnect_gb_s", "hour_usd"} - set(fields)
            if missing:
                raise ValueError(f"{name}: a new GPU needs {', '.join(sorted(missing))}")
            out[str(name)] = Gpu(name=str(name), **fields)
        else:
            out[current.name] = replace(current, **fields)
    return out
