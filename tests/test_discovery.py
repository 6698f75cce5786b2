"""Fleet-mode discovery: DNS (A and SRV) from a real DNS exchange with a small server on loopback,
and the Kubernetes EndpointSlice API from kmock's emulated API server on loopback; the targets
found are scraped by the same pipeline as listed ones."""
from __future__ import annotations

import asyncio
import importlib.util
import socket
import threading
import time
from datetime import datetime, timezone
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pytest

from exporter.config import ConfigError, load_config
from exporter.daemon import Pipeline
from exporter.discovery import (DiscoveryError, Discoverer, KubernetesApi, dns_targets, kubernetes_targets,
                                resolve)
from exporter.model import DnsDiscovery, EndpointTemplate, KubernetesDiscovery
from exporter.scrape import Scraper

from conftest import fixture_text, need
from fakes import FakeTarget

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "examples" / "plans" / "h100.yaml"
TEMPLATE = EndpointTemplate()


# ---------------------------------------------------------------- a DNS server on loopback


class DnsServer:
    """Answers A, AAAA and SRV questions from ``zone`` (name -> rdtype -> record texts); NXDOMAIN else."""

    def __init__(self, zone: dict[str, dict[str, list[str]]], silent: bool = False) -> None:
        import dns.message
        import dns.rcode
        import dns.rrset

        self.zone, self.silent = zone, silent
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

        def run() -> None:
            while True:
                try:
                    data, addr = self.sock.recvfrom(4096)
                except OSError:
                    return
                if self.silent:
                    continue
                q = dns.message.from_wire(data)
                r = dns.message.make_response(q)
                question = q.question[0]
                name = question.name.to_text().rstrip(".")
                rdtype = dns.rdatatype.to_text(question.rdtype)
                if name not in self.zone:
                    r.set_rcode(dns.rcode.NXDOMAIN)
                elif self.zone[name].get(rdtype):
                    r.answer.append(dns.rrset.from_text(question.name, 30, "IN", rdtype, *self.zone[name][rdtype]))
                self.sock.sendto(r.to_wire(), addr)

        threading.Thread(target=run, daemon=True).start()

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.sock.close()


def test_dns_a_and_srv_records_become_targets() -> None:
    import dns.rdatatype  # noqa: F401 - loaded for the server thread

    server = DnsServer({
        "vllm-h100.llm.svc": {"A": ["10.0.0.6", "10.0.0.5"], "AAAA": ["fd00::7"]},
        "_metrics._tcp.vllm-a100.llm.svc": {"SRV": ["0 0 8001 a100-0.vllm-a100.llm.svc.", "0 0 8001 a100-1.vllm-a100.llm.svc."]},
        "empty.llm.svc": {},
    })
    try:
        a = DnsDiscovery("vllm-h100.llm.svc", "A", 8000, server.nameserver)
        found = dns_targets(a, TEMPLATE, resolve(a, 2.0))
        assert [(t.name, t.url) for t in found] == [
            ("10.0.0.5:8000", "http://10.0.0.5:8000/metrics"), ("10.0.0.6:8000", "http://10.0.0.6:8000/metrics"),
            ("fd00::7:8000", "http://[fd00::7]:8000/metrics")]
        srv = DnsDiscovery("_metrics._tcp.vllm-a100.llm.svc", "SRV", None, server.nameserver)
        sglang = EndpointTemplate(engine="sglang", path="/m", scheme="https")
        found = dns_targets(srv, sglang, resolve(srv, 2.0))
        assert [(t.name, t.url, t.engine) for t in found] == [
            ("a100-0.vllm-a100.llm.svc:8001", "https://a100-0.vllm-a100.llm.svc:8001/m", "sglang"),
            ("a100-1.vllm-a100.llm.svc:8001", "https://a100-1.vllm-a100.llm.svc:8001/m", "sglang")]
        for name, kind, reason in (("nothing.llm.svc", "A", "nxdomain"), ("empty.llm.svc", "A", "empty"),
                                   ("empty.llm.svc", "SRV", "empty")):
            with pytest.raises(DiscoveryError) as e:
                resolve(DnsDiscovery(name, kind, 1, server.nameserver), 2.0)
            assert e.value.reason == reason, (name, kind)
        server.silent = True
        with pytest.raises(DiscoveryError) as e:
            resolve(a, 0.3)
        assert e.value.reason == "timeout"
    finally:
        server.close()


# ---------------------------------------------------------------- EndpointSlices, pure


def _slice(name: str, service: str, endpoints: list[dict[str, Any]], port: int, port_name: str = "http"
           ) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "llm", "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": [{"name": port_name, "port": port}]}


def _ep(pod: str, addr: str = "127.0.0.1", node: str = "n1", terminating: bool = False) -> dict[str, Any]:
    return {"addresses": [addr], "conditions": {"ready": not terminating, "terminating": terminating},
            "nodeName": node, "targetRef": {"kind": "Pod", "name": pod, "namespace": "llm"}}


def _pod(name: str, tier: str | None) -> dict[str, Any]:
    labels = {"app": "vllm"} | ({"fleetwatch.io/tier": tier} if tier else {})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "llm", "labels": labels}}


SPEC = KubernetesDiscovery("llm", "vllm", "fleetwatch.io/tier", "http", dcgm_namespace="gpu", dcgm_service="dcgm",
                           dcgm_port="9400")


def test_endpoint_slices_map_pods_to_tiers_by_label() -> None:
    slices = [_slice("vllm-1", "vllm", [_ep("h-0", "10.0.0.1", "n1"), _ep("a-0", "10.0.0.2", "n2"),
                                        _ep("h-1", "10.0.0.3", "n1", terminating=True), _ep("x-0", "10.0.0.4"),
                                        _ep("l-0", "10.0.0.5")], 8000),
              _slice("other-1", "other", [_ep("h-9", "10.9.9.9")], 8000)]
    pods = [_pod("h-0", "h100"), _pod("a-0", "a100"), _pod("h-1", "h100"), _pod("x-0", None), _pod("l-0", "l40s"),
            _pod("h-9", "h100")]
    dcgm = [_slice("dcgm-1", "dcgm", [_ep("dcgm-a", "10.1.0.1", "n1"), _ep("dcgm-b", "10.1.0.2", "n2")], 9400,
                   "metrics")]
    by_tier, unknown = kubernetes_targets(replace(SPEC, dcgm_port="metrics"), TEMPLATE, ["h100", "a100"], slices,
                                          pods, dcgm)
    assert unknown == {"l40s"}
    (h,), (a,) = by_tier["h100"], by_tier["a100"]
    assert (h.name, h.url, h.dcgm) == ("h-0", "http://10.0.0.1:8000/metrics", "http://10.1.0.1:9400/metrics")
    assert h.gpus is not None and (h.gpus.pod, h.gpus.namespace) == ("h-0", "llm")
    assert (a.name, a.dcgm) == ("a-0", "http://10.1.0.2:9400/metrics")
    # a port given by number, and no dcgm Service: no GPUs read
    by_tier, _ = kubernetes_targets(replace(SPEC, port="8000", dcgm_service=None), TEMPLATE, ["h100"], slices, pods)
    assert [(t.name, t.dcgm, t.gpus) for t in by_tier["h100"]] == [("h-0", None, None)]


# ---------------------------------------------------------------- EndpointSlices from an API server


@pytest.fixture
def kube() -> Iterator[tuple[str, Any, asyncio.AbstractEventLoop]]:
    """kmock's Kubernetes emulator on a loopback port, on its own event loop thread."""
    need(importlib.util.find_spec("kmock") is not None, "kmock not installed (pip install -e '.[test]')")
    import kmock
    loop = asyncio.new_event_loop()
    ready, box, stop = threading.Event(), dict[str, Any](), asyncio.Event()

    async def main() -> None:
        async with kmock.KubernetesEmulator() as em, kmock.Server(em) as srv:
            box["url"], box["em"] = str(srv.url).rstrip("/"), em
            ready.set()
            await stop.wait()

    th = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    th.start()
    assert ready.wait(10), "the emulated API server did not start"
    yield box["url"], box["em"], loop
    loop.call_soon_threadsafe(stop.set)
    th.join(10)


def _put(url: str, path: str, obj: dict[str, Any]) -> None:
    import requests

    r = requests.post(url + path, json=obj, timeout=5)
    assert r.status_code in (200, 201), r.text


def test_a_fleet_discovered_from_endpoint_slices_is_scraped(kube: tuple[str, Any, Any], tmp_path: Path) -> None:
    import requests

    url, _, _ = kube
    # an engine without prometheus_client's process collector: the cold start is measured from the pod's start
    body = "\n".join(ln for ln in fixture_text("vllm/generated/vllm-0.33.0/snapshot-20.prom").splitlines()
                     if "process_start_time_seconds" not in ln) + "\n"
    engines = [FakeTarget([body]) for _ in range(3)]
    pod_start = time.time() - 30
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    try:
        ports = [int(e.url.split(":")[2].split("/")[0]) for e in engines]
        # one slice per engine port (an EndpointSlice has one port list; the fakes listen on three)
        for i, (name, port) in enumerate(zip(("h-0", "h-1", "a-0"), ports)):
            pod = _pod(name, name[0] == "h" and "h100" or "a100")
            pod["status"] = {"startTime": datetime.fromtimestamp(pod_start, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
            _put(url, "/api/v1/namespaces/llm/pods", pod)
            _put(url, "/apis/discovery.k8s.io/v1/namespaces/llm/endpointslices",
                 _slice(f"vllm-{i}", "vllm", [_ep(name)], port))
        cfg_file = tmp_path / "fleet.yaml"
        cfg_file.write_text(f"""
discovery:
  kubernetes: {{namespace: llm, service: vllm, tier_label: fleetwatch.io/tier, port: http, api: "{url}",
               token_file: {token}, ca_file: /nonexistent}}
tiers:
  h100: {{plan: {PLAN}}}
  a100: {{plan: {PLAN}}}
""")
        cfg = load_config(str(cfg_file))
        scraper = Scraper(cfg)
        try:
            pipe = Pipeline(cfg, scraper)
            pipe.cold_starts.since = pod_start - 60  # the pods started while fleetwatch watched
            report = pipe.cycle()
            assert (report.tiers["h100"].instances_up, report.tiers["a100"].instances_up) == (2, 1)
            # cold start: the pod's startTime (whole seconds) to its first answered scrape, about 30 s
            cold = pipe.cold_start_p90()
            assert cold["h100"] == pytest.approx(30, abs=2) and cold["a100"] == pytest.approx(30, abs=2), cold
            schedule = report.tiers["h100"].schedule
            assert schedule is not None and schedule.cold_start_p90_seconds == cold["h100"]
            assert {t.name for t in scraper.targets()["h100"]} == {"h-0", "h-1"}
            # h-1's endpoint starts terminating: it leaves the tier at the next cycle, not as "down"
            r = requests.patch(url + "/apis/discovery.k8s.io/v1/namespaces/llm/endpointslices/vllm-1",
                               json={"endpoints": [_ep("h-1", terminating=True)]}, timeout=5,
                               headers={"Content-Type": "application/merge-patch+json"})
            assert r.status_code == 200, r.text
            report = pipe.cycle()
            assert (report.tiers["h100"].instances_up, report.tiers["h100"].instances_total) == (1, 1)
            assert not [f for f in report.tiers["h100"].findings if f.kind == "target_down"]
        finally:
            scraper.close()
        # the API server goes away: the targets found last are kept, and the failure is counted
        assert cfg.kubernetes is not None
        api = KubernetesApi(replace(cfg.kubernetes, api="http://127.0.0.1:9"), 1.0)
        errors: list[tuple[str, str, str]] = []
        d = Discoverer(cfg, lambda *e: errors.append(e), kubernetes=KubernetesApi(cfg.kubernetes, 1.0))
        first = d.refresh()
        d._kube = api
        again = d.refresh()
        assert {n: [t.name for t in ts] for n, ts in again.items()} == \
            {n: [t.name for t in ts] for n, ts in first.items()} == {"h100": ["h-0"], "a100": ["a-0"]}
        assert errors == [("", "llm/vllm", "refused")]
    finally:
        for e in engines:
            e.close()


def test_the_api_server_is_sent_the_service_account_token(kube: tuple[str, Any, Any], tmp_path: Path) -> None:
    url, em, _ = kube
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    _put(url, "/api/v1/namespaces/llm/pods", _pod("h-0", "h100"))
    api = KubernetesApi(replace(SPEC, api=url, token_file=str(token)), 2.0)
    assert [p["metadata"]["name"] for p in api.list("/api/v1/namespaces/llm/pods", "fleetwatch.io/tier")] == ["h-0"]
    seen = [r.headers.get("Authorization") for r in list(em)]
    assert seen and seen[-1] == "Bearer s3cret"


# ---------------------------------------------------------------- config


def test_discovery_config_is_checked(tmp_path: Path) -> None:
    def load(text: str) -> Any:
        f = tmp_path / "f.yaml"
        f.write_text(text.replace("PLAN", str(PLAN)))
        return load_config(str(f))

    cfg = load("tiers:\n  h100:\n    plan: PLAN\n    discover: {dns: {name: vllm.llm.svc, port: 8000}, engine: sglang}\n")
    assert cfg.tiers["h100"].discover == DnsDiscovery("vllm.llm.svc", "A", 8000)
    assert cfg.tiers["h100"].endpoint.engine == "sglang" and cfg.discovers
    for text, where in (
        ("tiers:\n  h100:\n    plan: PLAN\n    discover: {dns: {name: x}}\n", "tiers.h100.discover.dns.port"),
        ("tiers:\n  h100:\n    plan: PLAN\n    discover: {dns: {name: x, type: MX}}\n", "tiers.h100.discover.dns.type"),
        ("tiers:\n  h100:\n    plan: PLAN\n    discover: {dns: {name: x, port: 0}}\n", "tiers.h100.discover.dns.port"),
        ("tiers:\n  h100:\n    plan: PLAN\n    discover: {dns: {name: x, port: 1}, path: metrics}\n",
         "tiers.h100.discover.path"),
        ("tiers:\n  h100:\n    plan: PLAN\n    targets: [{vllm: 'http://a:1/m'}]\n    discover: {dns: {name: x, port: 1}}\n",
         "tiers.h100.discover"),
        ("discovery: {kubernetes: {namespace: llm, service: vllm, port: http}}\ntiers:\n  h100: {plan: PLAN}\n",
         "discovery.kubernetes.tier_label"),
        ("discovery: {kubernetes: {namespace: llm, service: vllm, port: http, tier_label: t, dcgm: {service: d}}}\n"
         "tiers:\n  h100: {plan: PLAN}\n", "discovery.kubernetes.dcgm.port"),
    ):
        with pytest.raises(ConfigError) as e:
            load(text)
        assert e.value.path == where, (text, str(e.value))
