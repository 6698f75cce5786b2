"""fleetwatch's own notifications reach a real Alertmanager, resolve, and survive an outage."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, TypeVar

import time
from datetime import datetime

import yaml

from exporter.alertmanager import Alert, AlertmanagerClient, Identities, alerts_from_report, identities
from exporter.model import Action, Finding, Guardrail, Report, Resize, Status, TierReport

from conftest import binary
from realbins import Alertmanager


ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fleet.yaml"


def report(action: str, findings: tuple[Finding, ...] = ()) -> Report:
    tier = TierReport("h100", 5, 5, {}, (), Resize(5, 7, Action(action), "tier h100 needs 7 instances, has 5: ...", 40.0),
                      None, findings, {"circuit_breaker_queue_threshold": Guardrail(85, 80, 90, "Little's Law")})
    return Report(generated_at=time.time(), window_seconds=300, tiers={"h100": tier})


def _time(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


T = TypeVar("T")


def wait_for(fn: Callable[[], T], timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def _ids(at_once: bool = False, **labels: str) -> Identities:
    """The example config's identities; ``at_once``: every for: 0s (posts are sent on the first cycle)."""
    from exporter.config import load_config
    from exporter.model import ALERT_FOR, Alerting
    config = dataclasses.replace(load_config(str(EXAMPLE)), alert_labels=labels)
    if at_once:
        config = dataclasses.replace(config, alerting=Alerting(
            for_={family: {severity: 0.0 for severity in by} for family, by in ALERT_FOR.items()}))
    return identities(config)


def test_posts_copy_the_rules_name_labels_and_annotations() -> None:
    """fleetwatch posts a problem as the rule raising it: same name, same labels, the annotations the
    rule's templates give for the same value (here as promtool expects them from the committed rules)."""
    ids = _ids(namespace="llm")
    a = alerts_from_report(report("scale_up", (Finding("mixed_tier", Status.WARNING, "h100-3 ...", "h100-3"),
                                                Finding("mixed_tier", Status.WARNING, "h100-1 ...", "h100-1"),
                                                Finding("target_down", Status.OK, "fine"))), ids)
    names = {x.labels["alertname"]: x for x in a}
    assert sorted(x.labels["alertname"] for x in a) == ["FleetwatchMixedTier", "FleetwatchScaleUp"]  # one per kind
    up = names["FleetwatchScaleUp"]
    assert dict(up.labels) == {"alertname": "FleetwatchScaleUp", "severity": "critical", "tier": "h100",
                               "namespace": "llm"}
    rule = next(r for g in yaml.safe_load((ROOT / "rules" / "fleetwatch.rules.yml").read_text())["groups"]
                for r in g["rules"] if r.get("alert") == "FleetwatchScaleUp")
    assert set(rule["labels"]) | {"alertname", "tier"} == set(up.labels)
    assert set(up.annotations) == set(rule["annotations"])
    assert up.annotations["runbook_url"] == rule["annotations"]["runbook_url"]
    assert up.annotations["description"].startswith("Tier h100 needs 7 instances, has 5: ")
    again = alerts_from_report(report("scale_up"), ids)
    assert again[0].fingerprint == up.fingerprint  # the count is not a label


def test_every_post_carries_the_configs_static_labels() -> None:
    findings = (Finding("mixed_tier", Status.WARNING, "h100-3 ...", "h100-3"),)
    plain = alerts_from_report(report("scale_up", findings), _ids())
    labelled = alerts_from_report(report("scale_up", findings), _ids(namespace="llm", team="inference"))
    assert len(labelled) == len(plain) == 2
    for a, b in zip(plain, labelled):
        assert b.labels == {"namespace": "llm", "team": "inference", **a.labels}


def test_resize_trigger_round_trip_through_a_real_alertmanager(alertmanager: Alertmanager) -> None:
    client = AlertmanagerClient([alertmanager.url], interval=1.0)
    client.update(alerts_from_report(report("scale_up"), _ids(at_once=True)))
    client.flush()
    got = wait_for(lambda: alertmanager.alerts(alertname="FleetwatchScaleUp", tier="h100"))
    assert len(got) == 1, got
    a = got[0]
    assert a["labels"] == {"alertname": "FleetwatchScaleUp", "tier": "h100", "severity": "critical"}
    assert "needs 7 instances, has 5" in a["annotations"]["description"]
    assert a["status"]["state"] == "active"
    assert _time(a["endsAt"]) - _time(a["startsAt"]) >= 4 * 60 - 5  # 4 x max(interval, resend delay)
    # the trigger clears: the same labels are sent with endsAt = now and Alertmanager resolves it
    client.update([])
    client.flush()
    resolved = wait_for(lambda: not alertmanager.alerts(alertname="FleetwatchScaleUp", tier="h100")
                        or all(_time(x["endsAt"]) <= time.time() + 1 for x in
                               alertmanager.alerts(alertname="FleetwatchScaleUp", tier="h100")))
    assert resolved
    assert client.stats().sent[alertmanager.url] == 2 and client.stats().failed[alertmanager.url] == 0


def test_an_outage_loses_nothing() -> None:
    am = Alertmanager(binary("prometheus-alertmanager"))
    try:
        client = AlertmanagerClient([am.url], interval=1.0, timeout=1.0)
        am.stop()
        am.wipe()
        firing = [Alert({"alertname": "FleetwatchScaleUp", "tier": "a100",
                         "severity": "critical"}, {"summary": "scale up", "description": "needs 4"})]
        client.update(firing)
        client.flush()  # refused: kept
        assert client.stats().failed[am.url] == 1 and client.stats().queued[am.url] == 1
        client.update(firing)  # still firing while Alertmanager is away; nothing new is due yet
        client.flush()
        am.start()  # back, with no memory of the alert
        client.update(firing)
        client.flush()
        got = wait_for(lambda: am.alerts(alertname="FleetwatchScaleUp", tier="a100"))
        assert len(got) == 1 and got[0]["annotations"]["description"] == "needs 4"
        assert client.stats().queued[am.url] == 0 and client.stats().dropped[am.url] == 0
    finally:
        am.stop()


def test_a_full_queue_drops_the_oldest_and_counts_it() -> None:
    client = AlertmanagerClient(["http://127.0.0.1:9"], interval=1.0, max_queue=2, timeout=0.2)
    client.update([Alert({"alertname": "A", "tier": str(i)}, {}) for i in range(3)])
    assert client.stats().dropped["http://127.0.0.1:9"] == 1 and client.stats().queued["http://127.0.0.1:9"] == 2


def test_a_post_waits_its_rules_for_like_prometheus_does() -> None:
    """A verdict that holds for less than its alert's for: is never sent (nor resolved); one that holds
    is sent once it has, with startsAt when it began, as Prometheus sends a rule's alert."""
    now = [1000.0]
    client = AlertmanagerClient(["http://127.0.0.1:9"], interval=15.0, clock=lambda: now[0])
    queued = client.queues["http://127.0.0.1:9"]
    blip = Alert({"alertname": "FleetwatchRecharacterize", "tier": "t"}, {}, hold=60.0)
    client.update([blip])
    now[0] = 1015.0
    client.update([])  # one cycle's verdict, gone before its for:
    assert not queued and blip.fingerprint not in client.active
    for t in (2000.0, 2030.0):
        now[0] = t
        client.update([blip])
        assert not queued  # pending
    now[0] = 2060.0
    client.update([blip])
    (payload,) = queued.values()
    assert payload["startsAt"].startswith("1970-01-01T00:33:20")  # 2000 s: when it began


def test_identities_hold_each_post_for_its_rules_for() -> None:
    ids = _ids()
    config_for = {(n, sev): secs for (n, sev, _), secs in ids.holds.items()}
    rules = {(r["alert"], r["labels"]["severity"]): r["for"] for g in yaml.safe_load(
        (ROOT / "rules" / "fleetwatch.rules.yml").read_text())["groups"] for r in g["rules"] if "alert" in r}
    from exporter.config import parse_duration
    assert config_for[("FleetwatchScaleUp", "critical")] == parse_duration(rules[("FleetwatchScaleUp", "critical")])
    (up,) = [a for a in alerts_from_report(report("scale_up"), ids) if a.labels["alertname"] == "FleetwatchScaleUp"]
    assert up.hold == config_for[("FleetwatchScaleUp", "critical")]


def test_resolved_alerts_are_resent_for_15_minutes_then_forgotten() -> None:
    now = [1000.0]
    client = AlertmanagerClient(["http://127.0.0.1:9"], interval=15.0, clock=lambda: now[0])
    a = Alert({"alertname": "A", "tier": "t"}, {})
    client.update([a])
    client.update([])  # resolved at 1000
    queued = client.queues["http://127.0.0.1:9"]
    assert next(iter(queued.values()))["endsAt"].startswith("1970-01-01T00:16:40")
    for t in (1061.0, 1500.0, 1899.0):
        now[0] = t
        client.update([])
        assert a.fingerprint in client.active
    now[0] = 1901.0
    client.update([])
    assert a.fingerprint not in client.active


def test_notification_counters_on_metrics_pass_promtool() -> None:
    import subprocess

    from prometheus_client import generate_latest

    from exporter.alertmanager import NotifyStats
    from exporter.collector import Published, Snapshot, make_registry
    from exporter.config import load_config
    from exporter.scrape import ScrapeStats
    from pathlib import Path

    config = load_config(str(Path(__file__).resolve().parents[1] / "examples" / "fleet.yaml"))
    snap = Snapshot()
    url = "http://am-0:9093"
    snap.publish(Published(report("scale_up"), ScrapeStats(), 1, 0.1, 0, NotifyStats({url: 3}, {url: 1}, {url: 0},
                                                                                      {url: 2})))
    text = generate_latest(make_registry(config, snap)).decode()
    assert f'fleetwatch_alertmanager_notifications_failed_total{{alertmanager="{url}"}} 1.0' in text
    assert 'fleetwatch_guardrail_recommended{bound="value",guardrail="circuit_breaker_queue_threshold",tier="h100"} 85.0' in text
    r = subprocess.run([binary("promtool"), "check", "metrics"], input=text.encode(), capture_output=True)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()
