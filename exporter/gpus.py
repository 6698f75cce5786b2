"""The GPU sources fleetwatch reads: a new one is its module in ``exporter/sources`` and one line here."""
from __future__ import annotations

from .sources import GpuSource, dcgm, nvml

GPU_SOURCES: tuple[GpuSource, ...] = (dcgm.SOURCE, nvml.SOURCE)
FETCHED = tuple(s for s in GPU_SOURCES if s.parse is not None)
LOCAL = tuple(s for s in GPU_SOURCES if s.open is not None)
