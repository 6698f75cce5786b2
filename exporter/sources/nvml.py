"""Local GPUs through NVML (nvidia-ml-py, imported as ``pynvml``), behind a narrow interface.

- memory: v2 (used excludes driver-reserved memory, like DCGM FB_USED), falling back to v1
  when the driver lacks it;
- utilization: NVML ``.gpu`` duty cycle, on the 0-1 scale;
- NotSupported is cached per (GPU, field) so a field that never works is not retried;
- GpuIsLost / Unknown mark that GPU down and re-initialise NVML on the next read.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

from ..model import GpuReading
from . import Gpus, GpuSource

log = logging.getLogger(__name__)

NOT_SUPPORTED = 3
FUNCTION_NOT_FOUND = 13
GPU_IS_LOST = 15
UNKNOWN = 999
_LOST = {GPU_IS_LOST, UNKNOWN}


class NvmlBackend(Protocol):
    """The calls fleetwatch makes. Errors carry the NVML return code in ``.value``."""

    def init(self) -> None: ...
    def shutdown(self) -> None: ...
    def device_count(self) -> int: ...
    def handle(self, index: int) -> Any: ...
    def name(self, handle: Any) -> str: ...
    def uuid(self, handle: Any) -> str: ...
    def memory_v2(self, handle: Any) -> tuple[float, float, float]: ...  # used, free, reserved (bytes)
    def memory_v1(self, handle: Any) -> tuple[float, float]: ...  # used (incl. reserved), free
    def utilization_gpu(self, handle: Any) -> float: ...  # percent


class PynvmlBackend:
    """The real backend: nvidia-ml-py."""

    def __init__(self) -> None:
        import pynvml

        self._n = pynvml

    def init(self) -> None:
        self._n.nvmlInit()

    def shutdown(self) -> None:
        self._n.nvmlShutdown()

    def device_count(self) -> int:
        return int(self._n.nvmlDeviceGetCount())

    def handle(self, index: int) -> Any:
        return self._n.nvmlDeviceGetHandleByIndex(index)

    def name(self, handle: Any) -> str:
        v = self._n.nvmlDeviceGetName(handle)
        return v.decode() if isinstance(v, bytes) else str(v)

    def uuid(self, handle: Any) -> str:
        v = self._n.nvmlDeviceGetUUID(handle)
        return v.decode() if isinstance(v, bytes) else str(v)

    def memory_v2(self, handle: Any) -> tuple[float, float, float]:
        m = self._n.nvmlDeviceGetMemoryInfo(handle, version=self._n.nvmlMemory_v2)
        return float(m.used), float(m.free), float(m.reserved)

    def memory_v1(self, handle: Any) -> tuple[float, float]:
        m = self._n.nvmlDeviceGetMemoryInfo(handle)
        return float(m.used), float(m.free)

    def utilization_gpu(self, handle: Any) -> float:
        return float(self._n.nvmlDeviceGetUtilizationRates(handle).gpu)


def _code(e: BaseException) -> int | None:
    v = getattr(e, "value", None)
    return v if isinstance(v, int) else None


class NvmlReader:
    """Reads every local GPU once per cycle. Not thread-safe: one reader per daemon."""

    def __init__(self, backend: NvmlBackend) -> None:
        self._b = backend
        self._initialised = False
        self._need_reinit = False
        self._unsupported: set[tuple[str, str]] = set()
        self.errors: dict[str, int] = {}

    def _count_error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def _ensure_init(self) -> bool:
        if self._need_reinit and self._initialised:
            try:
                self._b.shutdown()
            except Exception:  # noqa: BLE001 - a lost GPU can make shutdown fail too
                pass
            self._initialised = False
        if not self._initialised:
            try:
                self._b.init()
            except Exception as e:  # noqa: BLE001 - LibraryNotFound, DriverNotLoaded...
                self._count_error("init")
                log.error("NVML init failed: %s", e)
                return False
            self._initialised = True
            self._need_reinit = False
        return True

    def read(self) -> tuple[GpuReading, ...]:
        if not self._ensure_init():
            return ()
        try:
            count = self._b.device_count()
        except Exception as e:  # noqa: BLE001
            self._count_error("device_count")
            log.error("NVML device count failed: %s", e)
            self._need_reinit = True
            return ()
        return tuple(self._read_one(i) for i in range(count))

    def _field(self, uuid: str, field: str, fn: Any, *args: Any) -> Any:
        """Call fn; None when the field is (now known to be) unsupported."""
        if (uuid, field) in self._unsupported:
            return None
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001
            code = _code(e)
            if code in (NOT_SUPPORTED, FUNCTION_NOT_FOUND):
                self._unsupported.add((uuid, field))
                log.info("NVML %s not supported on %s; not asking again", field, uuid)
                return None
            raise

    def _read_one(self, index: int) -> GpuReading:
        uuid = f"index-{index}"
        name = ""
        try:
            h = self._b.handle(index)
            uuid = self._b.uuid(h)
            name = self._b.name(h)
            used = free = reserved = None
            v2 = self._field(uuid, "memory_v2", self._b.memory_v2, h)
            if v2 is not None:
                used, free, reserved = v2
            else:
                v1 = self._field(uuid, "memory_v1", self._b.memory_v1, h)
                if v1 is not None:
                    used, free = v1
            util = self._field(uuid, "utilization", self._b.utilization_gpu, h)
            return GpuReading(uuid=uuid, index=str(index), model=name, memory_used_bytes=used,
                              memory_free_bytes=free, memory_reserved_bytes=reserved,
                              gpu_util=None if util is None else util / 100.0)
        except Exception as e:  # noqa: BLE001
            code = _code(e)
            reason = "gpu_lost" if code in _LOST else "call_failed"
            self._count_error(reason)
            if code in _LOST:
                self._need_reinit = True
            log.error("NVML read of GPU %d (%s) failed: %s", index, uuid, e)
            return GpuReading(uuid=uuid, index=str(index), model=name, up=False)


def _open() -> Callable[[], Gpus]:
    return NvmlReader(PynvmlBackend()).read


SOURCE = GpuSource("nvml", "NVML", open=_open, wanted=lambda t: t.nvml)
