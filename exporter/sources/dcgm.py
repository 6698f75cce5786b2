"""dcgm-exporter /metrics -> one GpuReading per GPU or MIG instance.

Accepts ``Hostname``/``hostname``, ``UUID``/``uuid`` and the old and ``exported_*`` pod label
names. Values at or above the blank sentinel (~9.22e18) and NaN are missing, never zero.
Framebuffer values are MiB and become bytes.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Mapping

from .. import exposition
from ..model import GpuReading
from . import GpuSource, select_gpus

PREFIXES = ("DCGM_FI_",)
_SENTINEL = 9.2e18
_MIB = 1024.0 * 1024.0

_FIELDS = {
    "DCGM_FI_DEV_FB_USED": ("memory_used_bytes", _MIB),
    "DCGM_FI_DEV_FB_FREE": ("memory_free_bytes", _MIB),
    "DCGM_FI_DEV_FB_RESERVED": ("memory_reserved_bytes", _MIB),
    "DCGM_FI_PROF_SM_ACTIVE": ("sm_active", 1.0),
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": ("gr_engine_active", 1.0),
    "DCGM_FI_DEV_GPU_UTIL": ("gpu_util", 0.01),
}


def _label(labels: Mapping[str, str], *names: str) -> str | None:
    for n in names:
        v = labels.get(n)
        if v:
            return v
    return None


def parse(text: str) -> tuple[GpuReading, ...]:
    samples = exposition.parse(text, PREFIXES)
    if not samples:
        raise exposition.not_metrics(text, "DCGM_FI_")
    gpus: dict[tuple[str, str | None], dict[str, Any]] = defaultdict(dict)
    for s in samples:
        lb = s.labels
        uuid = _label(lb, "UUID", "uuid", "gpu_uuid")
        if uuid is None:
            continue
        key = (uuid, lb.get("GPU_I_ID") or None)
        g = gpus[key]
        g.setdefault("uuid", uuid)
        g.setdefault("mig_instance", key[1])
        for field, names in (("index", ("gpu",)), ("model", ("modelName", "model_name")),
                             ("pod", ("pod", "exported_pod", "pod_name")),
                             ("namespace", ("namespace", "exported_namespace", "pod_namespace")),
                             ("hostname", ("Hostname", "hostname"))):
            v = _label(lb, *names)
            if v and not g.get(field):
                g[field] = v
        spec = _FIELDS.get(s.name)
        if spec is None:
            continue
        value = s.value
        if not math.isfinite(value) or value < 0 or value >= _SENTINEL:  # blank, or not a reading
            continue
        g[spec[0]] = value * spec[1]
    return _readings(gpus)


def _readings(gpus: dict[tuple[str, str | None], dict[str, Any]]) -> tuple[GpuReading, ...]:
    return tuple(
        GpuReading(
            uuid=g["uuid"], index=g.get("index", ""), model=g.get("model", ""), mig_instance=g.get("mig_instance"),
            pod=g.get("pod"), namespace=g.get("namespace"), hostname=g.get("hostname"),
            memory_used_bytes=g.get("memory_used_bytes"), memory_free_bytes=g.get("memory_free_bytes"),
            memory_reserved_bytes=g.get("memory_reserved_bytes"), sm_active=g.get("sm_active"),
            gr_engine_active=g.get("gr_engine_active"), gpu_util=g.get("gpu_util"),
        )
        for g in gpus.values()
    )


select = select_gpus  # a node-wide exporter reports every GPU of the node: a target's are picked by its selector

SOURCE = GpuSource("dcgm", "dcgm-exporter", parse=parse, url=lambda t: t.dcgm,
                   token_file=lambda t: t.dcgm_bearer_token_file)
