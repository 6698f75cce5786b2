"""The Prometheus HTTP API as a source (``source: {prometheus: ...}``): Prometheus, Thanos or Mimir.

Queries go as POST forms (a long catalogue expression fits no proxy's URL limit), on the same
deadline-bounded, size-capped connections as scrapes. Parsing the JSON answer is pure and is
kept apart from the fetch; every failure is a PrometheusError with a reason for the counter.
"""
from __future__ import annotations

import math
from typing import Any

import requests

from ..fetch import FetchError, fetch_text, new_session
from ..files import ConfigError, loads_json
from ..model import PrometheusSource
from ..secrets import redact

Labels = dict[str, str]


class PrometheusError(Exception):
    """A query that gave no usable answer. ``reason`` labels the error counter."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(redact(message))


def _value(v: Any) -> float:
    # the API writes sample values as strings: "1.5", "NaN", "+Inf"
    if not isinstance(v, str):
        raise PrometheusError("malformed", f"sample value {str(v)[:40]!r} is not a string")
    try:
        return float(v)
    except ValueError:
        raise PrometheusError("malformed", f"sample value {v[:40]!r} is not a number") from None


MAX_TIMESTAMP = 1e11  # seconds since 1970: year 5138; a sample time past it is not a time


def _data(body: str, kind: str) -> list[Any]:
    try:  # depth, integer length and NaN checked: a 400-digit number or 200,000 brackets is a malformed answer
        doc = loads_json(body, "answer")
    except ConfigError as e:
        raise PrometheusError("malformed", f"answer is not usable JSON: {e.reason}") from None
    if not isinstance(doc, dict):
        raise PrometheusError("malformed", "answer is not a JSON object")
    if doc.get("status") != "success":
        raise PrometheusError("query", f"{doc.get('errorType', 'error')}: {str(doc.get('error', ''))[:200]}")
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("resultType") != kind or not isinstance(data.get("result"), list):
        got = data.get("resultType") if isinstance(data, dict) else type(data).__name__
        raise PrometheusError("malformed", f"expected a {kind} result, got {str(got)[:40]}")
    result: list[Any] = data["result"]
    return result


def _time(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= MAX_TIMESTAMP:
        raise PrometheusError("malformed", f"a sample time {str(v)[:40]} is not [time, value] in range")
    return float(v)


def _labels(item: Any) -> Labels:
    metric = item.get("metric") if isinstance(item, dict) else None
    if not isinstance(metric, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metric.items()):
        raise PrometheusError("malformed", "a series without a label map")
    return metric


def parse_vector(body: str) -> list[tuple[Labels, float]]:
    """An instant query's answer: (labels, value) per series."""
    out = []
    for item in _data(body, "vector"):
        pair = item.get("value") if isinstance(item, dict) else None
        if not isinstance(pair, list) or len(pair) != 2:
            raise PrometheusError("malformed", "a vector sample is not [time, value]")
        _time(pair[0])
        out.append((_labels(item), _value(pair[1])))
    return out


def parse_matrix(body: str) -> list[tuple[Labels, list[tuple[float, float]]]]:
    """A range query's answer: (labels, [(time, value), ...]) per series, oldest first."""
    out = []
    for item in _data(body, "matrix"):
        values = item.get("values") if isinstance(item, dict) else None
        if not isinstance(values, list):
            raise PrometheusError("malformed", "a matrix series without values")
        points = []
        for pair in values:
            points.append((_time(pair[0] if isinstance(pair, list) and len(pair) == 2 else None), _value(pair[1])))
        out.append((_labels(item), points))
    return out


class PrometheusApi:
    """Instant and range queries against one API. Safe to call from several threads at once."""

    def __init__(self, source: PrometheusSource, *, timeout: float, max_bytes: int, verify: bool | str = True,
                 session: requests.Session | None = None) -> None:
        self.source = source
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.verify = verify
        self.session = session or new_session()

    def _post(self, path: str, form: dict[str, str], timeout: float | None) -> str:
        # Prometheus stops evaluating a query at its own timeout= as well: no orphaned work on its side
        t = self.timeout if timeout is None else timeout
        if t <= 0:
            raise PrometheusError("timeout", "the cycle's deadline passed before this query could start")
        form = {**form, "timeout": f"{t:.3f}"}  # seconds
        try:
            return fetch_text(self.session, self.source.url + path, timeout=t, max_bytes=self.max_bytes,
                              verify=self.verify, bearer_token_file=self.source.bearer_token_file, form=form,
                              accept="application/json")
        except FetchError as e:
            raise PrometheusError(e.reason, str(e)) from None

    def query(self, expr: str, at: float, timeout: float | None = None) -> list[tuple[Labels, float]]:
        return parse_vector(self._post("/api/v1/query", {"query": expr, "time": f"{at:.3f}"}, timeout))

    def query_range(self, expr: str, start: float, end: float, step: float,
                    timeout: float | None = None) -> list[tuple[Labels, list[tuple[float, float]]]]:
        if not (math.isfinite(start) and math.isfinite(end) and step > 0):
            raise PrometheusError("query", "a range query needs a finite start and end and a positive step")
        return parse_matrix(self._post("/api/v1/query_range", {
            "query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}, timeout))

    def close(self) -> None:
        self.session.close()
