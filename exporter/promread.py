"""One read of the fleet from a Prometheus per cycle (source: prometheus): the I/O edge of the
Prometheus-backed pipeline, as exporter/scrape.py is the edge of the scraping one.

The cycle's queries run at once on a small pool, each bounded by what is left of scrape_timeout.
A failed query leaves its row unknown, with the reason; when every query fails (Prometheus down)
the cycle fails, is counted, and the previous report stays served.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from .secrets import redact_url
from .evaluate import ASKS, HistoryPoint, history_step, replay_history
from .model import Config
from .promview import Answers, PromTierView, Result, prefetch, row_queries
from .promview import rows as row_values
from .scrape import ScrapeStats
from .sources.prometheus_api import PrometheusApi, PrometheusError
from .window import Quantity

log = logging.getLogger(__name__)

POOL = 8  # concurrent queries: enough to hide latency, few enough not to load a shared Prometheus
HISTORY_TIMEOUT = 60.0  # a week-long range query over a large fleet takes Prometheus a while; off the cycle
SOURCE = "prometheus"  # the `source` label of fleetwatch's own scrape metrics for these queries
HISTORY_SOURCE = "prometheus_history"  # the same for the history's range query, read off the cycle


class PrometheusReader:
    """Reads every tier of a config from its ``source.prometheus`` API. One thread calls ``read`` at a time."""

    def __init__(self, config: Config, api: PrometheusApi | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        assert config.prometheus is not None
        self.config = config
        self.source = config.prometheus
        verify: bool | str = config.ca_file if (config.tls_verify and config.ca_file) else config.tls_verify
        self.api = api or PrometheusApi(self.source, timeout=config.scrape_timeout, max_bytes=config.max_body_bytes,
                                        verify=verify)
        self.clock = clock
        self.stats = ScrapeStats()
        self.name = redact_url(self.source.url)  # this page is unauthenticated: no credentials in labels
        self._pool = ThreadPoolExecutor(max_workers=POOL, thread_name_prefix="promql")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.api.close()

    def _failed(self, e: PrometheusError, source: str = SOURCE) -> None:
        self.stats.error("", self.name, source, e.reason)

    def read(self, now: float, seconds: float | None = None
             ) -> tuple[dict[str, PromTierView], dict[str, dict[str, Quantity]]]:
        """(tier -> view, tier -> row -> value) at ``now`` over ``seconds`` (default: the config's window)."""
        seconds = seconds or self.config.window
        t0 = time.monotonic()
        deadline = t0 + self.config.scrape_timeout

        def query(expr: str) -> Result:
            # every query, a prefetched one or one a row asks later, ends by the cycle's deadline: one that
            # would start after it is not sent (its row is unknown this cycle)
            try:
                return self.api.query(expr, now, timeout=deadline - time.monotonic())
            except PrometheusError as e:
                self._failed(e)
                raise
            except Exception as e:  # noqa: BLE001 - whatever an answer holds, it is a counted, malformed answer
                err = PrometheusError("malformed", f"{type(e).__name__}: {str(e)[:120]}")
                self._failed(err)
                raise err from None

        answers = Answers(query)
        exprs = prefetch(self.config, seconds, self.source.instance_label, ASKS)
        futures = [self._pool.submit(answers.get, e) for e in exprs]
        errors: list[PrometheusError] = []
        for f in futures:
            try:
                f.result(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
            except PrometheusError as e:
                errors.append(e)
            except Exception as e:  # noqa: BLE001 - a pool future that never ran (deadline) or a bug
                errors.append(PrometheusError("timeout" if not f.done() else "other", f"{type(e).__name__}: {e}"))
        ok = len(errors) < len(futures)
        self.stats.observe("", self.name, SOURCE, time.monotonic() - t0, ok)
        if errors:
            first = errors[0]
            log.warning("prometheus %s: %d of %d queries failed this cycle; first: %s: %s", self.name, len(errors),
                        len(futures), first.reason, str(first).splitlines()[0] if str(first) else first.reason)
        if not ok:
            raise PrometheusError(errors[0].reason, f"every query to {self.name} failed: {errors[0]}")
        views = {name: PromTierView(name, answers, seconds, self.config.interval, self.source.instance_label)
                 for name in self.config.tiers}
        return views, row_values(self.config, answers, seconds)

    def history(self, now: float) -> dict[str, list[HistoryPoint]]:
        """Each tier's arrival rate over the retained history, from Prometheus itself (a range query of the
        catalogue's requests_per_second row), with the count each point would have recommended."""
        step = history_step(self.config)
        expr, _ = row_queries(self.config, self.config.window)["requests_per_second"]
        t0 = time.monotonic()
        try:
            series = self.api.query_range(expr, now - self.config.history, now, step, timeout=HISTORY_TIMEOUT)
        except PrometheusError as e:
            self._failed(e, HISTORY_SOURCE)
            raise
        except Exception as e:  # noqa: BLE001 - a malformed answer, counted; the history is asked again later
            err = PrometheusError("malformed", f"{type(e).__name__}: {str(e)[:120]}")
            self._failed(err, HISTORY_SOURCE)
            raise err from None
        log.info("read %gs of history from prometheus %s in %.1fs", self.config.history, self.name,
                 time.monotonic() - t0)
        by_tier = {labels.get("tier", ""): points for labels, points in series}
        return {name: replay_history(t.plan, [(ts, v) for ts, v in by_tier.get(name, [])])
                for name, t in self.config.tiers.items()}
