from __future__ import annotations

import math

from exporter.model import EngineSample, Histogram, InstanceSample
from exporter.window import counter_increase, histogram_increase, histogram_quantile, tier_window


def test_counter_increase_handles_resets_like_prometheus() -> None:
    assert counter_increase([10, 15, 20]) == 10
    # restart after 20: the counter went 20 -> 3 -> 8; Prometheus counts 10 + 3 + 5
    assert counter_increase([10, 20, 3, 8]) == 18
    assert counter_increase([5]) == 0


def h(*cum: float, bounds: tuple[float, ...] = (0.1, 0.5, 1.0, math.inf)) -> Histogram:
    return Histogram(tuple(zip(bounds, cum)), cum[-1], 0.0)


def test_quantile_interpolates_within_bucket() -> None:
    # 100 observations: 50 <= 0.1, 40 in (0.1, 0.5], 10 in (0.5, 1.0]
    hist = h(50, 90, 100, 100)
    assert histogram_quantile(0.5, hist) == 0.1
    assert math.isclose(histogram_quantile(0.7, hist), 0.1 + 0.4 * (20 / 40))
    assert math.isclose(histogram_quantile(0.99, hist), 0.5 + 0.5 * (9 / 10))


def test_quantile_in_inf_bucket_returns_highest_finite_bound() -> None:
    assert histogram_quantile(0.99, h(0, 0, 0, 10)) == 1.0


def test_quantile_undefined_cases() -> None:
    assert math.isnan(histogram_quantile(0.5, h(0, 0, 0, 0)))
    assert math.isnan(histogram_quantile(0.5, Histogram(((1.0, 5.0),), 5, 0)))  # no +Inf bucket
    assert histogram_quantile(-1, h(1, 1, 1, 1)) == -math.inf


def test_histogram_increase_with_reset() -> None:
    inc = histogram_increase([h(10, 10, 10, 10), h(20, 30, 30, 30), h(1, 2, 2, 2)])
    assert inc is not None
    assert dict(inc.buckets)[0.1] == 10 + 1  # 10->20 (+10), then a reset to 1 (+1)
    assert inc.buckets[-1][1] == 20 + 2


def _sample(inst: str, t: float, counters: dict[str, float], gauges: dict[str, float] | None = None,
            up: bool = True) -> InstanceSample:
    return InstanceSample("h100", inst, t, EngineSample("vllm", counters, gauges or {}) if up else None)


def test_too_little_data_is_unknown_not_zero() -> None:
    tw = tier_window("h100", [_sample("a", 0, {"requests_finished": 5})])
    assert tw.rate("requests_finished") is None
    assert tw.quantile("ttft_seconds", 0.99).value is None


def test_rates_sum_over_instances_and_skip_down_ones() -> None:
    tw = tier_window("h100", [
        _sample("a", 0, {"x": 0}), _sample("a", 10, {"x": 50}),
        _sample("b", 0, {"x": 0}), _sample("b", 10, {"x": 20}),
        _sample("c", 0, {"x": 0}), _sample("c", 10, {}, up=False),
    ])
    assert tw.up() == ("a", "b") and tw.down() == ("c",)
    assert tw.rate("x") == 7.0


def test_scrape_jitter_cannot_change_how_many_readings_a_window_holds() -> None:
    """Scrapes every 15 s, each up to 3 s early or late: a 5m window holds 21 readings, every
    cycle (with the edge exactly at now - window it held 20 or 21 as the jitter fell)."""
    import random

    from exporter.model import EngineSample, InstanceSample
    from exporter.window import WindowStore

    rnd = random.Random(7)
    store = WindowStore(300.0, {"t": ["i"]}, slack=15.0 / 2)
    counts = set()
    for k in range(200):
        now = 1_000.0 + 15.0 * k + rnd.uniform(-3.0, 3.0)  # the cycle's own scrape time
        store.add(InstanceSample("t", "i", now, EngineSample("vllm")))
        store.trim(now)
        if k >= 25:
            counts.add(len(store.view("t", now).samples["i"]))
    assert counts == {21}
