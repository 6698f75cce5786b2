"""fleetwatch's own exposition: a custom Collector that renders the latest snapshot.

It never does I/O while being scraped: ``collect`` only reads the Report and the scrape
statistics that the cycle thread last published.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import catalogue
from .catalogue import BAND_THRESHOLD, PLAN_FIGURES, band_thresholds
from .alertmanager import NotifyStats
from .secrets import redact_url
from .model import Config, Mode, Plan
from .model import Action, Report, Status
from .scrape import ScrapeStats

STATUSES = [s.value for s in Status]
ACTIONS = tuple(a.value for a in Action)


# findings about the tier as a whole, which one instance's sidecar cannot see
FLEET_FINDINGS = frozenset({"instances_differ_from_plan", "peak_above_plan", "mixed_tier"})


def metric_name(row_key: str) -> str:
    return f"fleetwatch_{row_key}"


@dataclass(frozen=True)
class Published:
    report: Report | None
    stats: ScrapeStats
    cycles: int
    cycle_seconds: float | None
    overruns: int
    notify: NotifyStats | None = None  # None when no Alertmanager is configured
    failures: int = 0
    evaluation_errors: Mapping[str, int] = field(default_factory=dict)
    state_errors: Mapping[str, int] = field(default_factory=dict)
    http_rejected: int = 0


class Snapshot:
    """The hand-off between the cycle thread (writer) and the HTTP thread (reader)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = Published(None, ScrapeStats(), 0, None, 0)

    def publish(self, value: Published) -> None:
        with self._lock:
            self._value = value

    def get(self) -> Published:
        with self._lock:
            return self._value


class FleetCollector(Collector):
    def __init__(self, config: Config, snapshot: Snapshot) -> None:
        self.config = config
        self.snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []  # registering must not call collect()

    def collect(self) -> Iterator[Metric]:
        pub = self.snapshot.get()
        report = pub.report
        sidecar = self.config.mode is Mode.SIDECAR
        yield from self._plan()
        rows = {r.key: GaugeMetricFamily(metric_name(r.key), f"{r.help} ({r.unit})", labels=["tier"]) for r in catalogue.ROWS}
        status = GaugeMetricFamily("fleetwatch_metric_status",
                                   "1 for the current status of each catalogue row per tier (ok, warning, critical, unknown).",
                                   labels=["tier", "metric", "status"])
        checks = GaugeMetricFamily("fleetwatch_plan_check_status",
                                   "1 for the current status of each plan check per tier.",
                                   labels=["tier", "check", "status"])
        observed = GaugeMetricFamily("fleetwatch_plan_check_observed", "Observed value of a plan check.",
                                     labels=["tier", "check"])
        predicted = GaugeMetricFamily("fleetwatch_plan_check_predicted", "Value the plan predicts for a plan check.",
                                      labels=["tier", "check"])
        recommended = GaugeMetricFamily("fleetwatch_recommended_instances",
                                        "Instances the tier needs: ceil(ceil(peak / usable) x (1 + safety)).",
                                        labels=["tier"])
        current = GaugeMetricFamily("fleetwatch_instances_configured", "Instances configured or discovered for the tier.",
                                    labels=["tier"])
        up = GaugeMetricFamily("fleetwatch_instances_up", "Instances whose engine answered the last scrape.",
                               labels=["tier"])
        action = GaugeMetricFamily("fleetwatch_resize_action", "1 for the tier's current resize action.",
                                   labels=["tier", "action"])
        peak = GaugeMetricFamily("fleetwatch_resize_peak_rps", "Peak RPS the recommendation is sized for.",
                                 labels=["tier"])
        provisional = GaugeMetricFamily("fleetwatch_resize_provisional", "1 while the tier's resize verdict rests "
                                        "on a part-filled window (fleetwatch posts no alert for it).", labels=["tier"])
        findings = GaugeMetricFamily("fleetwatch_finding", "1 for each current finding.",
                                     labels=["tier", "kind", "status", "instance"])
        guardrails = GaugeMetricFamily(
            "fleetwatch_guardrail_recommended", "Recommended gateway guardrail, from the observed "
            "histograms: bound=value is the middle of the low-high range.", labels=["tier", "guardrail", "bound"])
        scheduled = GaugeMetricFamily(
            "fleetwatch_scheduled_instances", "Instances the tier's load profile says must run (predictive "
            "scaling: its need up to one cold-start lead ahead, at least min_warm_instances); horizon=\"\" now, "
            "15m and 1h ahead.", labels=["tier", "horizon"])
        lead = GaugeMetricFamily("fleetwatch_schedule_lead_seconds",
                                 "How far ahead the schedule reads the profile: cold start plus margin.", labels=["tier"])
        cold = GaugeMetricFamily("fleetwatch_cold_start_p90_seconds",
                                 "P90 of the tier's measured cold starts (process start to first generated token).",
                                 labels=["tier"])
        if report is not None:
            for name, t in report.tiers.items():
                sched = t.schedule
                if sched is not None:
                    for horizon, n in (("", sched.now), *sched.ahead.items()):
                        if n is not None:
                            scheduled.add_metric([name, horizon], float(n))
                    lead.add_metric([name], sched.lead_seconds)
                    if sched.cold_start_p90_seconds is not None:
                        cold.add_metric([name], sched.cold_start_p90_seconds)
                for g, rec in t.guardrails.items():
                    for bound, v in (("value", rec.value), ("low", rec.low), ("high", rec.high)):
                        if v is not None:
                            guardrails.add_metric([name, g, bound], float(v))
                for key, m in t.metrics.items():
                    if m.value is not None:
                        rows[key].add_metric([name], m.value)
                    for s in STATUSES:
                        status.add_metric([name, key, s], 1.0 if m.status.value == s else 0.0)
                for c in t.plan_checks:
                    for s in STATUSES:
                        checks.add_metric([name, c.check, s], 1.0 if c.status.value == s else 0.0)
                    if c.observed is not None:
                        observed.add_metric([name, c.check], c.observed)
                    if c.predicted is not None:
                        predicted.add_metric([name, c.check], c.predicted)
                if t.resize.recommended_instances is not None:
                    recommended.add_metric([name], t.resize.recommended_instances)
                if t.resize.peak_rps is not None:
                    peak.add_metric([name], t.resize.peak_rps)
                current.add_metric([name], t.instances_total)
                up.add_metric([name], t.instances_up)
                for a in ACTIONS:
                    action.add_metric([name, a], 1.0 if t.resize.action == a else 0.0)
                provisional.add_metric([name], 1.0 if t.resize.provisional else 0.0)
                for f in t.findings:
                    if not (sidecar and f.kind in FLEET_FINDINGS):
                        findings.add_metric([name, f.kind, f.status.value, f.instance or ""], 1.0)
        yield from rows.values()
        yield from (status, checks, observed, predicted, current, up, findings, guardrails)
        if not sidecar:  # a sidecar sees one instance: the fleet verdicts come from the rules
            yield from (recommended, action, provisional, peak, scheduled, lead, cold)
        yield from self._scrape(pub)

    def _plan(self) -> Iterator[Metric]:
        get: Callable[[Plan], float]
        for key, help_text, get in PLAN_FIGURES:
            g = GaugeMetricFamily(f"fleetwatch_plan_{key}", help_text, labels=["tier"])
            for name, tier in self.config.tiers.items():
                g.add_metric([name], float(get(tier.plan)))
            yield g
        th = GaugeMetricFamily(BAND_THRESHOLD, "A row's band threshold on the tier, as the alerting rules compare it "
                               "(the queue's: per request per second of arrivals).",
                               labels=["tier", "row", "severity", "side"])
        for name, tier in self.config.tiers.items():
            for key, severity, side, value in band_thresholds(tier.plan, tier.bands):
                th.add_metric([name, key, severity, side], value)
        yield th

    def _scrape(self, pub: Published) -> Iterator[Metric]:
        st = pub.stats
        up = GaugeMetricFamily("fleetwatch_target_up", "1 if the target's last scrape succeeded.",
                               labels=["tier", "instance", "source"])
        dur = GaugeMetricFamily("fleetwatch_scrape_duration_seconds", "Duration of the target's last scrape.",
                                labels=["tier", "instance", "source"])
        for (tier, inst, src), ok in sorted(st.up.items()):
            up.add_metric([tier, inst, src], float(ok))
        for (tier, inst, src), seconds in sorted(st.duration.items()):
            dur.add_metric([tier, inst, src], seconds)
        errors = CounterMetricFamily("fleetwatch_scrape_errors", "Failed scrapes by reason.",
                                     labels=["tier", "instance", "source", "reason"])
        for (tier, inst, src, reason), n in sorted(st.errors.items()):
            errors.add_metric([tier, inst, src, reason], n)
        restarts = CounterMetricFamily("fleetwatch_engine_restarts", "Engine restarts seen: its counters went back "
                                       "toward zero (counted from zero again, as Prometheus does).",
                                       labels=["tier", "instance"])
        for (tier, inst), n in sorted(st.resets.items()):
            restarts.add_metric([tier, inst], n)
        if self.config.deprecated_metric_names:  # the previous release's name, one more release
            old = CounterMetricFamily("fleetwatch_counter_resets", "DEPRECATED, removed in the next release: "
                                      "fleetwatch_engine_restarts_total.", labels=["tier", "instance"])
            for (tier, inst), n in sorted(st.resets.items()):
                old.add_metric([tier, inst], n)
            yield old
        skipped = CounterMetricFamily("fleetwatch_scrape_skipped",
                                      "Cycles in which a target was not tried: backoff (it kept failing), or deadline "
                                      "(every scrape worker was busy until the cycle's deadline).",
                                      labels=["tier", "instance", "reason"])
        for (tier, inst, reason), n in sorted(st.skipped.items()):
            skipped.add_metric([tier, inst, reason], n)
        yield skipped
        invalid = CounterMetricFamily("fleetwatch_invalid_samples",
                                      "Scrapes in which an engine input was NaN, infinite or negative (not used).",
                                      labels=["tier", "instance", "input"])
        for (tier, inst, key), n in sorted(st.invalid.items()):
            invalid.add_metric([tier, inst, key], n)
        cycles = CounterMetricFamily("fleetwatch_cycles", "Completed scrape-and-evaluate cycles.")
        cycles.add_metric([], float(pub.cycles))
        overruns = CounterMetricFamily("fleetwatch_cycle_overruns",
                                       "Cycles skipped because the previous one was still running.")
        overruns.add_metric([], float(pub.overruns))
        failures = CounterMetricFamily("fleetwatch_cycle_failures",
                                       "Cycles that failed as a whole (the previous snapshot stays served).")
        failures.add_metric([], float(pub.failures))
        evaluation = CounterMetricFamily("fleetwatch_evaluation_errors",
                                         "Cycles in which evaluating a tier raised; its rows were unknown.",
                                         labels=["tier"])
        for tier in self.config.tiers:
            evaluation.add_metric([tier], float(pub.evaluation_errors.get(tier, 0)))
        state_errors = CounterMetricFamily("fleetwatch_state_errors",
                                           "State file trouble: corrupt or too_large (moved aside), unreadable, write.",
                                           labels=["reason"])
        for reason, n in sorted(pub.state_errors.items()):
            state_errors.add_metric([reason], float(n))
        rejected = CounterMetricFamily("fleetwatch_http_connections_rejected",
                                       "Connections to /metrics closed at once because every handler was busy.")
        rejected.add_metric([], float(pub.http_rejected))
        yield from (up, dur, errors, restarts, invalid, cycles, overruns, failures, evaluation, state_errors, rejected)
        if pub.notify is not None:
            ns = pub.notify
            for key, help_text, values in (
                    ("sent", "Alerts delivered to the Alertmanager.", ns.sent),
                    ("failed", "POSTs to the Alertmanager that failed (the alerts stay queued).", ns.failed),
                    ("dropped", "Alerts pushed out of the Alertmanager's full retry queue.", ns.dropped)):
                c = CounterMetricFamily(f"fleetwatch_alertmanager_notifications_{key}", help_text,
                                        labels=["alertmanager"])
                for url, v in sorted(values.items()):
                    c.add_metric([redact_url(url)], float(v))  # this page is unauthenticated
                yield c
            q = GaugeMetricFamily("fleetwatch_alertmanager_queue_length", "Alerts waiting to be delivered.",
                                  labels=["alertmanager"])
            for url, v in sorted(ns.queued.items()):
                q.add_metric([redact_url(url)], float(v))
            yield q
        if pub.cycle_seconds is not None:
            d = GaugeMetricFamily("fleetwatch_cycle_duration_seconds", "Duration of the last cycle.")
            d.add_metric([], pub.cycle_seconds)
            yield d
        if pub.report is not None:
            ts = GaugeMetricFamily("fleetwatch_last_cycle_timestamp_seconds",
                                   "Unix time at which the last cycle evaluated.")
            ts.add_metric([], pub.report.generated_at)
            yield ts


def make_registry(config: Config, snapshot: Snapshot) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(config, snapshot))
    return registry
