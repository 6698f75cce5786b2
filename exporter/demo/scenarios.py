"""The demo's scenarios: each is something the chapter says fleetwatch must catch.

Loads are shares of a tier's usable capacity (instances x the plan's usable RPS per instance).
A "day" lasts DAY_SECONDS. Healthy loads stay clear of every band, including the noise a 30 s
window of Poisson traffic carries: h100 swings 52-62%, a100 49-55% (the plans' peaks sit at 72%
and 65%, and the utilization band warns below 40%).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .fleet import TierBehaviour, diurnal

DAY_SECONDS = 300.0  # one compressed day


def _healthy(tier: str) -> TierBehaviour:
    return TierBehaviour(load=HEALTHY_LOAD[tier])


HEALTHY_LOAD: dict[str, Callable[[float], float]] = {
    "h100": diurnal(0.52, 0.62, DAY_SECONDS),
    "a100": diurnal(0.49, 0.55, DAY_SECONDS),
}


@dataclass(frozen=True)
class Scenario:
    name: str
    what_happens: str
    must_catch: str
    tiers: dict[str, TierBehaviour] = field(default_factory=dict)  # tiers not named behave healthily

    def behaviour(self, tier: str) -> TierBehaviour:
        return self.tiers.get(tier) or _healthy(tier)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("healthy", "both tiers' load follows the day inside every band",
             "nothing: no warning or critical anywhere"),
    Scenario("ttft-regression", "h100 prompts are twice as long as the plan's workload",
             "h100: TTFT P99 more than 30% above the benchmark at equivalent RPS -> recharacterize",
             {"h100": TierBehaviour(load=HEALTHY_LOAD["h100"], prompt_scale=lambda t: 2.0)}),
    Scenario("kv-pressure", "a100 instances get 4% of the KV cache they were sized with (a low gpu_memory_utilization)",
             "a100: kv_cache_eviction_ratio above 20% (critical)",
             {"a100": TierBehaviour(load=HEALTHY_LOAD["a100"], kv_scale=0.04)}),
    Scenario("utilization-trap", "h100 is sized for its peak, and this run is its night: 12-30% load",
             "h100: fleet_utilization_ratio below 40% (the utilization trap)",
             {"h100": TierBehaviour(load=diurnal(0.12, 0.30, DAY_SECONDS))}),
    Scenario("undersized", "a100 traffic runs at 140% of its usable capacity",
             "a100: the queue grows past the Little's Law limit -> scale_up",
             {"a100": TierBehaviour(load=lambda t: 1.4)}),
    Scenario("mixed-tier", "an A100 instance (h100-3) hides in the H100 pool",
             "h100: mixed_tier naming h100-3 (GPU model, and its latency against the tier's median)",
             {"h100": TierBehaviour(load=HEALTHY_LOAD["h100"], impostor=3, impostor_hardware="a100")}),
    Scenario("length-drift", "a100 prompts grow over the run, from 1.2x to 2x the plan's",
             "a100: input_length_drift (P95 more than 25% above the plan's workload)",
             {"a100": TierBehaviour(load=HEALTHY_LOAD["a100"],
                                    prompt_scale=lambda t: min(2.0, 1.0 + max(0.0, t + 30.0) / 150.0))}),
    Scenario("runaway", "a growing share of h100 requests (10% -> 35%) generates until max_tokens",
             "h100: runaway_generation (finished_reason=length share above 5%)",
             {"h100": TierBehaviour(load=HEALTHY_LOAD["h100"],
                                    runaway_share=lambda t: min(0.35, 0.10 + 0.25 * max(0.0, t + 30.0) / 120.0))}),
    Scenario("dead-instance", "h100-3 stops answering 10 s into the run",
             "h100: h100-3 is reported down (target_down)",
             {"h100": TierBehaviour(load=HEALTHY_LOAD["h100"], dead=((3, 10.0),))}),
)}
