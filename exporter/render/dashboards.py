"""Catalogue -> Grafana dashboards (fleet overview, tier drill-down, plan validation).

Pure: ``build()`` returns file name -> JSON text, and needs no config: tiers and instances come
from template variables, the data source from a ``datasource`` variable. Every engine query is a
catalogue row's own PromQL with ``$__rate_interval`` for its window, so a panel and a recording
rule can never define a quantity twice. Plain Python data rather than grafana-foundation-sdk:
the classic dashboard JSON is small, its every field is checked against Grafana's own schema
(``@grafana/schema`` with ``tsc``, tests/test_dashboards.py), and no dependency pins a Grafana
version for us.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .. import engines as I
from .. import catalogue
from ..catalogue import (PREFIX, GPU_COMPUTE_PER_GPU, GPU_MEMORY_PER_GPU, INSTANCES, INSTANCES_UP, RECOMMENDED, fleet_series,
                         runbook_url, written_out)
from ..evaluate import EVICTION_POINTS, PREFIX_HIT_FLOOR, STEP13_TTFT_FACTOR, STEP13_UTIL_POINTS
from ..model import Band

SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}
TIER = 'tier=~"$tier"'
CLUSTER = 'cluster=~"$cluster"'
# a tier filter for expressions that already aggregate by tier
_TIER_ONLY = f'group by (tier) (fleetwatch_plan_instances{{{TIER}, {CLUSTER}}})'

# What the cluster, namespace and model variables narrow. Every scraped series carries the cluster where a
# multi-cluster setup labels it; only the engines' series carry the engines' namespace (their pods') and model,
# so those two narrow the engines, and the GPUs through the engine pods that hold them. At "All" (.*) a series
# without the label still matches: each of the three labels is optional.
QUERY_VARIABLES = ("cluster", "namespace", "tier", "model", "instance")  # in the order each narrows the next
ENGINE_SCOPE = (("tier", "$tier"), ("cluster", "$cluster"), ("namespace", "$namespace"), ("model_name", "$model"))
SCRAPED_SCOPE = (("cluster", "$cluster"),)
_ENGINE_NAMES = frozenset(n + suffix for e in I.ENGINES for names in e.names.values() for n in names
                          for suffix in ("", "_bucket", "_sum", "_count"))
# a selector (with or without a metric name before it), a string, or a bare name: strings are skipped whole, so a
# name inside a regex matcher is never taken for a selector
_TOKENS = re.compile(r'(?P<name>[A-Za-z_:][\w:]*)?\{(?P<body>(?:[^}"]|"(?:[^"\\]|\\.)*")*)\}'
                     r'|"(?:[^"\\]|\\.)*"|(?P<bare>[A-Za-z_:][\w:]*)')
_NAME_MATCHER = re.compile(r'__name__=~?"([^"]*)"')


def _scope_of(name: str, body: str) -> tuple[tuple[str, str], ...]:
    """The matchers a selector of ``name`` (or of the __name__ matcher in ``body``) gets."""
    named = _NAME_MATCHER.search(body)
    names = set(named[1].split("|")) if named else {name}
    if names and names <= _ENGINE_NAMES:
        return ENGINE_SCOPE
    if any(n.startswith(("DCGM_FI_", "fleetwatch_")) for n in names):
        return SCRAPED_SCOPE
    return ()  # recorded series (tier:...), up and ALERTS: the and-on-tier filters narrow them


def scoped(expr: str) -> str:
    """``expr`` with every engine selector narrowed to the selected tiers, clusters, namespaces and models, and
    every other scraped series to the selected clusters; a label a selector already matches is left as it is."""
    def one(m: re.Match[str]) -> str:
        if m["bare"] is not None:
            scope = _scope_of(m["bare"], "")
            name, body = m["bare"], ""
        elif m["body"] is not None:
            scope = _scope_of(m["name"] or "", m["body"])
            name, body = m["name"] or "", m["body"]
        else:
            return m[0]  # a string
        have = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", re.sub(r'"(?:[^"\\]|\\.)*"', '""', body)))
        added = [f'{label}=~"{value}"' for label, value in scope if label not in have]
        if not added:
            return m[0]
        return f"{name}{{{', '.join(([body.strip()] if body.strip() else []) + added)}}}"

    return _TOKENS.sub(one, expr)


def for_tiers(expr: str) -> str:
    """``expr`` (a result labelled with tier) kept for the tiers selected in ``$tier``."""
    return f"({expr}) and on (tier) {_TIER_ONLY}"


def _inline(promql: str) -> str:
    """A row's PromQL with the series the rules record in front of it written out: the recorded arrival
    rate exists only at the rules' window, not at $__rate_interval; the plan and instance series are
    written out so that the table needs no rules (and reads the same in fleet and sidecar mode)."""
    return written_out(promql).replace("{w}", "$__rate_interval").replace("{ws}", "($__rate_interval_ms / 1000)")


def row_query(key: str) -> str:
    """A catalogue row's PromQL over ``$__rate_interval``, for the selected tiers."""
    return for_tiers(_inline(catalogue.row(key).promql))


def plan_query(key: str) -> str:
    """A plan figure of the selected tiers: every sidecar of a tier exports the same one."""
    return f"max by (tier) (fleetwatch_plan_{key}{{{TIER}}})"


@dataclass
class _Board:
    uid: str
    title: str
    description: str
    panels: list[dict[str, Any]] = field(default_factory=list)
    # the lowest free line of each of the grid's 24 columns: a panel sits as high as its columns allow, as
    # Grafana's grid floats panels up
    _sky: list[int] = field(default_factory=lambda: [0] * 24)

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        # the highest place the panel fits, leftmost first: a tall panel leaves its side to the small ones
        x = min(range(0, 25 - w), key=lambda at: (max(self._sky[at:at + w]), at))
        y = max(self._sky[x:x + w])
        panel["id"] = self._next_id()
        panel["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        self.panels.append(panel)
        self._sky[x:x + w] = [y + h] * w

    def row(self, title: str, repeat: str | None = None) -> None:
        self._sky = [max(self._sky)] * 24  # a row spans the grid below everything above it
        panel: dict[str, Any] = {"type": "row", "title": title, "collapsed": False, "panels": []}
        if repeat:
            panel["repeat"] = repeat
        self.add(panel, 24, 1)

    def _next_id(self) -> int:
        return 1 + max((q["id"] for p in self.panels for q in (p, *p.get("panels", ()))), default=0)

    def collapsed(self, title: str, inner: list[tuple[dict[str, Any], int, int]]) -> None:
        """A collapsed row holding ``inner`` (panel, width, height): the detail an overview opens on demand."""
        self.row(title)
        row = self.panels[-1]
        row["collapsed"] = True
        held = _Board(self.uid, self.title, self.description, _sky=[max(self._sky)] * 24)
        for panel, w, h in inner:
            held.add(panel, w, h)
        for p in held.panels:  # ids stay unique across the board, collapsed rows' panels included
            p["id"] = self._next_id()
            row["panels"].append(p)

    def json(self, variables: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "uid": self.uid, "title": self.title, "description": self.description,
            "tags": ["fleetwatch", "llm"], "editable": True, "graphTooltip": 1, "schemaVersion": SCHEMA_VERSION,
            "version": 1, "refresh": "30s", "time": {"from": "now-6h", "to": "now"}, "timezone": "browser",
            "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
            "templating": {"list": variables}, "annotations": {"list": _annotations()}, "links": [
                {"title": "fleetwatch", "type": "dashboards", "tags": ["fleetwatch"], "asDropdown": True,
                 "icon": "external link", "includeVars": True, "keepTime": True, "targetBlank": False,
                 "tooltip": "", "url": ""}],
            "panels": self.panels,
        }


def _target(expr: str, legend: str, ref: str, instant: bool = False, table: bool = False) -> dict[str, Any]:
    t: dict[str, Any] = {"refId": ref, "datasource": DS, "expr": scoped(expr), "legendFormat": legend,
                         "range": not instant, "instant": instant}
    if table:
        t["format"] = "table"
    return t


def _thresholds(band: Band | None) -> dict[str, Any]:
    """The row's 9.3 band as color steps (base green); bands that depend on the plan get none."""
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if band is not None:
        if band.critical_below is not None or band.warning_below is not None:
            steps = [{"color": "red" if band.critical_below else "yellow", "value": None}]
            if band.critical_below and band.warning_below:
                steps.append({"color": "yellow", "value": band.critical_below.value})
            steps.append({"color": "green", "value": (band.warning_below or band.critical_below).value})  # type: ignore[union-attr]
        if band.warning_above is not None:
            steps.append({"color": "yellow", "value": band.warning_above.value})
        if band.critical_above is not None:
            steps.append({"color": "red", "value": band.critical_above.value})
    return {"mode": "absolute", "steps": steps}


def _panel(kind: str, title: str, description: str, targets: list[dict[str, Any]], unit: str,
           thresholds: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    if thresholds is not None:
        defaults["thresholds"] = thresholds
        defaults["color"] = {"mode": "thresholds"}
    p: dict[str, Any] = {"type": kind, "title": title, "description": description, "datasource": DS,
                         "targets": targets, "fieldConfig": {"defaults": defaults, "overrides": []}, "options": {}}
    p.update(extra)
    return p


def _default_band(key: str) -> Band | None:
    """The row's band where it is the same on every tier; bands that depend on the plan get none."""
    spec = catalogue.row(key).band
    return spec.resolve(None, {}) if spec.static else None


def _variables() -> list[dict[str, Any]]:
    def query(name: str, label: str, q: str) -> dict[str, Any]:
        return {"type": "query", "name": name, "label": label, "datasource": DS,
                "query": {"query": q, "refId": f"{name}-var", "qryType": 1}, "refresh": 2,
                "includeAll": True, "multi": True, "allValue": ".*", "sort": 1,
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [], "hide": 0}

    engines = "|".join(I.all_names("requests_running"))
    return [
        {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus", "hide": 0,
         "options": [], "refresh": 1, "regex": "", "includeAll": False, "multi": False},
        # the label a multi-cluster setup (Thanos, Mimir, remote write) puts on every series; one Prometheus per
        # cluster has none, and the variable lists nothing but All
        query("cluster", "Cluster", f'label_values({{__name__=~"fleetwatch_plan_instances|{engines}"}}, cluster)'),
        # the engines' namespaces (their pods', as the PodMonitor relabels them), not fleetwatch's own
        query("namespace", "Namespace", f'label_values({{__name__=~"{engines}", {CLUSTER}}}, namespace)'),
        # the planned tiers and the tiers of the engines in the selected namespaces (fleetwatch's own series carry
        # its namespace, not the engines': picking a namespace lists the tiers that have engines in it)
        query("tier", "Tier", f'label_values({{__name__=~"fleetwatch_plan_instances|{engines}", {CLUSTER}, '
                              f'namespace=~"$namespace"}}, tier)'),
        query("model", "Model", f'label_values({{__name__=~"{engines}", {TIER}, {CLUSTER}, namespace=~"$namespace"}}, '
                                f'model_name)'),
        # from the engines' own series, the ones the per-instance panels read: their instance label is the one
        # Prometheus gave the target (host:port, or the pod where the PodMonitor relabels it), not fleetwatch's name
        query("instance", "Instance", f"label_values({ENGINE_SERIES}, instance)"),
        # where runbook.md is published (alerting.runbook_url): the base of the panels' runbook links
        {"type": "textbox", "name": "runbook", "label": "Runbook", "query": "runbook.md", "hide": 2,
         "current": {"text": "runbook.md", "value": "runbook.md"}, "options": [],
         "description": "Where your runbook.md is published (the config's alerting.runbook_url)"},
    ]


# every engine's running-requests gauge, for the selected tiers, clusters, namespaces and models: what the
# instance variable lists
ENGINE_SERIES = scoped(f'{{__name__=~"{"|".join(I.all_names("requests_running"))}"}}')
# fleetwatch's firing alerts of the selected tiers (recorded by the rules, they carry the tier and no cluster
# unless the setup adds it on every series)
ALERTS = for_tiers('ALERTS{alertname=~"Fleetwatch.*", alertstate="firing", tier=~"$tier"}')


def _annotations() -> list[dict[str, Any]]:
    """fleetwatch's firing alerts of the selected tiers, marked on every time-series panel."""
    return [{"name": "fleetwatch alerts", "datasource": DS, "enable": True, "hide": False, "iconColor": "red",
             "target": {"refId": "alerts", "expr": ALERTS, "legendFormat": "{{alertname}} {{tier}} {{severity}}"}}]


def _runbook_links(names: list[str]) -> list[dict[str, Any]]:
    """Links to the runbook entries of the alerts a panel's quantity raises, under the runbook variable's base."""
    return [{"title": f"Runbook: {n}", "type": "link", "url": runbook_url("${runbook}", n), "tooltip":
             "What this alert means, how to confirm it, and what to do", "icon": "doc", "tags": [],
             "asDropdown": False, "includeVars": False, "keepTime": False, "targetBlank": True} for n in names]


def _alert_names(row: catalogue.Row) -> list[str]:
    """Every alert a row's band can raise (its own, a below-side and a critical-above name where it has them)."""
    if row.alert is None:
        return []
    return sorted({PREFIX + row.alert.alert_name(side == "above", severity)
                   for severity, side in catalogue.SEVERITY_SIDES})


def _link(title: str, uid: str, tooltip: str) -> dict[str, Any]:
    """A link to another fleetwatch dashboard carrying the time range, the tier and the other variables."""
    return {"title": title, "type": "link", "url": f"/d/{uid}?var-tier=$tier&" + "&".join(
                f"${{{v}:queryparam}}" for v in ("datasource", "cluster", "namespace", "model")),
            "tooltip": tooltip, "icon": "dashboard", "tags": [], "asDropdown": False, "includeVars": False,
            "keepTime": True, "targetBlank": False}


# each row's unit, as a description says it
UNIT_WORDS = {"s": "in seconds", "ratio": "in percent", "requests/s": "in requests per second",
              "requests": "in requests", "1/s": "per second", "tokens/GPU-hour": "in tokens per GPU-hour",
              "USD/1M tokens": "in USD per million tokens"}
# what a bad value means, for the rows whose band raises no alert
BAD_WITHOUT_ALERT = {
    "requests_per_second": "Above the plan's peak for long, the tier gets more load than it was sized for: the "
                           "instances panel shows whether it needs more.",
    "tokens_per_gpu_hour": "Higher is better: a fall at steady load means each GPU serves fewer tokens (smaller "
                           "batches, longer prompts, or instances idle).",
    "cost_per_million_tokens_usd": "Lower is better: it rises when instances idle (low fleet utilization) or each "
                                   "GPU serves fewer tokens.",
}


def stat_description(row: catalogue.Row) -> str:
    """A row's stat: what it shows, its unit, where it is healthy and what a bad value means."""
    spec = row.band
    healthy = spec.target if "{ref" not in spec.target else f"below {spec.reference_name}"
    # a load, or a figure to maximize or minimize, has no healthy range: the bad sentence says which way is bad
    where = "" if spec.target in ("load", "maximize", "minimize") else f"; healthy: {healthy}"
    bad = row.alert.meaning if row.alert is not None else BAD_WITHOUT_ALERT[row.key]
    return (f"{row.help} Shown {UNIT_WORDS[row.unit]}{where}. {bad} (Its definition: {row.key} in the README's "
            f"monitoring table.)")


def fleet_overview() -> dict[str, Any]:
    b = _Board("fleetwatch-fleet", "fleetwatch / Fleet overview",
               "One row per hardware tier: the production monitoring table with its bands, the efficiency "
               "figures, and the instances the tier needs against those it has. Nothing is averaged across tiers.")
    b.row("Tier $tier", repeat="tier")
    one = 'tier="$tier"'
    b.add(_panel("table", "Status of every row", "How many of fleetwatch's exporters see each row of the "
                 "monitoring table at each status on this tier now (ok, warning, critical, unknown), against the "
                 "tier's own bands. Any warning or critical names the quantity to open first; unknown means a "
                 "source is missing (an engine, a GPU exporter, or a plan figure).",
                 [_target(f'count by (metric, status) (fleetwatch_metric_status{{{one}}} == 1)', "{{metric}}", "A",
                          instant=True, table=True)],
                 "short", transformations=[{"id": "organize", "options": {
                     "excludeByName": {"Time": True}, "indexByName": {},
                     "renameByName": {"Value": "fleetwatch exporters"}}}],
                 links=[_link("Tier $tier: drill-down", "fleetwatch-tier", "Latency, KV cache, queue and GPUs of "
                                                                            "this tier"),
                        _link("Tier $tier: plan validation", "fleetwatch-plan", "This tier against its sizing plan")]),
          8, 12)
    for row in catalogue.ROWS:
        if not row.panel:
            continue
        # from the engines' series where the row has PromQL, so a tier of sidecars shows one value
        expr = (row_query(row.key).replace(TIER, one) if not row.gauge_only
                else f"sum by (tier) (fleetwatch_{row.key}{{{one}}})")
        b.add(_panel("stat", row.title, stat_description(row),
                     [_target(expr, row.key, "A", instant=True)], row.grafana_unit,
                     _thresholds(_default_band(row.key)),
                     options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                              "colorMode": "value", "graphMode": "area", "textMode": "auto", "justifyMode": "auto",
                              "orientation": "auto", "wideLayout": True, "showPercentChange": False},
                     links=_runbook_links(_alert_names(row))), 4, 4)
    b.add(_panel("timeseries", "Instances: needed, deployed, up", "In instances: recommended = ceil(ceil(peak / usable) x "
                 "(1 + safety)), recorded by the generated rules (load rules/fleetwatch.rules.yml), "
                 "against the engines deployed (seen in the last hour) and up, from their own up series. A "
                 "recommendation above the deployed count is a scale-up trigger.",
                 [_target(for_tiers(f"{RECOMMENDED}{{{one}}}"), "recommended", "A"),
                  # written out: the engines deployed and up in the selected namespaces and models
                  _target(fleet_series()[INSTANCES], "deployed", "B"),
                  _target(fleet_series()[INSTANCES_UP], "up", "C")], "short"), 24, 8)
    return b.json(_variables())


def tier_drilldown() -> dict[str, Any]:
    b = _Board("fleetwatch-tier", "fleetwatch / Tier drill-down",
               "Latency, KV cache, queue and GPUs of the selected tiers, from the engines' own series over "
               "$__rate_interval, against the SLO and the plan's benchmark.")
    for key, slo, bench, what in (("ttft", "slo_ttft_p99_seconds", "benchmark_ttft_p99_seconds", "TTFT"),
                                  ("itl", "slo_itl_p99_seconds", "benchmark_itl_p99_seconds", "ITL")):
        b.add(_panel("timeseries", f"{what} P50 and P99", f"Tier quantiles of {what} in seconds (histogram_quantile over the "
                     f"bucket rates of every instance of the tier), the P99 SLO and the benchmark's P99. P99 above "
                     f"the SLO line is an SLO breach; far above the benchmark line at the same load, the workload is "
                     f"no longer the one benchmarked.",
                     [_target(row_query(f"{key}_p50_seconds"), "{{tier}} P50", "A"),
                      _target(row_query(f"{key}_p99_seconds"), "{{tier}} P99", "B"),
                      _target(plan_query(slo), "{{tier}} SLO", "C"),
                      _target(plan_query(bench), "{{tier}} benchmark", "D")], "s"), 12, 8)
    sel = '{tier=~"$tier", instance=~"$instance"}'
    b.add(_panel("timeseries", "TTFT P99 per instance", "Each selected instance's own TTFT P99, in seconds: an "
                 "instance far above the others of its tier is slower than they are: hardware other than the "
                 "tier's (a mixed pool), or one instance in trouble (thermal throttling, a bad node).",
                 [_target(f"histogram_quantile(0.99, sum by (tier, instance, le) "
                          f"({I.bucket_rate('ttft_seconds', sel).replace('{w}', '$__rate_interval')}))",
                          "{{instance}}", "A")], "s"), 12, 8)
    b.add(_panel("xychart", "TTFT P99 against RPS per instance", "Observed TTFT P99 (seconds) against the observed "
                 "requests per second per instance, beside the benchmark's prediction at the same load: points above "
                 f"the prediction by more than {STEP13_TTFT_FACTOR - 1:.0%} ask to re-characterize the workload.",
                 [_target(for_tiers(f"{_inline(catalogue.row('requests_per_second').promql)} / on (tier) "
                                    f"({fleet_series()[INSTANCES_UP]})"),
                          "{{tier}} RPS per instance", "A"),
                  _target(f'fleetwatch_plan_check_observed{{{TIER}, check="ttft_p99_vs_benchmark"}}',
                          "{{tier}} observed", "B"),
                  _target(f'fleetwatch_plan_check_predicted{{{TIER}, check="ttft_p99_vs_benchmark"}}',
                          "{{tier}} benchmark", "C")], "s",
                 options={"mapping": "auto", "series": [], "legend": {"showLegend": True, "displayMode": "list",
                                                                      "placement": "bottom", "calcs": []}}), 12, 8)
    b.add(_panel("timeseries", "KV cache utilization", "Mean KV cache usage over the tier's instances, in percent: "
                 "above 90% the KV cache becomes the bottleneck.",
                 [_target(row_query("kv_cache_utilization_ratio"), "{{tier}}", "A")], "percentunit",
                 _thresholds(_default_band("kv_cache_utilization_ratio"))), 12, 8)
    b.add(_panel("timeseries", "KV cache eviction", "Preemptions (SGLang: retractions) per finished request, in "
                 "percent: above 5% the KV budget is undersized; above 20% preempted requests recompute their "
                 "prompts, which takes more KV cache and preempts more, and every latency climbs.",
                 [_target(row_query("kv_cache_eviction_ratio"), "{{tier}}", "A")], "percentunit",
                 _thresholds(_default_band("kv_cache_eviction_ratio"))), 12, 8)
    b.add(_panel("timeseries", "Queue depth and the Little's Law limit", "Waiting requests summed over the tier, "
                 "in requests, against Little's Law's maximum safe depth (SLO TTFT P99 x arrival rate): a queue at "
                 "80% of it warns, at 90% pages, as requests then wait longer than the SLO allows.",
                 [_target(row_query("queue_depth_requests"), "{{tier}} waiting", "A"),
                  _target(f'fleetwatch_plan_check_predicted{{{TIER}, check="queue_depth_littles_law"}}',
                          "{{tier}} Little's Law limit", "B")], "short"), 12, 8)
    per_gpu = {"memory": GPU_MEMORY_PER_GPU, "compute": GPU_COMPUTE_PER_GPU}
    for what, expr in per_gpu.items():
        q = for_tiers(expr.replace("{w}", "$__rate_interval"))
        b.add(_panel("timeseries", f"GPU {what} per GPU", f"Each GPU of the selected tiers (the GPUs of the tier's "
                     f"engine pods on a node-wide dcgm-exporter): {what} utilization in percent, "
                     + ("used / (used + free + reserved). Above 90-95% a spike can run it out of memory; below "
                        "70% the GPUs hold more memory than the model and its KV cache use." if what == "memory" else
                        "SM_ACTIVE, else GR_ENGINE_ACTIVE, else GPU_UTIL / 100. Below 60% while serving, the "
                        "batches are small or the work is decode-bound: more load fits, or fewer GPUs would do."),
                     [_target(q, "{{tier}} {{Hostname}} GPU {{gpu}}", "A")], "percentunit"), 12, 8)
    b.collapsed("Requests and tokens, per instance", _engine_detail())
    b.collapsed("GPU vital signs, per GPU", _gpu_detail())
    return b.json(_variables())


# dcgm-exporter's default counters beside the utilization panels: field, title, unit, scale, what a bad value means
GPU_VITALS = (
    ("DEV_POWER_USAGE", "GPU power", "watt", 1.0, "Power draw in watts. Pinned at the board's limit the GPU throttles its "
     "clocks; far below it under load, the GPU waits on something else (memory, the host, the network)."),
    ("DEV_GPU_TEMP", "GPU temperature", "celsius", 1.0, "Die temperature in degrees Celsius. Past about 85 C the GPU slows "
     "its clocks to cool down: look at the node's cooling."),
    ("DEV_SM_CLOCK", "SM clock", "hertz", 1e6, "Streaming-multiprocessor clock (DCGM reports MHz). A clock that drops under "
     "load while power or temperature is at its limit is throttling, and every latency stretches with it."),
    ("PROF_PIPE_TENSOR_ACTIVE", "Tensor-core activity", "percentunit", 1.0, "Share of cycles the tensor cores are "
     "busy, in percent: the matrix math of prefill and decode. Low while SM activity is high means the GPU is busy on other "
     "work (attention kernels, sampling, copies)."),
    ("DEV_MEM_COPY_UTIL", "Memory-copy utilization", "percentunit", 0.01, "Share of time the memory controller is "
     "busy, in percent: decode reads weights and KV cache every step, so a decode-heavy tier runs this high."),
)


def _gpu_detail() -> list[tuple[dict[str, Any], int, int]]:
    out = []
    for field_name, title, unit, scale, what in GPU_VITALS:
        expr = catalogue.per_gpu_promql(catalogue.dcgm_field(field_name))
        scaled = f"({expr}) * {scale:g}" if scale != 1.0 else expr
        q = for_tiers(scaled.replace("{w}", "$__rate_interval"))
        out.append((_panel("timeseries", title, f"{what} Each GPU of the selected tiers' engine pods (dcgm-exporter's "
                                                f"DCGM_FI_{field_name}).",
                           [_target(q, "{{tier}} {{Hostname}} GPU {{gpu}}", "A")], unit), 12, 8))
    return out


ONE = '{tier=~"$tier", instance=~"$instance"}'  # the selected tiers' selected instances


def _w(expr: str) -> str:
    return expr.replace("{w}", "$__rate_interval")


def _engine_detail() -> list[tuple[dict[str, Any], int, int]]:
    """What vLLM's and SGLang's own dashboards show daily, from the engine registry's names: each panel
    works on every engine that exposes the series (the description says which do not)."""
    e2e_sum, e2e_count = I.histogram_rates("e2e_seconds", ONE)
    quantiles = [_target(f"histogram_quantile({q}, sum by (tier, le) ({_w(I.bucket_rate('e2e_seconds', ONE))}))",
                         f"{{{{tier}}}} P{round(q * 100)}", ref) for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))]
    reasons = [f"sum by (tier, finished_reason) (rate({e.names['requests_finished'][0]}{ONE}[$__rate_interval]))"
               for e in I.ENGINES if e.finished_reason_label == "finished_reason" and e.names.get("requests_finished")]
    without = ", ".join(e.title for e in I.ENGINES if e.finished_reason_label != "finished_reason")

    def heatmap(key: str, what: str) -> dict[str, Any]:
        return _panel("heatmap", f"{what} length", f"How many requests finished per second at each {what.lower()} "
                      f"length in tokens, per histogram bucket: the workload's shape. Mass moving to longer "
                      f"{what.lower()}s than the plan's profile is drift: re-characterize the workload.",
                      [dict(_target(f"sum by (le) ({_w(I.bucket_rate(key, ONE))})", "{{le}}", "A"),
                            format="heatmap")], "short",
                      options={"calculate": False, "yAxis": {"unit": "short"}, "cellGap": 1,
                               "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64}})

    return [
        (_panel("timeseries", "End-to-end request latency", "Arrival to last token in seconds, per tier: P50, P90 and P99 "
                "(histogram_quantile over every instance's buckets) and the mean (sum over count). A P99 far above "
                "TTFT + output x ITL means queueing before the engine.",
                [*quantiles, _target(f"sum by (tier) ({_w(e2e_sum)}) / sum by (tier) ({_w(e2e_count)})",
                                     "{{tier}} mean", "D")], "s"), 12, 8),
        (_panel("timeseries", "Prompt and generation tokens per second", "Tokens the selected instances read "
                "(prompt) and wrote (generation) per second: the throughput the plan's tokens per GPU-hour comes from. "
                "Generation falling while the arrival rate holds means each request decodes slower.",
                [_target(f"sum by (tier) ({_w(I.rate('prompt_tokens', ONE))})", "{{tier}} prompt", "A"),
                 _target(f"sum by (tier) ({_w(I.rate('generation_tokens', ONE))})", "{{tier}} generation", "B")],
                "short"), 12, 8),
        (_panel("timeseries", "Running and waiting requests per instance", "Each instance's requests in its batch "
                "(running) and in its queue (waiting), in requests. Waiting above zero for long on one instance while "
                "others idle is a routing problem; on all of them, too few instances.",
                [_target(f"sum by (tier, instance) ({I.instant('requests_running', ONE)})", "{{instance}} running", "A"),
                 _target(f"sum by (tier, instance) ({I.instant('requests_waiting', ONE)})", "{{instance}} waiting",
                         "B")], "short"), 12, 8),
        (_panel("timeseries", "Preemptions per instance", "KV cache preemptions (SGLang: retractions) per second on "
                "each instance: the KV cache ran out mid-generation and a request was pushed back. Any steady rate "
                "means the KV budget is too small for the load.",
                [_target(f"sum by (tier, instance) ({_w(I.rate('preemptions', ONE))})", "{{instance}}", "A")],
                "short"), 12, 8),
        (heatmap("prompt_tokens_per_request", "Prompt"), 12, 8),
        (heatmap("generation_tokens_per_request", "Output"), 12, 8),
        (_panel("timeseries", "Queue, prefill and decode time", f"The mean time in seconds a finished request spent waiting in "
                f"the queue, in prefill (its prompt) and in decode (its output), per tier. Queue time growing while "
                f"prefill and decode hold is too few instances; prefill growing is longer prompts. Not exposed by "
                f"{', '.join(e.title for e in I.ENGINES if 'queue_seconds' not in e.names)}.",
                [_target(f"sum by (tier) ({_w(I.histogram_rates(key, ONE)[0])}) / "
                         f"sum by (tier) ({_w(I.histogram_rates(key, ONE)[1])})", f"{{{{tier}}}} {what}", ref)
                 for key, what, ref in (("queue_seconds", "queue", "A"), ("prefill_seconds", "prefill", "B"),
                                        ("decode_seconds", "decode", "C"))], "s"), 12, 8),
        (_panel("timeseries", "Finished requests by reason", f"Requests finished per second by why they ended: stop "
                f"(the model ended), length (max tokens reached), abort (the client left, or an error). A rise in "
                f"abort is users giving up; in length, outputs cut short. Not exposed by {without}.",
                [_target(" or ".join(reasons), "{{tier}} {{finished_reason}}", "A")], "short"), 24, 8),
    ]


# the checks of production against the plan's benchmark: title, unit, what is compared, what a bad value means
_AWAY = ("production no longer matches the benchmark: re-characterize the workload (lengths, prefix reuse, peak) "
         "and re-run the benchmark.")
PLAN_CHECKS = {
    "ttft_p99_vs_benchmark": ("TTFT P99 against the benchmark", "s", "TTFT P99",
                              f"More than {STEP13_TTFT_FACTOR - 1:.0%} above the prediction: {_AWAY}"),
    "itl_p99_vs_benchmark": ("ITL P99 against the benchmark", "s", "inter-token latency P99",
                             f"More than {STEP13_TTFT_FACTOR - 1:.0%} above the prediction: {_AWAY}"),
    "gpu_utilization_vs_benchmark": ("GPU utilization against the benchmark", "ratio", "GPU compute utilization",
                                     f"More than {STEP13_UTIL_POINTS * 100:.0f} points below the prediction: {_AWAY}"),
    "prefix_cache_hit_ratio_vs_benchmark": ("Prefix cache hit rate against the benchmark", "ratio",
                                            "prefix cache hit rate", f"Below {PREFIX_HIT_FLOOR:.0%} of the prediction: "
                                            "requests that share a prefix no longer reach the instance that cached "
                                            "it (routing), or the workload reuses less than benchmarked."),
    "kv_cache_eviction_ratio_vs_benchmark": ("KV cache eviction against the benchmark", "ratio",
                                             "preemptions per finished request",
                                             f"More than {EVICTION_POINTS * 100:.0f} points above the prediction:"
                                             " the KV cache holds less than the benchmark's did (longer "
                                             "prompts or outputs, or a smaller KV budget)."),
}


# fleetwatch's own series that belong to no tier (the "fleetwatch itself" panel reads them whole)
PROCESS_SERIES = ("fleetwatch_last_cycle_timestamp_seconds", "fleetwatch_alertmanager_notifications_failed_total")


def plan_validation() -> dict[str, Any]:
    b = _Board("fleetwatch-plan", "fleetwatch / Plan validation",
               "Observed vs benchmark over time: every check of production against the sizing plan's benchmark at equivalent "
               "RPS, the SLOs and Little's Law; the findings; the gateway guardrails fleetwatch recommends.")
    for check, (title, unit, what, bad) in PLAN_CHECKS.items():
        b.add(_panel("timeseries", title, f"Observed {what} against what the plan's benchmark predicts at the same "
                     f"requests per second per instance, {UNIT_WORDS[unit]}. {bad} No prediction outside the "
                     f"benchmark's curve (it is never extrapolated).",
                     [_target(f'fleetwatch_plan_check_observed{{{TIER}, check="{check}"}}', "{{tier}} observed", "A"),
                      _target(f'fleetwatch_plan_check_predicted{{{TIER}, check="{check}"}}', "{{tier}} predicted",
                              "B")], catalogue.GRAFANA_UNITS[unit]), 12, 8)
    b.add(_panel("table", "Plan checks not ok", "Every check of this tier against its plan (SLOs, "
                 "Little's Law, the benchmark) that is warning or critical now, with the observed and predicted "
                 "values, each in its own unit (seconds, percent or requests): each is a reason the plan no longer "
                 "describes production.",
                 [_target(f'fleetwatch_plan_check_status{{{TIER}, status=~"warning|critical"}} == 1', "", "A",
                          instant=True, table=True)], "short"), 12, 8)
    b.add(_panel("table", "Findings", "Current findings (target down, drift, runaway generation, mixed tier, ...) "
                 "with the instance to blame, one row per finding: each is a problem fleetwatch found that no band "
                 "shows.",
                 [_target(f"fleetwatch_finding{{{TIER}}} == 1", "", "A", instant=True, table=True)], "short"), 12, 8)
    b.add(_panel("table", "Resize verdict", "Instances the tier needs (the fleet-size arithmetic, recorded by the generated "
                 "rules) against those deployed, in instances: more needed than deployed is a scale-up; the ScaleUp "
                 "and ScaleDown alerts fire on these two.",
                 [_target(for_tiers(f"{RECOMMENDED}{{{TIER}}}"), "recommended", "A", instant=True, table=True),
                  _target(fleet_series()[INSTANCES], "deployed", "B", instant=True, table=True)],
                 "short"), 12, 8)
    b.add(_panel("table", "Guardrails", "Gateway limits recommended from the observed histograms, in "
                 "tokens and requests: max_input_tokens 2-3x input P95, max_output_tokens 1.5-2.5x output P99, the "
                 "circuit breaker at 80-90% of Little's Law's limit. A gateway set looser lets one runaway request or "
                 "burst take the tier past its SLO.",
                 [_target(f"fleetwatch_guardrail_recommended{{{TIER}}}", "", "A", instant=True, table=True)],
                 "short"), 12, 8)
    b.add(_panel("timeseries", "fleetwatch itself", "Whether fleetwatch is checking the fleet: seconds since its last "
                 "completed cycle (stale past 3 intervals and a scrape timeout), the targets it cannot reach (an "
                 "engine or a GPU source), and its notifications to Alertmanager that failed.",
                 [_target(f"time() - max({PROCESS_SERIES[0]})", "seconds since the last cycle", "A"),
                  _target(f"sum by (tier, source) (1 - fleetwatch_target_up{{{TIER}}})",
                          "{{tier}} {{source}} targets unreached", "B"),
                  _target(f"sum by (alertmanager) (increase({PROCESS_SERIES[1]}[$__rate_interval]))",
                          "failed notifications to {{alertmanager}}", "C")], "short"), 24, 8)
    return b.json(_variables())


def panel_link(title: str) -> tuple[str, str, str]:
    """(dashboard title, panel title, link path) of the first generated panel with this title."""
    for board in (fleet_overview(), tier_drilldown(), plan_validation()):
        for p in board["panels"]:
            if p.get("title") == title:
                return board["title"], title, f"/d/{board['uid']}?viewPanel={p['id']}"
    raise KeyError(f"no generated panel is titled {title!r}")


def panel_table() -> str:
    """Every panel of the generated dashboards, as the README lists them: dashboard, row, panel, what it shows."""
    lines = ["| dashboard | row | panel | what it shows |", "|---|---|---|---|"]
    for board in (fleet_overview(), tier_drilldown(), plan_validation()):
        row = ""
        for top in board["panels"]:
            for p in (top, *top.get("panels", ())):
                if p["type"] == "row":
                    row = p["title"]
                    continue
                words = p["description"].replace("|", "\\|").replace("\n", " ")
                lines.append(f"| {board['title']} | {row} | {p['title']} | {words} |")
    return "\n".join(lines) + "\n"


def build() -> dict[str, str]:
    """File name -> dashboard JSON."""
    boards = {"fleetwatch-fleet.json": fleet_overview(), "fleetwatch-tier.json": tier_drilldown(),
              "fleetwatch-plan.json": plan_validation()}
    return {name: json.dumps(doc, indent=2, sort_keys=False) + "\n" for name, doc in boards.items()}


def configmap(boards: dict[str, str], name: str = "fleetwatch-dashboards") -> str:
    """The dashboards as one ConfigMap that Grafana's dashboard sidecar (kube-prometheus-stack) loads."""
    import yaml

    doc = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "labels": {"grafana_dashboard": "1", "app.kubernetes.io/name": "fleetwatch",
                                                 "app.kubernetes.io/component": "dashboards"}},
           "data": dict(boards)}
    header = "# Generated by `fleetwatch dashboards --configmap`; do not edit. Regenerate and commit.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, width=120)
