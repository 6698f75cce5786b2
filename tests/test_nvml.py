"""The NVML collector against a fake behind the same narrow interface (no GPU here)."""
from __future__ import annotations

from typing import Any

from exporter.sources.nvml import FUNCTION_NOT_FOUND, GPU_IS_LOST, NOT_SUPPORTED, NvmlReader


class NvmlError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"NVML error {code}")
        self.value = code


class FakeNvml:
    """Numbers shaped like fixtures/nvml (an idle H200: 615 MiB reserved, used 0 in v2)."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.inits = 0
        self.v2 = True
        self.util_supported = True
        self.lost = False

    def _call(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def init(self) -> None:
        self.inits += 1

    def shutdown(self) -> None:
        pass

    def device_count(self) -> int:
        return 1

    def handle(self, index: int) -> Any:
        return index

    def name(self, handle: Any) -> str:
        return "NVIDIA H200"

    def uuid(self, handle: Any) -> str:
        if self.lost:
            raise NvmlError(GPU_IS_LOST)
        return "GPU-8539ecf8-552b-535a-87a8-fb5e4fd96b7b"

    def memory_v2(self, handle: Any) -> tuple[float, float, float]:
        self._call("memory_v2")
        if not self.v2:
            raise NvmlError(FUNCTION_NOT_FOUND)
        return 0.0, 150109880320.0, 644939776.0

    def memory_v1(self, handle: Any) -> tuple[float, float]:
        self._call("memory_v1")
        return 644939776.0, 150109880320.0

    def utilization_gpu(self, handle: Any) -> float:
        self._call("utilization")
        if not self.util_supported:
            raise NvmlError(NOT_SUPPORTED)
        return 98.0


def test_memory_v2_and_utilization() -> None:
    (g,) = NvmlReader(FakeNvml()).read()
    assert g.up and g.model == "NVIDIA H200" and g.memory_used_bytes == 0.0
    assert g.memory_reserved_bytes == 644939776.0 and g.gpu_util == 0.98
    assert g.memory_total_bytes == 150754820096.0  # free + used + reserved: nvidia-smi's total


def test_v1_fallback_when_v2_missing_and_cached() -> None:
    fake = FakeNvml()
    fake.v2 = False
    reader = NvmlReader(fake)
    (g,) = reader.read()
    assert g.memory_used_bytes == 644939776.0 and g.memory_reserved_bytes is None
    reader.read()
    assert fake.calls["memory_v2"] == 1, "an unsupported field is not asked again"


def test_not_supported_cached_per_field() -> None:
    fake = FakeNvml()
    fake.util_supported = False
    reader = NvmlReader(fake)
    for _ in range(3):
        (g,) = reader.read()
        assert g.gpu_util is None and g.memory_used_bytes == 0.0
    assert fake.calls["utilization"] == 1


def test_gpu_lost_reports_down_then_reinitialises() -> None:
    fake = FakeNvml()
    reader = NvmlReader(fake)
    reader.read()
    fake.lost = True
    (g,) = reader.read()
    assert not g.up and reader.errors == {"gpu_lost": 1}
    fake.lost = False
    (g,) = reader.read()
    assert g.up and fake.inits == 2
