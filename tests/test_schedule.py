"""9.2's predictive scaling per tier: the profile, the schedule and the utilization levers, replayed
over synthetic diurnal histories (days compressed into points a minute apart, no clock involved)."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from exporter.config import ConfigError, load_config
from exporter.evaluate import HistoryPoint, resize
from exporter.sizing import recommended_instances
from exporter.model import ScheduleSettings, Status
from exporter.schedule import DAY, learn, schedule, scheduled, utilization_levers

ROOT = Path(__file__).resolve().parents[1]
PLAN = load_config(str(ROOT / "examples" / "fleet.yaml")).tiers["h100"].plan  # usable 8 RPS, safety 0.2
T0 = 1_800_000_000.0 - 1_800_000_000.0 % DAY  # a UTC midnight
PEAK_HOUR, BASE_RPS, PEAK_RPS = 14, 4.0, 40.0


def diurnal(days: int, step: float = 60.0) -> list[HistoryPoint]:
    """``days`` of arrivals at BASE_RPS, and PEAK_RPS for the hour from 14:00 UTC."""
    out = []
    t = T0
    while t < T0 + days * DAY:
        hour = int((t % DAY) // 3600)
        out.append(HistoryPoint(t, PEAK_RPS if hour == PEAK_HOUR else BASE_RPS, None))
        t += step
    return out


def test_the_schedule_rises_one_lead_before_the_peak_and_falls_after_it() -> None:
    history = diurnal(4)
    s = ScheduleSettings(min_warm_instances=2, cold_start=600.0, margin=300.0, bin=900.0)  # lead 15 min
    profile = learn(history, s)
    assert profile.kind == "daily"
    base_need = max(2, recommended_instances(BASE_RPS, 8, 0.2))  # the warm floor, 2
    peak_need = recommended_instances(PEAK_RPS, 8, 0.2)  # ceil(5 x 1.2) = 6
    day5 = T0 + 4 * DAY
    peak = day5 + PEAK_HOUR * 3600
    lead = 900.0
    # minute by minute across the day: exactly the peak hour, moved one lead earlier, has the peak count
    for minute in range(0, 24 * 60, 5):
        t = day5 + minute * 60
        expect = peak_need if peak - lead <= t < peak + 3600 else base_need
        assert scheduled(profile, PLAN, t, lead, s) == expect, (minute // 60, minute % 60)
    assert scheduled(profile, PLAN, peak - lead - 60, lead, s) == base_need == 2  # never under min_warm_instances


def test_two_tiers_with_different_cold_starts_get_different_leads() -> None:
    history = diurnal(3)
    fast = ScheduleSettings(min_warm_instances=1, cold_start=120.0, margin=60.0, bin=900.0)  # H100, weights cached
    slow = ScheduleSettings(min_warm_instances=1, cold_start=1500.0, margin=300.0, bin=900.0)  # 30 min lead
    peak = T0 + 3 * DAY + PEAK_HOUR * 3600

    def rises(s: ScheduleSettings) -> float:
        profile = learn(history, s)
        t = peak - 3 * 3600
        while scheduled(profile, PLAN, t, s.cold_start + s.margin, s) < recommended_instances(PEAK_RPS, 8, 0.2):  # type: ignore[operator]
            t += 60
        return peak - t

    # the count rises at the start of the profile bin a lead ahead of the peak: 3 and 30 minutes rounded
    # to the 15-minute bins the profile is kept in (the bin starting 14:00 - lead)
    assert rises(fast) == 180.0
    assert rises(slow) == 1800.0
    a = schedule(history, PLAN, peak - 3600, fast, None)
    b = schedule(history, PLAN, peak - 3600, slow, measured_cold_start=None)
    assert (a.lead_seconds, b.lead_seconds) == (180.0, 1800.0) and a.lead_source == "configured"
    # and a measured cold start is used when none is configured
    m = schedule(history, PLAN, peak, replace(fast, cold_start=None), measured_cold_start=400.0)
    assert (m.lead_seconds, m.lead_source) == (460.0, "measured")


def test_the_profile_is_unknown_until_warmed_up_and_weekly_after_a_week() -> None:
    s = ScheduleSettings(warmup=2 * DAY)
    young = schedule(diurnal(1), PLAN, T0 + DAY, s, None)
    assert young.status is Status.UNKNOWN and young.now is None and "trusted after" in (young.reason or "")
    assert learn(diurnal(3), s).kind == "daily"
    assert learn(diurnal(8, step=300.0), s).kind == "weekly"
    ok = schedule(diurnal(3), PLAN, T0 + 3 * DAY + 12 * 3600, s, None)
    assert ok.status is Status.OK and len(ok.upcoming) == 24 and set(ok.ahead) == {"15m", "1h"}


def test_utilization_levers_are_figures_from_the_history() -> None:
    """10 instances at 8 usable RPS = 80 RPS of capacity. Base 4 RPS is 5% utilization, 23 hours a day:
    each of those hours idles 10 x 0.95 = 9.5 instances = 19 GPU-hours (TP2) = 77.9 USD at 4.10 USD.
    The peak hour runs at 50%: not idle. Sizing at base needs ceil(ceil(0.5) x 1.2) = 2 instances and at
    the peak ceil(ceil(5) x 1.2) = 6, so the tier could always run smaller: 8 fewer for 23 h and 4 fewer
    for 1 h a day, (23 x 8 + 4) x 2 GPUs x 4.10 USD = 1,541.6 USD a day."""
    levers = utilization_levers(diurnal(3), PLAN, deployed=10, tokens_per_request=200)
    assert levers.in_trap is True
    hours = [w.hour_utc for w in levers.idle_windows]
    assert hours == [h for h in range(24) if h != PEAK_HOUR]
    w = levers.idle_windows[0]
    assert w.utilization == pytest.approx(0.05) and w.idle_gpu_hours_per_day == pytest.approx(19.0)
    assert w.idle_cost_usd_per_day == pytest.approx(77.9)
    assert w.batch_fill_tokens == pytest.approx((80 - 4) * 3600 * 200)
    assert levers.scale_down_share == pytest.approx(1.0)
    assert levers.scale_down_savings_usd_per_day == pytest.approx(1541.6, rel=0.002)
    # at a deployment that the peak needs (6), only the 23 quiet hours could run smaller
    assert utilization_levers(diurnal(3), PLAN, deployed=6, tokens_per_request=None).scale_down_share == \
        pytest.approx(23 / 24, abs=0.002)


def test_a_scale_down_never_goes_under_the_warm_count_or_the_queue_drain() -> None:
    """Current 6; the sizing math says 2. With a warm floor of 6 the verdict holds; with a drain need
    (Little's Law) of 4 it scales down to 4, not 2."""
    hist = [HistoryPoint(T0 + i * 60, 4.0, 2) for i in range(60)]
    now = T0 + 3600
    plan = replace(PLAN, scale_down_stabilization=1800.0, peak_rps=1.0)
    held = resize(plan, "h100", 6, 4.0, hist, now, False, 120.0, (6, "the minimum warm count is 6"))
    assert held.action == "hold" and "minimum warm count is 6" in held.reason
    down = resize(plan, "h100", 6, 4.0, hist, now, False, 120.0, (4, "draining the queue needs 4 instances"))
    assert down.action == "scale_down" and "scale down to 4" in down.reason and down.recommended_instances == 2


def test_schedule_settings_are_read_and_checked(tmp_path: Path) -> None:
    base = (ROOT / "examples" / "minimal.yaml").read_text()
    f = tmp_path / "f.yaml"
    f.write_text(base.replace("    plan:", "    schedule: {min_warm_instances: 2, cold_start: 4m, bin: 15m}\n    plan:", 1))
    tier = next(iter(load_config(str(f)).tiers.values()))
    assert (tier.schedule.min_warm_instances, tier.schedule.cold_start, tier.schedule.bin) == (2, 240.0, 900.0)
    f.write_text(base.replace("    plan:", "    schedule: {bin: 7m}\n    plan:", 1))
    with pytest.raises(ConfigError) as e:
        load_config(str(f))
    assert e.value.path.endswith("schedule.bin") and math.isfinite(1.0)


def test_the_demos_utilization_trap_shows_idle_windows_schedule_and_savings() -> None:
    """The demo seeds three simulated days, so within its first minute the report carries the profile, the
    schedule (exported too) and the idle windows of a tier that runs at 12-30% of its capacity."""
    from exporter.collector import make_registry
    from exporter.demo.run import SimClock, reports, start_fleet

    from exporter.collector import Snapshot

    demo = start_fleet("utilization-trap")
    snapshot = Snapshot()
    try:
        history = list(reports(demo, SimClock(demo.fleet), 30.0, snapshot))
        families = {m.name: m for m in make_registry(demo.config, snapshot).collect()}
    finally:
        demo.close()
    t = history[-1][1].tiers["h100"]
    assert t.schedule is not None and t.schedule.status is Status.OK and t.schedule.profile == "daily"
    assert t.schedule.now is not None and t.schedule.now >= t.schedule.min_warm_instances
    levers = t.utilization_levers
    assert levers is not None
    assert levers.in_trap is True and len(levers.idle_windows) == 24  # under 40% every hour of the day
    assert (levers.scale_down_savings_usd_per_day or 0) > 0 and levers.scale_down_share == pytest.approx(1.0)
    # the healthy a100 tier of the same run is not in the trap, and has no idle window
    a100 = history[-1][1].tiers["a100"].utilization_levers
    assert a100 is not None and a100.in_trap is False and a100.idle_windows == ()
    note = history[-1][1].tiers["h100"].history
    assert note is not None and note.seeded and "seeded" in note.as_dict()
    # and exported: now and ahead, per tier, as an autoscaler reads them
    got = {(x.labels["tier"], x.labels["horizon"]): x.value for x in families["fleetwatch_scheduled_instances"].samples}
    assert got[("h100", "")] == t.schedule.now and got[("h100", "1h")] == t.schedule.ahead["1h"]
    assert {k[1] for k in got} == {"", "15m", "1h"}


def test_known_and_unknown_answers_have_the_same_keys() -> None:
    s = ScheduleSettings()
    known, unknown = schedule(diurnal(3), PLAN, T0 + 3 * DAY, s, None), schedule(diurnal(0), PLAN, T0, s, None)
    assert (known.status, unknown.status) == (Status.OK, Status.UNKNOWN)
    assert set(known.as_dict()) == set(unknown.as_dict())
    assert set(utilization_levers(diurnal(2), PLAN, 4, 200.0).as_dict()) == \
        set(utilization_levers([], PLAN, 4, 200.0).as_dict())


def test_cold_starts_are_measured_from_process_start_to_the_first_token() -> None:
    from exporter.daemon import Pipeline
    from exporter.model import EngineSample, InstanceSample
    from exporter.scrape import Scraper

    cfg = load_config(str(ROOT / "examples" / "minimal.yaml"))
    scraper = Scraper(cfg)
    try:
        pipe = Pipeline(cfg, scraper, clock=lambda: T0)

        def seen(t: float, started: float, tokens: float) -> InstanceSample:
            return InstanceSample("h100", "i0", t, EngineSample("vllm", counters={"generation_tokens": tokens},
                                                                 gauges={"process_start_time": started}))

        # up at +10 s but not serving yet; first tokens at +40 s: 40 - 5 = 35 s from its process start
        pipe.ingest([seen(T0 + 10, T0 + 5, 0.0)])
        pipe.ingest([seen(T0 + 40, T0 + 5, 12.0)])
        pipe.ingest([seen(T0 + 45, T0 + 5, 30.0)])  # the same process again: not a second cold start
        # a restart: a new process, measured again; a process older than fleetwatch is not a cold start seen
        pipe.ingest([seen(T0 + 300, T0 + 250, 3.0)])
        pipe.ingest([InstanceSample("h100", "old", T0 + 300, EngineSample(
            "vllm", counters={"generation_tokens": 9.0}, gauges={"process_start_time": T0 - 999}))])
        assert sorted(pipe.cold_starts.seen("h100")) == [35.0, 50.0]
        assert pipe.cold_start_p90()["h100"] == 50.0
    finally:
        scraper.close()
