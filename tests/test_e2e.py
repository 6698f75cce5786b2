"""End to end: a real Prometheus, configured from deploy/prometheus/prometheus.example.yml with the
rules `fleetwatch rules` generates, scrapes a simulated two-tier fleet and fleetwatch itself and
sends to a real Alertmanager, to which fleetwatch also posts its own verdicts.

- a100's KV cache runs short: its KV-eviction critical alert reaches Alertmanager, h100's does not;
- h100 is undersized: a resize trigger reaches Alertmanager, from the rules and from fleetwatch.
"""
from __future__ import annotations

import os
import re
from dataclasses import replace
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

import pytest
import yaml

from exporter.daemon import Server
from exporter.lifecycle import serve
from exporter.model import ALERT_FOR, Alerting
from exporter.demo.fleet import TierBehaviour
from exporter.demo.run import WallClock, start_fleet
from exporter.demo.scenarios import HEALTHY_LOAD, Scenario
from exporter.render.rules import build

from conftest import binary
from realbins import Alertmanager, Prometheus, Webhook

ROOT = Path(__file__).resolve().parents[1]
WINDOW, INTERVAL = 10.0, 1.0

E2E = Scenario("e2e", "h100 undersized, a100 short of KV cache", "scale_up on h100, KV eviction on a100", {
    "h100": TierBehaviour(load=lambda t: 1.4),
    "a100": TierBehaviour(load=HEALTHY_LOAD["a100"], kv_scale=0.04),
})


def host(url: str) -> str:
    return urlparse(url).netloc


# the label a multi-cluster setup puts on every series it collects, so that the dashboards' cluster variable has a
# value to pick
CLUSTER = {"cluster": "demo"}


def prometheus_config(demo: Any, fleetwatch_url: str | list[str], rules: Path, am_url: str | None = None) -> str:
    """The deploy example with this test's targets: static tier labels kept, Kubernetes jobs dropped.
    Several fleetwatch URLs are sidecars, one per instance."""
    doc = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.example.yml").read_text())
    doc["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    doc["rule_files"] = [str(rules)]
    if am_url is None:
        del doc["alerting"]
    else:
        doc["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [host(am_url)]}]}]
    jobs = {j["job_name"]: j for j in doc["scrape_configs"] if "kubernetes_sd_configs" not in j}
    for job, static in demo.scrape_targets().items():
        # the label a multi-cluster setup puts on every series
        jobs[job]["static_configs"] = [{**sc, "labels": {**sc["labels"], **CLUSTER}} for sc in static]
    urls = [fleetwatch_url] if isinstance(fleetwatch_url, str) else fleetwatch_url
    jobs["fleetwatch"]["static_configs"] = [{"targets": [host(u) for u in urls], "labels": CLUSTER}]
    for j in jobs.values():
        j["scrape_timeout"] = "900ms"
    doc["scrape_configs"] = list(jobs.values())
    return yaml.safe_dump(doc)


@contextmanager
def fleet_scraped_by_prometheus(tmp_path: Path, scenario: str | Scenario = "healthy", interval: float = 1.0,
                                window: float = 5.0) -> Iterator[tuple[Any, WallClock, Prometheus]]:
    """The simulated fleet on wall-clock time and a real Prometheus scraping its engines and dcgm-exporters
    (no rules, no fleetwatch): (demo, its clock, Prometheus)."""
    demo = start_fleet(scenario, interval=interval, window=window)
    stop = threading.Event()
    clock = WallClock(demo.fleet, stop)
    rules = tmp_path / "none.rules.yml"
    rules.write_text("groups: []\n")
    prom = Prometheus(binary("prometheus"), prometheus_config(demo, [], rules))
    try:
        yield demo, clock, prom
    finally:
        stop.set()
        prom.stop()
        demo.close()


# panels the demo leaves empty in a preview: no speculative decoding, no LoRA, and no plan check or finding
# that is not ok at the moment the picture is taken
PREVIEW_EMPTY_IN_DEMO = {"Speculative decoding acceptance rate", "Adapter eviction rate", "Plan checks not ok",
                         "Findings"}
# what the demo cannot show: its engines run neither speculative decoding nor LoRA, and a plan
# check is "not ok" only while one fails
NO_DATA_IN_DEMO = ("spec_decode", "lora_adapter", 'status=~"warning|critical"')


def dashboard_queries() -> list[tuple[str, str]]:
    """Every panel query of the generated dashboards (collapsed rows hold some), its variables not yet substituted."""
    import json as _json

    from exporter.render.dashboards import build as dashboards

    out = []
    for name, text in dashboards().items():
        board = _json.loads(text)
        for p in [q for top in board["panels"] for q in (top, *top.get("panels", []))]:
            for t in p.get("targets", []):
                if not any(s in t["expr"] for s in NO_DATA_IN_DEMO):
                    out.append((f"{name}: {p['title']}", t["expr"]))
    return out


def substitute(expr: str, chosen: dict[str, str]) -> str:
    """A query as Grafana sends it with the variables in ``chosen`` at one value each and the others at "All" (.*);
    the fleet overview's row repeated per tier reads its one tier (h100 where none is chosen)."""
    from exporter.render.dashboards import QUERY_VARIABLES

    expr = expr.replace('tier="$tier"', f'tier="{chosen.get("tier", "h100")}"')
    for name in QUERY_VARIABLES:
        # a single value is regex-escaped, then escaped again as a PromQL string, as Grafana does
        value = chosen.get(name)
        expr = expr.replace(f"${name}", re.escape(value).replace("\\", "\\\\") if value is not None else ".*")
    return expr.replace("$__rate_interval_ms", str(int(WINDOW * 1000))).replace("$__rate_interval", f"{WINDOW:g}s")


def variable_values(prom: Prometheus, name: str, chosen: dict[str, str]) -> list[str]:
    """What a dashboard variable lists, its label_values query asked of Prometheus as Grafana would, with the
    variables before it at the values in ``chosen``."""
    import json as _json

    from exporter.render.dashboards import build as dashboards

    board = _json.loads(dashboards()["fleetwatch-tier.json"])
    var = next(v for v in board["templating"]["list"] if v["name"] == name)
    m = re.fullmatch(r"label_values\((.*), (\w+)\)", var["query"]["query"])
    assert m, var["query"]
    selector, label = substitute(m[1], chosen), m[2]
    return sorted({r["metric"][label] for r in prom.query(f"group by ({label}) ({selector})") if label in r["metric"]})


def wait_until(check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    return check()


@contextmanager
def fleet_and_fleetwatch(scenario: Scenario, interval: float, window: float,
                         alertmanagers: tuple[str, ...] = (), for_: float | None = None) -> Iterator[tuple[Any, str]]:
    """The simulated fleet on wall-clock time and `serve` watching it: (demo, fleetwatch's /metrics URL).
    ``for_``: every alert's for: in the config (its posts wait it, as the rules generated with --for do)."""
    demo = start_fleet(scenario, interval=interval, window=window, alertmanagers=alertmanagers)
    if for_ is not None:
        demo.config = replace(demo.config, alerting=Alerting(
            for_={family: {severity: for_ for severity in by} for family, by in ALERT_FOR.items()}))
    stop = threading.Event()
    clock = WallClock(demo.fleet, stop)
    ready: list[Server] = []
    daemon = threading.Thread(target=serve, args=(demo.config,),
                              kwargs={"stop": stop, "on_ready": ready.append}, daemon=True)
    daemon.start()
    try:
        assert wait_until(lambda: ready, 10), "fleetwatch did not start"
        yield demo, f"http://127.0.0.1:{ready[0].port}/metrics"
    finally:
        stop.set()
        daemon.join(20)
        clock.thread.join(5)
        demo.close()


@pytest.mark.integration
def test_alerts_reach_alertmanager_for_the_right_tier_once(tmp_path: Path) -> None:
    """The rules in Prometheus and fleetwatch's own posts raise the same problems under one identity:
    the webhook behind Alertmanager receives one notification per problem, not one per path."""
    prometheus_bin = binary("prometheus")
    hook = Webhook()
    alertmanager = Alertmanager(binary("prometheus-alertmanager"), hook.alertmanager_config())
    with fleet_and_fleetwatch(E2E, INTERVAL, WINDOW, (alertmanager.url,), for_=2.0) as (demo, fleetwatch_url):
        prom = None
        try:
            rules = tmp_path / "rules"
            for name, text in build(demo.config, eval_interval="1s").items():  # for: 2s, from the config
                (rules / name).parent.mkdir(parents=True, exist_ok=True)
                (rules / name).write_text(text)
            prom = Prometheus(prometheus_bin, prometheus_config(demo, fleetwatch_url, rules / "fleetwatch.rules.yml",
                                                               alertmanager.url))

            def kv(tier: str) -> list[dict[str, Any]]:
                return alertmanager.alerts(alertname="FleetwatchKVCacheEvictionHigh", tier=tier, severity="critical")

            # case 1: the KV eviction critical band, crossed by a100 only
            assert wait_until(lambda: kv("a100"), 60), (
                f"no KV alert; recorded: {prom.query('tier:fleetwatch_kv_cache_eviction_ratio:increase10s')}")
            # case 2: h100 is undersized: the rules and fleetwatch both raise it, as one alert
            scale_up = wait_until(lambda: alertmanager.alerts(alertname="FleetwatchScaleUp", tier="h100"), 60)
            assert scale_up, f"no ScaleUp; fleetwatch says {prom.query('fleetwatch_resize_action == 1')}"
            assert len(scale_up) == 1 and scale_up[0]["labels"] == {
                "alertname": "FleetwatchScaleUp", "severity": "critical", "tier": "h100", **demo.config.alert_labels}
            needs = re.search(r"needs (\S+) instances, has (\S+?):", scale_up[0]["annotations"]["description"])
            assert needs and int(needs.group(1)) > int(needs.group(2)) == len(demo.config.tiers["h100"].targets), needs
            # both paths raised it: Prometheus's rule fires, and fleetwatch posted its own verdict
            assert wait_until(lambda: prom.query('ALERTS{alertname="FleetwatchScaleUp",alertstate="firing",'
                                                 'tier="h100"}'), 30)
            assert wait_until(lambda: prom.query('fleetwatch_resize_action{tier="h100",action="scale_up"} == 1'), 30)
            assert wait_until(lambda: prom.query("sum(fleetwatch_alertmanager_notifications_sent_total) > 0"), 30)
            time.sleep(5)  # a second notification (another label set) would come after group_wait (1s)
            sent: dict[tuple[str, str, str], int] = {}
            for n in hook.notifications:
                assert len(n["alerts"]) == 1, n  # every alert its own group
                labels = n["alerts"][0]["labels"]
                key = (labels["alertname"], labels.get("tier", ""), labels["severity"])
                sent[key] = sent.get(key, 0) + 1
            assert sent.get(("FleetwatchScaleUp", "h100", "critical")) == 1, sent
            assert sent.get(("FleetwatchKVCacheEvictionHigh", "a100", "critical")) == 1, sent
            assert all(count == 1 for count in sent.values()), sent
            # the other tier stayed out of it
            assert kv("h100") == []
            assert alertmanager.alerts(alertname="FleetwatchScaleUp", tier="a100") == []
            # every dashboard panel's query, its variables substituted, returns data from this Prometheus: at "All",
            # and at one tier and one of the instances the instance variable lists for it
            queries = dashboard_queries()
            empty = [(name, expr) for name, expr in queries if not prom.query(substitute(expr, {}))]
            assert empty == [], empty
            # and at one value of every variable, each picked from what the variable lists once the ones before it
            # are picked, as an operator narrows a dashboard (a plan check the overloaded h100 tier cannot predict
            # has its data on a100: each query answers for one tier at least)
            from exporter.render.dashboards import QUERY_VARIABLES

            answered: dict[tuple[str, int], bool] = {}
            for one in ("h100", "a100"):
                chosen: dict[str, str] = {}
                for var in QUERY_VARIABLES:
                    values = variable_values(prom, var, chosen)
                    assert values, (var, chosen)
                    chosen[var] = one if var == "tier" else values[0]
                    assert chosen[var] in values, (var, values)
                assert chosen["cluster"] == "demo" and chosen["namespace"] == "llm", chosen
                assert chosen["model"] == demo.fleet.tiers[one].instances[0].engine.model_name, chosen
                assert ":" in chosen["instance"], chosen  # the engines' own instance label (host:port)
                for at, (name, expr) in enumerate(queries):
                    answered[(name, at)] = answered.get((name, at), False) or bool(prom.query(substitute(expr, chosen)))
            assert [k for k, ok in answered.items() if not ok] == []
            # each variable narrows every query that names it: at a value no series has, they answer nothing
            for var in ("cluster", "namespace", "model", "instance"):
                narrowed = [(name, expr) for name, expr in queries if f"${var}" in expr]
                assert narrowed, var
                kept = [name for name, expr in narrowed if prom.query(substitute(expr, {var: "nowhere"}))]
                assert kept == [], (var, kept)
            # and the alert annotations mark the ScaleUp that fired
            from exporter.render.dashboards import ALERTS

            assert prom.query(substitute(ALERTS, {"tier": "h100"})), "no annotation for the firing ScaleUp"
            # and the dashboards drawn from this Prometheus (`fleetwatch dashboards --preview`): every panel but the
            # ones the demo cannot fill has data (FLEETWATCH_PREVIEW_OUT keeps the pictures: docs/preview/)
            from exporter.render.preview import preview

            out = Path(os.environ.get("FLEETWATCH_PREVIEW_OUT") or tmp_path / "preview")
            drawn = preview(prom.url, out, 60.0, time.time())
            assert sorted(drawn) == ["fleetwatch-fleet.png", "fleetwatch-plan.png", "fleetwatch-tier.png"]
            assert all((out / png).stat().st_size > 20_000 for png in drawn)
            unfilled = {t for titles in drawn.values() for t in titles} - PREVIEW_EMPTY_IN_DEMO
            assert unfilled == set(), drawn
        finally:
            if prom is not None:
                prom.stop()
            alertmanager.stop()
            hook.close()


@pytest.mark.integration
def test_a_healthy_fleet_raises_no_alert_from_any_path(tmp_path: Path) -> None:
    """Side by side on a healthy fleet from its first second: the rules with ``for:`` at its defaults and
    at 15 s (two Prometheus), and fleetwatch's own posts (waiting 15 s too), all to one Alertmanager. No alert fires on
    either Prometheus in any second, and nothing reaches the webhook: not in the first window, where a
    rate over a few seconds reads low, nor later."""
    from exporter.demo.scenarios import SCENARIOS

    prometheus_bin = binary("prometheus")
    hook = Webhook()
    alertmanager = Alertmanager(binary("prometheus-alertmanager"), hook.alertmanager_config())
    proms: list[Prometheus] = []
    with fleet_and_fleetwatch(SCENARIOS["healthy"], INTERVAL, WINDOW, (alertmanager.url,), for_=15.0) as (
            demo, fleetwatch_url):
        try:
            for name, for_ in (("default", None), ("fifteen", "15s")):
                rules = tmp_path / name
                # the rules as generated from a config with the default alerting, or with --for 15s
                for file, text in build(replace(demo.config, alerting=Alerting()), for_=for_,
                                        eval_interval="1s").items():
                    (rules / file).parent.mkdir(parents=True, exist_ok=True)
                    (rules / file).write_text(text)
                proms.append(Prometheus(prometheus_bin, prometheus_config(
                    demo, fleetwatch_url, rules / "fleetwatch.rules.yml", alertmanager.url)))
            fired: list[dict[str, Any]] = []
            pending: set[tuple[str, str]] = set()
            deadline = time.monotonic() + 4 * WINDOW + 15
            while time.monotonic() < deadline:  # a real Prometheus evaluating each second: read each second
                for prom in proms:
                    for a in prom.query("ALERTS"):
                        m = a["metric"]
                        if m["alertstate"] == "firing":
                            fired.append(m)
                        else:
                            pending.add((m["alertname"], m.get("tier", "")))
                time.sleep(1.0)
            # the rules saw the fleet all along: the rows were computed, fleetwatch was scraped
            for prom in proms:
                assert prom.query("tier:fleetwatch_fleet_utilization_ratio:rate10s"), "no rows computed"
                assert prom.query("fleetwatch_last_cycle_timestamp_seconds")
            assert fired == [], (fired, pending)
            assert hook.notifications == [], hook.notifications
        finally:
            for prom in proms:
                prom.stop()
            alertmanager.stop()
            hook.close()
