"""Alerting rules replayed over a stored stretch of history: what would have fired, when, and what
Alertmanager would have sent.

Each rule's expression is asked once, as a range query at its group's evaluation interval, from ``for:``
before the stretch (an alert already pending then fires on time) to its end. Prometheus's rule semantics
are then applied to the answers: a label set present at an evaluation becomes pending, fires once it has
been present for ``for:``, and resolves at the first evaluation without it. The evaluations fall on the
range's steps, not on the live group's phase, so a transition may move by up to one interval.

Notifications follow Alertmanager's grouping at the root route: a group's first notification waits
``group_wait``, a changed group is sent again after ``group_interval``, an unchanged one after
``repeat_interval``; resolved alerts are sent. Pure: the range queries come in through a function.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .config import parse_duration

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs: an alert's identity

FLAPPING_EPISODES = 3  # an alert that fired and resolved more than this many times flapped


@dataclass(frozen=True)
class AlertRule:
    name: str
    expr: str
    for_seconds: float
    labels: Mapping[str, str]
    group: str
    interval: float


def recordings(doc: Mapping[str, Any]) -> dict[str, str]:
    """The series the recording rules of a rule file write, and the expression each records."""
    return {str(r["record"]): str(r["expr"]) for g in doc.get("groups") or [] for r in g.get("rules") or []
            if "record" in r}


def reads(rule: AlertRule, names: Sequence[str]) -> list[str]:
    """Which of ``names`` (recorded series) ``rule``'s expression reads."""
    return [n for n in names if re.search(r"(?<![\w:])" + re.escape(n) + r"(?![\w:])", rule.expr)]


def alert_rules(doc: Mapping[str, Any], default_interval: float = 60.0) -> list[AlertRule]:
    """The alerting rules of a Prometheus rule file (its ``groups:``), each with its group's interval."""
    out = []
    for g in doc.get("groups") or []:
        interval = parse_duration(g["interval"]) if g.get("interval") else default_interval
        for r in g.get("rules") or []:
            if "alert" in r:
                out.append(AlertRule(str(r["alert"]), str(r["expr"]),
                                     parse_duration(str(r["for"])) if r.get("for") else 0.0,
                                     {str(k): str(v) for k, v in (r.get("labels") or {}).items()},
                                     str(g.get("name", "")), interval))
    return out


@dataclass(frozen=True)
class Firing:
    """One episode of one alert: pending from ``active_at``, firing from ``start`` until ``end`` (the first
    evaluation without it; None when it still fired at the end of the stretch)."""

    labels: Labels
    active_at: float
    start: float
    end: float | None

    @property
    def alert(self) -> str:
        return dict(self.labels)["alertname"]

    def as_dict(self) -> dict[str, object]:
        return {"labels": dict(self.labels), "active_at": self.active_at, "firing_from": self.start,
                "resolved_at": self.end}


def identity(rule: AlertRule, series: Mapping[str, str]) -> Labels:
    labels = {k: v for k, v in series.items() if k != "__name__"}
    labels.update(rule.labels)
    labels["alertname"] = rule.name
    return tuple(sorted(labels.items()))


def evaluate_rule(rule: AlertRule, times: Sequence[float], answers: Mapping[int, Sequence[tuple[Mapping[str, str], float]]],
                  ) -> list[Firing]:
    """``rule``'s episodes over evaluations at ``times``, given its expression's answer at each (by index)."""
    active: dict[Labels, float] = {}  # identity -> active since
    firing_since: dict[Labels, float] = {}
    out: list[Firing] = []
    for k, t in enumerate(times):
        present = {identity(rule, m) for m, v in answers.get(k, ()) if not math.isnan(v)}
        for key in [a for a in active if a not in present]:
            since = active.pop(key)
            if key in firing_since:
                out.append(Firing(key, since, firing_since.pop(key), t))
        for key in present:
            since = active.setdefault(key, t)
            if key not in firing_since and t - since >= rule.for_seconds - 1e-9:
                firing_since[key] = t
    out += [Firing(key, active[key], start, None) for key, start in firing_since.items()]
    return sorted(out, key=lambda f: (f.start, f.labels))


# ---------------------------------------------------------------- Alertmanager's side


@dataclass(frozen=True)
class Route:
    """The root route's grouping and timers (Alertmanager's defaults where the config says nothing)."""

    group_by: tuple[str, ...] | None = ()  # None: '...', every label
    group_wait: float = 30.0
    group_interval: float = 300.0
    repeat_interval: float = 4 * 3600.0


def route_from(doc: Mapping[str, Any] | None) -> Route:
    """The root route of an Alertmanager config document."""
    r = (doc or {}).get("route") or {}
    by = r.get("group_by")
    d = Route()
    return Route(None if by and "..." in by else tuple(by or ()),
                 parse_duration(r["group_wait"]) if r.get("group_wait") else d.group_wait,
                 parse_duration(r["group_interval"]) if r.get("group_interval") else d.group_interval,
                 parse_duration(r["repeat_interval"]) if r.get("repeat_interval") else d.repeat_interval)


@dataclass(frozen=True)
class Notification:
    at: float
    group: Labels
    firing: tuple[Labels, ...]
    resolved: tuple[Labels, ...]

    def as_dict(self) -> dict[str, object]:
        return {"at": self.at, "group": dict(self.group), "firing": [dict(a) for a in self.firing],
                "resolved": [dict(a) for a in self.resolved]}


def _group_key(route: Route, labels: Labels) -> Labels:
    if route.group_by is None:
        return labels
    have = dict(labels)
    return tuple(sorted((k, have.get(k, "")) for k in route.group_by))


def notifications(episodes: Sequence[Firing], route: Route, end: float) -> list[Notification]:
    """What Alertmanager would have sent for ``episodes`` up to ``end``, at the root route."""
    groups: dict[Labels, list[Firing]] = {}
    for f in episodes:
        groups.setdefault(_group_key(route, f.labels), []).append(f)
    out: list[Notification] = []
    for key, eps in groups.items():
        eps = sorted(eps, key=lambda f: f.start)
        t: float | None = eps[0].start + route.group_wait  # the group's first flush
        last_sent: float | None = None
        sent_firing: frozenset[Labels] = frozenset()
        while t is not None and t <= end:
            firing = frozenset(f.labels for f in eps if f.start <= t and (f.end is None or f.end > t))
            resolved = sent_firing - firing
            changed = firing != sent_firing
            due_repeat = last_sent is not None and t - last_sent >= route.repeat_interval - 1e-9
            if (changed or due_repeat) and (firing or resolved):
                out.append(Notification(t, key, tuple(sorted(firing)), tuple(sorted(resolved))))
                last_sent, sent_firing = t, firing
            # the next flush: group_interval on, or (an empty group ended) when the next episode begins
            nxt = [f.start for f in eps if f.start > t]
            if firing or sent_firing:
                t = t + route.group_interval
            elif nxt:
                t = min(nxt) + route.group_wait
                last_sent = None
            else:
                t = None
    return sorted(out, key=lambda n: (n.at, n.group))


@dataclass(frozen=True)
class AlertReplay:
    episodes: tuple[Firing, ...]
    notifications: tuple[Notification, ...]
    flapping: Mapping[Labels, int] = field(default_factory=dict)  # identity -> episodes, past FLAPPING_EPISODES
    unanswered: Mapping[str, str] = field(default_factory=dict)  # rule -> why its expression gave no answer

    def as_dict(self) -> dict[str, object]:
        return {"episodes": [f.as_dict() for f in self.episodes],
                "notifications": [n.as_dict() for n in self.notifications],
                "flapping": [{"labels": dict(k), "episodes": n} for k, n in self.flapping.items()],
                "unanswered": dict(self.unanswered)}


def flapping(episodes: Sequence[Firing], more_than: int = FLAPPING_EPISODES) -> dict[Labels, int]:
    counts: dict[Labels, int] = {}
    for f in episodes:
        counts[f.labels] = counts.get(f.labels, 0) + 1
    return {k: n for k, n in sorted(counts.items()) if n > more_than}
