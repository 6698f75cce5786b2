"""fleetwatch's alerts through kube-prometheus-stack's Alertmanager, on a real Alertmanager: the stack's
default configuration (its inhibit_rules, rendered from the vendored chart) with fleetwatch's
AlertmanagerConfig merged in as prometheus-operator merges it. No fleetwatch alert is an info alert that
the InfoInhibitor would suppress, and each arrives at the receiver its routes name."""
from __future__ import annotations

import base64
import copy
import time
from typing import Any, Iterator

import pytest
import yaml

from exporter.alertmanager import alerts_from_report, identities
from exporter.config import load_config
from exporter.model import Action, Finding, Report, Resize, Status, TierReport

from conftest import binary
from k8s import CHARTS, KPS_OFF, ROOT, matches, namespace_selected, render_chart, validate_crds
from realbins import Alertmanager

AMC = ROOT / "deploy" / "alertmanager" / "alertmanagerconfig.yaml"
NAMESPACE = "llm"
RESIZE = {"FleetwatchScaleUp", "FleetwatchScaleDown"}


def stack() -> list[dict[str, Any]]:
    return render_chart(CHARTS / "kube-prometheus-stack", KPS_OFF, "kps", "monitoring")


def stack_config() -> dict[str, Any]:
    (secret,) = [d for d in stack() if d["kind"] == "Secret" and "alertmanager" in d["metadata"]["name"]]
    doc: dict[str, Any] = yaml.safe_load(base64.b64decode(secret["data"]["alertmanager.yaml"]))
    return doc


def merged(base: dict[str, Any], amc: dict[str, Any]) -> dict[str, Any]:
    """What prometheus-operator (matcher strategy OnNamespace, the stack's default) makes of an
    AlertmanagerConfig: its receivers renamed <namespace>/<name>/<receiver>, its route prefixed to the
    top route's children with a namespace="<its namespace>" matcher and continue: true."""
    ns, name = amc["metadata"]["namespace"], amc["metadata"]["name"]
    out = copy.deepcopy(base)

    def route(r: dict[str, Any], top: bool) -> dict[str, Any]:
        conv: dict[str, Any] = {}
        if "receiver" in r:
            conv["receiver"] = f"{ns}/{name}/{r['receiver']}"
        conv["matchers"] = ([f'namespace="{ns}"'] if top else []) + [
            f'{m["name"]}{m.get("matchType", "=")}"{m["value"]}"' for m in r.get("matchers", [])]
        for camel, snake in (("groupBy", "group_by"), ("groupWait", "group_wait"), ("groupInterval", "group_interval"),
                             ("repeatInterval", "repeat_interval")):
            if camel in r:
                conv[snake] = r[camel]
        if top:
            conv["continue"] = True
        if r.get("routes"):
            conv["routes"] = [route(c, False) for c in r["routes"]]
        return conv

    spec = amc["spec"]
    out["route"]["routes"] = [route(spec["route"], True)] + list(out["route"].get("routes") or [])
    out["receivers"] = list(out.get("receivers") or []) + [
        {"name": f"{ns}/{name}/{r['name']}",
         "webhook_configs": [{"url": w["url"], "send_resolved": w.get("sendResolved", False)} for w in r["webhookConfigs"]]}
        for r in spec["receivers"]]
    out.pop("templates", None)  # the stack's template folder is not on this machine
    return out


def expected_receiver(labels: dict[str, str]) -> str:
    """fleetwatch's routes, in words: resize triggers to the autoscaler, critical to the pager, the rest to chat."""
    if labels["alertname"] in RESIZE:
        return "llm/fleetwatch/autoscaler"
    return "llm/fleetwatch/pager" if labels.get("severity") == "critical" else "llm/fleetwatch/team-chat"


def rule_alerts() -> list[dict[str, str]]:
    """One firing alert per alert rule the generator wrote (rules/, from examples/fleet.yaml), with the labels
    Prometheus would send: its static labels and, where the rule keeps them, an instance or check."""
    doc = yaml.safe_load((ROOT / "rules" / "fleetwatch.rules.yml").read_text())
    out = []
    for g in doc["groups"]:
        for r in g["rules"]:
            if "alert" in r:
                out.append({"alertname": r["alert"], **{k: str(v) for k, v in r["labels"].items()}})
    return out


def own_alerts() -> list[dict[str, str]]:
    """fleetwatch's own posts, with the example's alert_labels."""
    tier = TierReport("h100", 5, 5, {}, (), Resize(5, 7, Action.SCALE_UP, "tier h100 needs 7 instances, has 5", 40.0), None,
                      (Finding("mixed_tier", Status.WARNING, "h100-3 ...", "h100-3"),
                       Finding("runaway_generation", Status.CRITICAL, "35% ...")), {})
    report = Report(time.time(), 300, {"h100": tier})
    config = load_config(str(ROOT / "examples" / "fleet.yaml"))
    assert config.alert_labels == {"namespace": NAMESPACE}
    return [dict(a.labels) for a in alerts_from_report(report, identities(config))]


@pytest.fixture
def stack_alertmanager(tmp_path: Any) -> Iterator[tuple[Alertmanager, dict[str, Any]]]:
    cfg = merged(stack_config(), yaml.safe_load(AMC.read_text()))
    am = Alertmanager(binary("prometheus-alertmanager"), yaml.safe_dump(cfg))
    try:
        yield am, cfg
    finally:
        am.stop()


def post(am: Alertmanager, alerts: list[dict[str, str]]) -> None:
    import requests

    r = requests.post(am.url + "/api/v2/alerts", json=[{"labels": a} for a in alerts], timeout=10)
    assert r.status_code == 200, r.text


def states(am: Alertmanager, n: int) -> dict[tuple[tuple[str, str], ...], dict[str, Any]]:
    """label set -> {state, receivers, inhibitedBy} once Alertmanager holds ``n`` alerts and two reads in a
    row agree (it marks inhibitions as alerts arrive): polling the real process, with a guard."""
    import requests

    def read() -> dict[tuple[tuple[str, str], ...], dict[str, Any]]:
        got = requests.get(am.url + "/api/v2/alerts", timeout=10).json()
        return {tuple(sorted(a["labels"].items())): {"state": a["status"]["state"],
                                                      "inhibitedBy": sorted(a["status"]["inhibitedBy"]),
                                                      "receivers": sorted(r["name"] for r in a["receivers"])}
                for a in got}

    guard = time.monotonic() + 30
    last = read()
    while True:
        time.sleep(0.3)  # polling an external process, not simulating time
        now = read()
        if (len(now) >= n and now == last) or time.monotonic() > guard:
            return now
        last = now


def test_the_alertmanagerconfig_fits_its_crd_and_the_stack_selects_it() -> None:
    amc = yaml.safe_load(AMC.read_text())
    assert validate_crds([amc]) == {"AlertmanagerConfig"}
    (am,) = [d for d in stack() if d["kind"] == "Alertmanager"]
    assert matches(am["spec"]["alertmanagerConfigSelector"], amc["metadata"].get("labels") or {})
    assert namespace_selected(am["spec"]["alertmanagerConfigNamespaceSelector"], amc["metadata"]["namespace"],
                              am["metadata"]["namespace"])
    # the matcher strategy is the default, OnNamespace: only alerts labelled with its namespace reach it
    assert (am["spec"].get("alertmanagerConfigMatcherStrategy") or {}).get("type", "OnNamespace") == "OnNamespace"


def test_no_fleetwatch_alert_is_an_info_alert() -> None:
    assert {a["severity"] for a in rule_alerts() + own_alerts()} <= {"warning", "critical"}
    assert all(a.get("namespace") == NAMESPACE for a in rule_alerts() + own_alerts())


@pytest.mark.integration
def test_every_alert_arrives_where_the_routes_say(stack_alertmanager: tuple[Alertmanager, dict[str, Any]]) -> None:
    am, _ = stack_alertmanager
    inhibitor = {"alertname": "InfoInhibitor", "namespace": NAMESPACE, "severity": "none"}
    warnings = [a for a in rule_alerts() + own_alerts() if a["severity"] == "warning"]
    criticals = [a for a in rule_alerts() + own_alerts() if a["severity"] == "critical"]
    # the InfoInhibitor fires in fleetwatch's namespace, beside every warning: none is suppressed
    post(am, [inhibitor, *warnings])
    got = states(am, len(warnings) + 1)
    for a in warnings:
        s = got[tuple(sorted(a.items()))]
        assert s["state"] == "active" and s["receivers"] == [expected_receiver(a)], (a, s)
    # and every critical alert too, each where the routes say
    post(am, criticals)
    got = states(am, len(warnings) + len(criticals) + 1)
    for a in criticals:
        s = got[tuple(sorted(a.items()))]
        assert s["state"] == "active" and s["receivers"] == [expected_receiver(a)], (a, s)
    # the stack's own rule, critical inhibits warning of the same alertname in the same namespace: a tier's
    # warning is muted while any tier of the namespace has the same alert critical (README says how to keep
    # tiers apart)
    critical_names = {a["alertname"] for a in criticals}
    for a in warnings:
        s = got[tuple(sorted(a.items()))]
        assert (s["state"] == "suppressed") == (a["alertname"] in critical_names), (a, s)


@pytest.mark.integration
def test_with_tier_in_the_stacks_inhibition_tiers_stay_apart(tmp_path: Any) -> None:
    cfg = merged(stack_config(), yaml.safe_load(AMC.read_text()))
    for rule in cfg["inhibit_rules"]:
        if "alertname" in rule.get("equal", []):
            rule["equal"] = [*rule["equal"], "tier"]  # the README's change to the stack's values
    am = Alertmanager(binary("prometheus-alertmanager"), yaml.safe_dump(cfg))
    try:
        warn = {"alertname": "FleetwatchTTFTP99High", "severity": "warning", "tier": "h100", "namespace": NAMESPACE}
        crit = {**warn, "severity": "critical", "tier": "a100"}
        same = {**warn, "severity": "critical"}
        post(am, [warn, crit])
        got = states(am, 2)
        assert got[tuple(sorted(warn.items()))]["state"] == "active"  # another tier's critical: not muted
        post(am, [same])
        got = states(am, 3)
        assert got[tuple(sorted(warn.items()))]["state"] == "suppressed"  # its own tier's critical mutes it
    finally:
        am.stop()
