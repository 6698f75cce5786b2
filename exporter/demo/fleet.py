"""The simulated fleet: tiers of engines behind a router, Poisson traffic on a diurnal curve,
node-wide dcgm-exporters for their GPUs, and loopback HTTP servers for all of it.

``SimFleet.advance(t)`` moves simulated time; ``FleetServers`` serves what the fleet shows at
that moment. The demo advances it from wall-clock time; tests advance it as fast as they like.
"""
from __future__ import annotations

import hashlib
import math
import random
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from .engine import Hardware, Lengths, Request, SimEngine

TICK_SECONDS = 0.1  # arrivals are generated and routed in slices this long
GPUS_PER_NODE = 8
_MIB = 1024 * 1024


# ------------------------------------------------------------------ what a tier is


@dataclass(frozen=True)
class Workload:
    """The traffic a tier's users send (Step 1): lengths, prefix sharing, the max_tokens they set."""

    # P95s sit mid-bucket in vLLM's 1-2-5 token buckets, where histogram quantiles are steady
    prompt: Lengths = Lengths(700, 1500)
    output: Lengths = Lengths(100, 250)
    prefix_share: float = 0.7  # share of requests that start with a cached system prompt
    prefix_tokens: int = 600
    max_tokens: int = 1024

    def request(self, rng: random.Random, t: float, max_model_len: int, *, prompt_scale: float = 1.0,
                runaway: bool = False) -> Request:
        """One user request arriving at ``t``."""
        prompt = Lengths(self.prompt.p50 * prompt_scale, self.prompt.p95 * prompt_scale)
        p = prompt.draw(rng, max_model_len - self.max_tokens)
        cached = min(p - 1, self.prefix_tokens) if rng.random() < self.prefix_share else 0
        # a runaway generation is stopped only by max_tokens
        out = max_model_len if runaway else self.output.draw(rng, max_model_len)
        return Request(arrival=t, prompt=p, output=out, max_tokens=self.max_tokens, cached=max(0, cached))


@dataclass(frozen=True)
class TierSpec:
    name: str
    hardware: Hardware
    instances: int
    gpu_hour_cost_usd: float
    ttft_slo_seconds: float
    itl_slo_seconds: float
    safety_factor: float = 0.2
    weights: str = "fp16"
    workload: Workload = Workload()


H100 = Hardware("h100", "NVIDIA H100 80GB HBM3", tp=2, step_base_seconds=0.014, step_per_sequence_seconds=0.00035,
                prefill_tokens_per_second=24000, max_num_seqs=96, max_num_batched_tokens=512,
                kv_capacity_tokens=220_000, gpu_memory_bytes=81559 * _MIB)
A100 = Hardware("a100", "NVIDIA A100-SXM4-80GB", tp=4, step_base_seconds=0.020, step_per_sequence_seconds=0.00050,
                prefill_tokens_per_second=16000, max_num_seqs=96, max_num_batched_tokens=512,
                kv_capacity_tokens=420_000, gpu_memory_bytes=81920 * _MIB)
HARDWARE = {h.name: h for h in (H100, A100)}

DEFAULT_TIERS: tuple[TierSpec, ...] = (
    TierSpec("h100", H100, instances=4, gpu_hour_cost_usd=4.10, ttft_slo_seconds=1.0, itl_slo_seconds=0.1,
             weights="fp8"),
    TierSpec("a100", A100, instances=3, gpu_hour_cost_usd=1.80, ttft_slo_seconds=1.5, itl_slo_seconds=0.15),
)


# ------------------------------------------------------------------ how a tier behaves in a scenario


def diurnal(low: float, high: float, day_seconds: float, phase: float = 0.25) -> Callable[[float], float]:
    """A load level between ``low`` and ``high`` following a compressed day (``phase`` 0 = midnight)."""
    def level(t: float) -> float:
        x = 2 * math.pi * (t / day_seconds + phase)
        return low + (high - low) * (1 - math.cos(x)) / 2
    return level


@dataclass(frozen=True)
class TierBehaviour:
    """Per tier: load as a share of the tier's usable capacity over time, and what goes wrong."""

    load: Callable[[float], float]  # t (run seconds) -> share of instances x usable RPS
    prompt_scale: Callable[[float], float] = lambda t: 1.0
    runaway_share: Callable[[float], float] = lambda t: 0.0  # requests that would generate forever
    kv_scale: float = 1.0
    dead: tuple[tuple[int, float], ...] = ()  # (instance index, run second it stops answering)
    impostor: int | None = None  # instance index that runs on another tier's hardware
    impostor_hardware: str = "a100"
    # evenly spaced arrivals instead of Poisson: for tests that compare two estimators of one rate,
    # whose maxima over noisy windows would differ by the noise alone
    steady: bool = False


# ------------------------------------------------------------------ the fleet


@dataclass
class SimInstance:
    tier: str
    index: int
    engine: SimEngine
    node: str
    gpu_indices: tuple[int, ...]
    gpu_model: str
    dies_at: float | None = None
    alive: bool = True

    @property
    def name(self) -> str:
        return f"{self.tier}-{self.index}"

    @property
    def pod(self) -> str:
        return f"{self.tier}-vllm-{self.index}"


@dataclass
class SimTier:
    spec: TierSpec
    behaviour: TierBehaviour
    usable_rps_per_instance: float
    instances: list[SimInstance] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)
    next_arrival: float = 0.0  # steady arrivals keep their phase from one step to the next

    def rate(self, run_t: float) -> float:
        return max(0.0, self.behaviour.load(run_t)) * self.spec.instances * self.usable_rps_per_instance


def _uuid(node: str, gpu: int) -> str:
    h = hashlib.sha1(f"{node}/{gpu}".encode()).hexdigest()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


class SimFleet:
    """Every simulated instance of every tier. ``lock`` guards ``advance`` against renderers."""

    def __init__(self, tiers: dict[str, tuple[TierSpec, TierBehaviour, float]], *, seed: int = 0,
                 flavour: str = "vllm-0.33", warmup: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.start = 0.0  # run time 0; behaviours see t - start, negative while warming up
        self.t = -warmup
        self.flavour = flavour
        self.tiers: dict[str, SimTier] = {}
        self.nodes: dict[str, list[SimInstance | None]] = {}  # node -> GPU index -> owner
        self.on_death: list[Callable[[SimInstance], None]] = []
        for k, (name, (spec, behaviour, usable)) in enumerate(sorted(tiers.items())):
            tier = SimTier(spec, behaviour, usable, rng=random.Random(seed * 1000 + k))
            pos = 0
            for i in range(spec.instances):
                hw = spec.hardware
                if behaviour.impostor == i:  # its own node of the other hardware
                    hw = HARDWARE[behaviour.impostor_hardware]
                    node, gpus = f"{name}-{hw.name}-node-0", tuple(range(hw.tp))
                else:
                    per_node = max(1, GPUS_PER_NODE // hw.tp)
                    node = f"{name}-node-{pos // per_node}"
                    gpus = tuple(range((pos % per_node) * hw.tp, (pos % per_node + 1) * hw.tp))
                    pos += 1
                eng = SimEngine(hw, flavour=flavour, kv_scale=behaviour.kv_scale)
                eng.t = self.t
                dies = next((at for idx, at in behaviour.dead if idx == i), None)
                inst = SimInstance(name, i, eng, node, gpus, hw.gpu_model, dies_at=dies)
                tier.instances.append(inst)
                slots = self.nodes.setdefault(node, [None] * GPUS_PER_NODE)
                for g in gpus:
                    slots[g] = inst
            self.tiers[name] = tier

    # ------------------------------------------------------------------ time
    def advance(self, until: float) -> None:
        with self.lock:
            while self.t < until - 1e-9:
                t1 = min(until, self.t + TICK_SECONDS)
                for tier in self.tiers.values():
                    self._arrivals(tier, self.t, t1)
                    for inst in tier.instances:
                        if inst.alive:
                            inst.engine.advance(t1)
                self.t = t1
                self._deaths()

    def _deaths(self) -> None:
        for tier in self.tiers.values():
            for inst in tier.instances:
                if inst.alive and inst.dies_at is not None and self.t - self.start >= inst.dies_at:
                    inst.alive = False
                    for cb in self.on_death:
                        cb(inst)

    def _arrivals(self, tier: SimTier, t0: float, t1: float) -> None:
        run_t = (t0 + t1) / 2 - self.start
        rate = tier.rate(run_t)
        if rate <= 0:
            return
        live = [i for i in tier.instances if i.alive]
        if not live:
            return
        b, wl, rng = tier.behaviour, tier.spec.workload, tier.rng

        def gap() -> float:
            return 1.0 / rate if b.steady else rng.expovariate(rate)

        t = max(t0, tier.next_arrival) if b.steady else t0 + gap()
        scale, runaway = b.prompt_scale(run_t), b.runaway_share(run_t)
        cap = tier.spec.hardware.max_model_len
        while t < t1:
            req = wl.request(rng, t, cap, prompt_scale=scale, runaway=runaway > 0 and rng.random() < runaway)
            target = min(live, key=lambda i: i.engine.load())  # least outstanding requests
            target.engine.submit(req)  # a full queue rejects it, as the gateway would (429)
            t += gap()
        tier.next_arrival = t

    # ------------------------------------------------------------------ what scrapers see
    def engine_text(self, tier: str, index: int) -> str:
        with self.lock:
            return self.tiers[tier].instances[index].engine.exposition()

    def dcgm_text(self, node: str) -> str:
        with self.lock:
            return render_dcgm(node, self.nodes[node])


_DCGM_FAMILIES = (
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB)."),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_FB_RESERVED", "Framebuffer memory reserved (in MiB)."),
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "Ratio of time the graphics engine is active."),
    ("DCGM_FI_PROF_SM_ACTIVE", "The ratio of cycles an SM has at least 1 warp assigned."),
    ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "Ratio of cycles the tensor (HMMA) pipe is active."),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %)."),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W)."),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C)."),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz)."),
)
# the rest of a GPU's vital signs, made up from how busy it is (an H100 SXM's idle and loaded figures)
IDLE_WATTS, BUSY_WATTS = 70.0, 690.0
IDLE_CELSIUS, BUSY_CELSIUS = 32.0, 71.0
IDLE_MHZ, BUSY_MHZ = 345, 1980
VLLM_GPU_MEMORY_UTILIZATION = 0.9  # vLLM preallocates this share of each GPU for weights + KV cache
RESERVED_MIB = 615  # what a real H200 reports reserved (fixtures/nvml)


def render_dcgm(node: str, slots: list[SimInstance | None]) -> str:
    """A node-wide dcgm-exporter: every GPU of the node, pod labels on the ones a pod owns."""
    lines: list[str] = []
    rows: list[tuple[str, dict[str, str], float]] = []
    for g, inst in enumerate(slots):
        model = inst.gpu_model if inst is not None else next((s.gpu_model for s in slots if s), "NVIDIA H100 80GB HBM3")
        total_mib = (inst.engine.hardware.gpu_memory_bytes if inst is not None else 81559 * _MIB) // _MIB
        labels = {"gpu": str(g), "UUID": _uuid(node, g), "pci_bus_id": f"00000000:{0x18 + g * 0x11:02X}:00.0",
                  "device": f"nvidia{g}", "modelName": model, "Hostname": node, "DCGM_FI_DRIVER_VERSION": "580.105.08"}
        if inst is not None and inst.alive:
            labels.update({"container": "vllm", "namespace": "llm", "pod": inst.pod})
            busy, sm = inst.engine.busy_avg, inst.engine.sm_avg
            used = int(total_mib * VLLM_GPU_MEMORY_UTILIZATION) - RESERVED_MIB
        else:
            busy = sm = 0.0
            used = 0
        free = total_mib - used - RESERVED_MIB
        values = {"DCGM_FI_DEV_GPU_UTIL": round(busy * 100), "DCGM_FI_DEV_FB_FREE": free, "DCGM_FI_DEV_FB_USED": used,
                  "DCGM_FI_DEV_FB_RESERVED": RESERVED_MIB, "DCGM_FI_PROF_GR_ENGINE_ACTIVE": busy * 0.97,
                  "DCGM_FI_PROF_SM_ACTIVE": sm, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": round(sm * 0.6, 4),
                  "DCGM_FI_DEV_MEM_COPY_UTIL": round(busy * 45),
                  "DCGM_FI_DEV_POWER_USAGE": round(IDLE_WATTS + busy * (BUSY_WATTS - IDLE_WATTS), 1),
                  "DCGM_FI_DEV_GPU_TEMP": round(IDLE_CELSIUS + busy * (BUSY_CELSIUS - IDLE_CELSIUS)),
                  "DCGM_FI_DEV_SM_CLOCK": BUSY_MHZ if busy > 0 else IDLE_MHZ}
        for name, _ in _DCGM_FAMILIES:
            rows.append((name, labels, float(values[name])))
    for name, help_ in _DCGM_FAMILIES:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} gauge")
        for n, labels, v in rows:
            if n == name:
                lb = ",".join(f'{k}="{val}"' for k, val in labels.items())
                lines.append(f"{name}{{{lb}}} {v:g}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ HTTP


def _handler(render: Callable[[], str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            body = render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

    return Handler


class _Endpoint:
    def __init__(self, render: Callable[[], str]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(render))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="sim-http")
        self.thread.start()
        self.open = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/metrics"

    def close(self) -> None:
        if self.open:
            self.open = False
            self.httpd.shutdown()
            self.httpd.server_close()


class FleetServers:
    """One loopback port per engine and per node's dcgm-exporter. A dead instance's port closes."""

    def __init__(self, fleet: SimFleet) -> None:
        self.fleet = fleet
        self.engines: dict[tuple[str, int], _Endpoint] = {}
        self.dcgm: dict[str, _Endpoint] = {}
        for name, tier in fleet.tiers.items():
            for inst in tier.instances:
                self.engines[(name, inst.index)] = _Endpoint(
                    lambda n=name, i=inst.index: fleet.engine_text(n, i))  # type: ignore[misc]
        for node in fleet.nodes:
            self.dcgm[node] = _Endpoint(lambda nd=node: fleet.dcgm_text(nd))  # type: ignore[misc]
        fleet.on_death.append(lambda inst: self.engines[(inst.tier, inst.index)].close())

    def close(self) -> None:
        for ep in [*self.engines.values(), *self.dcgm.values()]:
            ep.close()
