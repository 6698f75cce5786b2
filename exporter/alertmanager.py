"""Alertmanager API v2 client: fleetwatch posts its own fleet-level verdicts.

It behaves as Prometheus does towards Alertmanager:
- every alert has a stable label set, so its fingerprint stays the same while it fires;
- firing alerts are re-sent every ``resend_delay`` with ``endsAt = now + 4 x max(interval, resend_delay)``;
- an alert that stops firing is sent with ``endsAt = now`` and re-sent for 15 minutes;
- it posts to every configured Alertmanager (an HA set), never through a load balancer;
- each Alertmanager has its own bounded queue holding the latest state of each alert, so an outage
  loses nothing but the oldest alerts beyond ``max_queue`` (counted as dropped).
``alerts_from_report`` is pure; ``AlertmanagerClient`` does the I/O.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

import requests

from .fetch import deadline, described, new_session
from .secrets import redact, redact_url

from .catalogue import INSTANCES, PREFIX, runbook_url
from .model import Action, Config, Report, Status
from .config import parse_duration
from .render.rules import FINDINGS, AlertSpec, alert_for, render
from .render.rules import alerts as rule_alerts
from .text import num

log = logging.getLogger(__name__)

RESEND_DELAY_SECONDS = 60.0  # Prometheus's --rules.alert.resend-delay
RESOLVED_RESEND_SECONDS = 900.0  # Prometheus keeps sending resolved alerts for 15 minutes
@dataclass(frozen=True)
class Alert:
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    hold: float = 0.0  # seconds it must fire before it is sent: its rule's for:, so one cycle's verdict is not

    @property
    def fingerprint(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self.labels.items()))


@dataclass(frozen=True)
class Identities:
    """The alerting rules fleetwatch's posts copy, by (alert name, severity, tier or ""): a problem
    posted by fleetwatch carries the name, labels and annotations of the rule that raises the same
    problem in Prometheus, so when both run Alertmanager holds one alert (one fingerprint) and sends
    one notification."""

    specs: Mapping[tuple[str, str, str], AlertSpec]
    runbook_base: str
    holds: Mapping[tuple[str, str, str], float]  # each rule's for:, in seconds


def identities(config: Config) -> Identities:
    specs = {(a.name, a.severity, a.extra_labels.get("tier", "")): a for a in rule_alerts(config)}
    return Identities(specs, config.alerting.runbook_url,
                      {key: parse_duration(alert_for(config, a)) for key, a in specs.items()})


# a resize verdict -> the rule raising the same: its name and severity
_RESIZE = {Action.SCALE_UP: (f"{PREFIX}ScaleUp", "critical"), Action.SCALE_DOWN: (f"{PREFIX}ScaleDown", "warning"),
           Action.RECHARACTERIZE: (f"{PREFIX}Recharacterize", "warning")}
_SEVERITY = {Status.CRITICAL: "critical", Status.WARNING: "warning"}


def alerts_from_report(report: Report, ids: Identities) -> list[Alert]:
    """What fleetwatch's own verdicts raise now, per tier: a resize, the findings the rules alert on,
    and targets it cannot reach, each as its rule's alert (a tier's findings of one kind are one alert,
    as the rule's are)."""
    out: dict[tuple[tuple[str, str], ...], Alert] = {}

    def post(name: str, severity: str, tier: str, value: float, known: Mapping[str, float] | None = None) -> None:
        key = (name, severity, tier) if (name, severity, tier) in ids.specs else (name, severity, "")
        spec = ids.specs.get(key)
        if spec is None:  # no rule raises it (a tier the rules were not generated for): nothing to copy
            return
        labels = {"tier": tier}
        query = (known or {}).get
        a = Alert({"alertname": name, "severity": severity, **spec.extra_labels, **labels},
                  {"summary": render(spec.summary, value, labels, query),
                   "description": render(spec.description, value, labels, query),
                   "runbook_url": runbook_url(ids.runbook_base, name)}, ids.holds[key])
        out[a.fingerprint] = a

    for name, t in report.tiers.items():
        r = t.resize
        if r.action in _RESIZE and not r.provisional:  # the rules, too, wait for a full window
            alert, severity = _RESIZE[r.action]
            count = r.recommended_instances if r.action != Action.RECHARACTERIZE else None
            # the rule's description reads the deployed count from Prometheus; fleetwatch knows its own
            post(alert, severity, name, float(count) if count is not None else 1.0,
                 {f'{INSTANCES}{{tier="{name}"}}': float(r.current_instances)})
        down = [f for f in t.findings if f.kind == "target_down" and f.status in _SEVERITY]
        if down:
            post(f"{PREFIX}TargetDown", "warning", name, float(len(down)))
        for f in t.findings:
            if f.status in _SEVERITY and f.kind in FINDINGS:
                post(f"{PREFIX}{FINDINGS[f.kind][0]}", _SEVERITY[f.status], name, 1.0)
    return list(out.values())


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class _State:
    alert: Alert
    starts_at: float
    last_sent: float | None = None
    resolved_at: float | None = None
    sent: bool = False  # queued at least once: an alert still pending when it stops has nothing to resolve


@dataclass
class NotifyStats:
    sent: dict[str, int] = field(default_factory=dict)  # alerts delivered, per Alertmanager
    failed: dict[str, int] = field(default_factory=dict)  # POSTs that failed
    dropped: dict[str, int] = field(default_factory=dict)  # alerts pushed out of a full queue
    queued: dict[str, int] = field(default_factory=dict)


class AlertmanagerClient:
    """Per Alertmanager a bounded queue of the latest state of each alert. ``update`` (the cycle) only queues;
    ``start`` gives each Alertmanager a sender thread of its own, so a slow, dripping or hanging one delays
    only its own deliveries and never a cycle. ``flush`` posts every queue at once, in the caller's thread."""

    def __init__(self, urls: Iterable[str], *, interval: float, session: requests.Session | None = None,
                 timeout: float = 5.0, resend_delay: float = RESEND_DELAY_SECONDS, max_queue: int = 10000,
                 generator_url: str = "", verify: bool | str = True, clock: Callable[[], float] = time.time) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.interval, self.timeout, self.resend_delay = interval, timeout, resend_delay
        self.max_queue, self.generator_url, self.verify, self.clock = max_queue, generator_url, verify, clock
        self.session = session or new_session()
        self.session.trust_env = False
        self.active: dict[tuple[tuple[str, str], ...], _State] = {}
        self.queues: dict[str, OrderedDict[tuple[tuple[str, str], ...], dict[str, Any]]] = {
            u: OrderedDict() for u in self.urls}
        self._stats = NotifyStats({u: 0 for u in self.urls}, {u: 0 for u in self.urls}, {u: 0 for u in self.urls})
        # one lock for the alerts, the queues and the counters: ``update`` runs on the cycle's thread while
        # each sender takes its batch from, and removes what was delivered out of, its queue
        self._lock = threading.Lock()
        self._wake = {u: threading.Event() for u in self.urls}
        self._closed = threading.Event()
        self._senders: list[threading.Thread] = []

    def stats(self) -> NotifyStats:
        with self._lock:
            return NotifyStats(dict(self._stats.sent), dict(self._stats.failed), dict(self._stats.dropped),
                               {u: len(q) for u, q in self.queues.items()})

    def update(self, firing: Iterable[Alert], now: float | None = None) -> None:
        """Record what fires now and queue what is due for (re-)sending; wakes the senders. Never posts."""
        now = self.clock() if now is None else now
        current = {a.fingerprint: a for a in firing}
        with self._lock:
            self._update(current, now)
        for ev in self._wake.values():
            ev.set()

    def _update(self, current: dict[tuple[tuple[str, str], ...], Alert], now: float) -> None:
        for fp, a in current.items():
            st = self.active.get(fp)
            if st is None or st.resolved_at is not None:
                self.active[fp] = _State(a, now)  # a new alert, or one firing again after it resolved
            else:
                st.alert = a  # annotations may change; the labels, and so the fingerprint, do not
        for fp, st in list(self.active.items()):
            if fp not in current and st.resolved_at is None:
                if not st.sent:  # stopped while pending (shorter than its for:): never an alert
                    del self.active[fp]
                    continue
                st.resolved_at, st.last_sent = now, None  # send the resolution at once
            if st.resolved_at is not None and now - st.resolved_at > RESOLVED_RESEND_SECONDS:
                del self.active[fp]
        ends_firing = now + 4 * max(self.interval, self.resend_delay)
        for fp, st in self.active.items():
            if st.resolved_at is None and now - st.starts_at < st.alert.hold:
                continue  # pending, as a rule is during its for:
            if st.last_sent is not None and now - st.last_sent < self.resend_delay:
                continue
            st.last_sent, st.sent = now, True
            payload = {"labels": dict(st.alert.labels), "annotations": dict(st.alert.annotations),
                       "startsAt": _iso(st.starts_at),
                       "endsAt": _iso(ends_firing if st.resolved_at is None else st.resolved_at)}
            if self.generator_url:
                payload["generatorURL"] = self.generator_url
            for url, q in self.queues.items():
                q[fp] = payload  # the latest state of an alert replaces an undelivered older one
                q.move_to_end(fp)
                while len(q) > self.max_queue:
                    q.popitem(last=False)
                    self._stats.dropped[url] += 1

    @property
    def started(self) -> bool:
        return bool(self._senders)

    def start(self) -> None:
        """A sender thread per Alertmanager: it posts its queue when ``update`` wakes it, and retries what
        failed at the next wake (each cycle), each POST bounded by ``timeout``."""
        for url in self.urls:
            t = threading.Thread(target=self._send_loop, args=(url,), name="alertmanager", daemon=True)
            self._senders.append(t)
            t.start()

    def _send_loop(self, url: str) -> None:
        wake = self._wake[url]
        while not self._closed.is_set():
            wake.wait()
            wake.clear()
            if self._closed.is_set():
                return
            try:
                self.flush_one(url)
            except Exception as e:  # noqa: BLE001 - the sender must outlive any one failure; the queue is kept
                log.error("alertmanager %s: sending failed: %s", redact_url(url), redact(f"{type(e).__name__}: {e}"))

    def flush(self) -> None:
        """POST each Alertmanager's queue now, one after the other; what fails stays queued."""
        for url in self.urls:
            self.flush_one(url)

    def flush_one(self, url: str) -> None:
        """POST ``url``'s queue; what fails stays queued for the next try."""
        with self._lock:
            q = self.queues[url]
            batch = list(q.items())
        if not batch:
            return
        # the payload goes through the redactor: an alert's description may quote a target's error
        data = redact(json.dumps([p for _, p in batch])).encode("utf-8")
        try:
            with deadline(self.timeout) as d:  # the whole POST, even from an Alertmanager that drips
                r = self.session.post(f"{url}/api/v2/alerts", data=data, timeout=self.timeout, verify=self.verify,
                                      allow_redirects=False, headers={"Content-Type": "application/json"})
                ok = 200 <= r.status_code < 300
                # the status and what the body is, never its text: it may echo the request's credentials
                reason = "" if ok else f"HTTP {r.status_code}: {described(r.content[:4096], r.headers.get('Content-Length'))}"
            if d.expired:  # cut mid-answer: a status line read up to the cut can look like a 200
                ok, reason = False, f"no answer within {num(self.timeout)}s"
        except (requests.RequestException, OSError) as e:
            ok, reason = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if d.expired:
                reason = f"no answer within {num(self.timeout)}s"
        with self._lock:
            if ok:
                for fp, p in batch:
                    if q.get(fp) is p:  # not replaced meanwhile
                        del q[fp]
                self._stats.sent[url] += len(batch)
            else:
                self._stats.failed[url] += 1
        if not ok:
            log.warning("alertmanager %s: %d alerts not delivered, kept for retry: %s", redact_url(url), len(batch),
                        redact(reason))

    def close(self) -> None:
        """Stop the senders (a POST in flight ends within ``timeout``; nothing waits for it) and the session."""
        self._closed.set()
        for ev in self._wake.values():
            ev.set()
        self.session.close()
