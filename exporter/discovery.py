"""Fleet-mode target discovery: a static list (the config's ``targets:``), DNS (A or SRV records of
a headless Service, per tier), or the Kubernetes EndpointSlice API (one Service, each pod's label
naming its tier).

Turning answers into targets is pure (``dns_targets``, ``kubernetes_targets``); the lookups are
the I/O edge, bounded in time and size like scrapes. A lookup that fails keeps the targets the
last good one found, and is counted: a DNS or API hiccup must not make the fleet vanish.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import quote

import requests

from .fetch import FetchError, fetch_text, new_session
from .model import Config, DnsDiscovery, EndpointTemplate, GpuSelector, KubernetesDiscovery, Target
from .text import num

from .secrets import redact

log = logging.getLogger(__name__)

SOURCE = "discovery"  # the `source` label of the lookups' own error counter
MAX_LOOKUP_BYTES = 8 << 20  # an EndpointSlice list of thousands of pods is a few MB
LOOKUP_TIMEOUT = 2.0  # seconds, per lookup, at most
LOOKUP_SHARE = 0.1  # of scrape_timeout, per lookup (a refresh makes one to three)


class DiscoveryError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(redact(message))


def _url(template: EndpointTemplate, host: str, port: int) -> str:
    host = f"[{host}]" if ":" in host else host  # an IPv6 address
    return f"{template.scheme}://{host}:{port}{template.path}"


def _target(template: EndpointTemplate, name: str, url: str, dcgm: str | None = None,
            gpus: GpuSelector | None = None) -> Target:
    return Target(name=name, engine=template.engine, url=url, dcgm=dcgm, gpus=gpus,
                  bearer_token_file=template.bearer_token_file)


# ---------------------------------------------------------------- pure: answers -> targets


def dns_targets(spec: DnsDiscovery, template: EndpointTemplate, records: Iterable[tuple[str, int | None]]
                ) -> tuple[Target, ...]:
    """Targets from (host, port) records; an A record's port is the spec's. Named host:port, sorted."""
    out = {}
    for host, port in records:
        p = port if port is not None else spec.port
        if p is None:
            continue
        host = host.rstrip(".")
        name = f"{host}:{p}"
        out[name] = _target(template, name, _url(template, host, p))
    return tuple(out[k] for k in sorted(out))


def _port(ports: Sequence[Mapping[str, Any]], want: str) -> int | None:
    for p in ports or ():
        if str(p.get("name", "")) == want or str(p.get("port", "")) == want:
            port = p.get("port")
            return port if isinstance(port, int) else None
    return int(want) if want.isdigit() else None


def _endpoints(slices: Iterable[Mapping[str, Any]], service: str, port_name: str
               ) -> list[tuple[str, int, Mapping[str, Any]]]:
    """(address, port, endpoint) of every endpoint of ``service`` that is not terminating."""
    out = []
    for s in slices:
        labels = (s.get("metadata") or {}).get("labels") or {}
        if labels.get("kubernetes.io/service-name") != service:
            continue  # the server filters by label too; an older or fake one may not
        port = _port(s.get("ports") or [], port_name)
        if port is None:
            continue
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("terminating") is True:
                continue  # going away: no longer an instance (a pod not yet ready still is, and shows as down)
            addresses = ep.get("addresses") or []
            if addresses:
                out.append((str(addresses[0]), port, ep))
    return out


def kubernetes_targets(spec: KubernetesDiscovery, template: EndpointTemplate, tiers: Iterable[str],
                       slices: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]],
                       dcgm_slices: Iterable[Mapping[str, Any]] = ()) -> tuple[dict[str, tuple[Target, ...]], set[str]]:
    """(tier -> targets, tier label values that name no configured tier). An endpoint's pod names the
    instance, and its ``tier_label`` the tier; its node's dcgm-exporter endpoint, if any, reads its GPUs."""
    labels = {(p.get("metadata") or {}).get("name"): (p.get("metadata") or {}).get("labels") or {} for p in pods}
    started = {(p.get("metadata") or {}).get("name"): _time((p.get("status") or {}).get("startTime")) for p in pods}
    dcgm_by_node = {}
    if spec.dcgm_service and spec.dcgm_port:
        for addr, port, ep in _endpoints(dcgm_slices, spec.dcgm_service, spec.dcgm_port):
            if ep.get("nodeName"):
                dcgm_by_node[ep["nodeName"]] = _url(EndpointTemplate(), addr, port)
    wanted = set(tiers)
    out: dict[str, dict[str, Target]] = {t: {} for t in wanted}
    unknown: set[str] = set()
    for addr, port, ep in _endpoints(slices, spec.service, spec.port):
        ref = ep.get("targetRef") or {}
        pod = str(ref["name"]) if ref.get("kind") == "Pod" and ref.get("name") else None
        tier = labels.get(pod, {}).get(spec.tier_label) if pod else None
        if pod is None or tier is None:
            continue  # not a pod of the fleet (or created after the pod list was read: next cycle)
        if tier not in wanted:
            unknown.add(str(tier))
            continue
        namespace = ref.get("namespace") or spec.namespace
        dcgm = dcgm_by_node.get(ep.get("nodeName", ""))
        out[tier][pod] = replace(_target(template, pod, _url(template, addr, port), dcgm,
                                         GpuSelector(pod=pod, namespace=namespace) if dcgm else None),
                                 started_at=started.get(pod))
    return {t: tuple(v[k] for k in sorted(v)) for t, v in out.items()}, unknown


def _time(v: Any) -> float | None:
    """A Kubernetes RFC 3339 timestamp ("2026-12-02T04:05:06Z") as Unix seconds."""
    if not isinstance(v, str):
        return None
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# ---------------------------------------------------------------- I/O: the lookups


def resolve(spec: DnsDiscovery, timeout: float) -> list[tuple[str, int | None]]:
    """The (host, port) records of ``spec.name``: A and AAAA (port None), or SRV."""
    import dns.exception
    import dns.resolver

    r = dns.resolver.Resolver(configure=spec.nameserver is None)
    if spec.nameserver is not None:
        host, _, port = spec.nameserver.rpartition(":") if spec.nameserver.count(":") == 1 else (spec.nameserver, "", "")
        r.nameservers = [host]
        r.port = int(port) if port else 53
    r.lifetime = timeout
    out: list[tuple[str, int | None]] = []
    try:
        if spec.type == "SRV":
            for rec in r.resolve(spec.name, "SRV"):
                out.append((rec.target.to_text(), int(rec.port)))
        else:
            for rdtype in ("A", "AAAA"):
                try:
                    out += [(rec.address, None) for rec in r.resolve(spec.name, rdtype)]
                except dns.resolver.NoAnswer:
                    continue
            if not out:
                raise DiscoveryError("empty", f"{spec.name} has no A or AAAA records")
    except dns.resolver.NXDOMAIN:
        raise DiscoveryError("nxdomain", f"{spec.name} does not exist") from None
    except dns.resolver.NoAnswer:
        raise DiscoveryError("empty", f"{spec.name} has no {spec.type} records") from None
    except dns.exception.Timeout:
        raise DiscoveryError("timeout", f"no DNS answer for {spec.name} within {num(timeout)}s") from None
    except dns.exception.DNSException as e:
        raise DiscoveryError("dns", f"{spec.name}: {type(e).__name__}: {str(e)[:200]}") from None
    return out


class KubernetesApi:
    """GETs on the API server with the service account's token and CA (or those configured)."""

    def __init__(self, spec: KubernetesDiscovery, timeout: float, session: requests.Session | None = None) -> None:
        self.spec = spec
        self.timeout = timeout
        self.session = session or new_session()
        api = spec.api
        if api is None:
            host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise DiscoveryError("config", "discovery.kubernetes.api is not set and KUBERNETES_SERVICE_HOST is "
                                               "empty: not running in a cluster")
            api = f"https://{'[' + host + ']' if ':' in host else host}:{port}"
        self.api = api.rstrip("/")
        ca = spec.ca_file if spec.ca_file and os.path.exists(spec.ca_file) else None
        self.verify: bool | str = ca or True

    def list(self, path: str, selector: str) -> list[Mapping[str, Any]]:
        url = f"{self.api}{path}?labelSelector={quote(selector, safe='')}"
        token = self.spec.token_file if self.spec.token_file and os.path.exists(self.spec.token_file) else None
        try:
            body = fetch_text(self.session, url, timeout=self.timeout, max_bytes=MAX_LOOKUP_BYTES, verify=self.verify,
                              bearer_token_file=token, accept="application/json")
            doc = json.loads(body)
        except FetchError as e:
            raise DiscoveryError(e.reason, f"GET {path}: {e}") from None
        except ValueError as e:
            raise DiscoveryError("malformed", f"GET {path}: not JSON: {e}") from None
        items = doc.get("items") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise DiscoveryError("malformed", f"GET {path}: no items list")
        return [i for i in items if isinstance(i, dict)]

    def close(self) -> None:
        self.session.close()


def _slices_path(namespace: str) -> str:
    return f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"


class Discoverer:
    """Refreshes the config's discovered targets once per cycle; keeps the last good ones on failure."""

    def __init__(self, config: Config, errors: Callable[[str, str, str], None],
                 resolver: Callable[[DnsDiscovery, float], list[tuple[str, int | None]]] = resolve,
                 kubernetes: KubernetesApi | None = None) -> None:
        self.config = config
        # lookups come out of the cycle's scrape budget: a slow DNS or API server delays the cycle, not more
        self.timeout = max(0.1, min(LOOKUP_TIMEOUT, config.scrape_timeout * LOOKUP_SHARE))
        self._errors = errors  # (tier or "", lookup name, reason): counted by the scraper's stats
        self._resolve = resolver
        self._kube = kubernetes
        self._found: dict[str, tuple[Target, ...]] = {n: t.targets for n, t in config.tiers.items()}
        self._failing: set[str] = set()

    def _fail(self, key: str, tier: str, what: str, e: DiscoveryError) -> None:
        self._errors(tier, what, e.reason)
        if key not in self._failing:  # one line when a lookup starts failing, not one per cycle
            log.error("discovery of %s failed (%s: %s); keeping the %s targets found before", what, e.reason, e,
                      tier or "fleet's")
        self._failing.add(key)

    def _ok(self, key: str, what: str) -> None:
        if key in self._failing:
            log.info("discovery of %s answers again", what)
        self._failing.discard(key)

    def refresh(self) -> dict[str, tuple[Target, ...]]:
        """Every tier's targets: listed, or as the lookups last found them."""
        found = dict(self._found)
        for name, tier in self.config.tiers.items():
            if tier.discover is None:
                continue
            try:
                found[name] = dns_targets(tier.discover, tier.endpoint, self._resolve(tier.discover, self.timeout))
                self._ok(f"dns:{name}", tier.discover.name)
            except DiscoveryError as e:
                self._fail(f"dns:{name}", name, tier.discover.name, e)
        spec = self.config.kubernetes
        if spec is not None:
            what = f"{spec.namespace}/{spec.service}"
            try:
                if self._kube is None:
                    self._kube = KubernetesApi(spec, self.timeout)
                slices = self._kube.list(_slices_path(spec.namespace), f"kubernetes.io/service-name={spec.service}")
                pods = self._kube.list(f"/api/v1/namespaces/{spec.namespace}/pods", spec.tier_label)
                dcgm: list[Mapping[str, Any]] = []
                if spec.dcgm_service:
                    dcgm = self._kube.list(_slices_path(spec.dcgm_namespace or spec.namespace),
                                           f"kubernetes.io/service-name={spec.dcgm_service}")
                by_tier, unknown = kubernetes_targets(spec, self.config.kubernetes_endpoint, self.config.tiers,
                                                      slices, pods, dcgm)
                if unknown:
                    log.debug("pods of %s label tiers the config does not have: %s", what, ", ".join(sorted(unknown)))
                for name, targets in by_tier.items():
                    tier = self.config.tiers[name]
                    if tier.discover is None and not tier.targets:  # a tier listed or on DNS stays so
                        found[name] = targets
                self._ok("kubernetes", what)
            except DiscoveryError as e:
                self._fail("kubernetes", "", what, e)
        for name, targets in found.items():
            before = {t.name for t in self._found.get(name, ())}
            now = {t.name for t in targets}
            if before != now:
                log.info("tier %s: %d instances (%s%s)", name, len(now),
                         f"+{len(now - before)}" if now - before else "", f" -{len(before - now)}" if before - now else "")
        self._found = found
        return {n: found[n] for n in self.config.tiers}

    def close(self) -> None:
        if self._kube is not None:
            self._kube.close()
