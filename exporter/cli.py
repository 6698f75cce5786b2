"""Command line: parse arguments, build a validated config, dispatch. Nothing else."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import textwrap
import time

from typing import TYPE_CHECKING, Callable

from .config import ConfigError, load_config, parse_duration, require_targets, validate_listen
from .secrets import redact_url
from .engines import ENGINES, engine_names

if TYPE_CHECKING:
    from pathlib import Path

    from .alertreplay import AlertRule, Route
    from .model import Config
    from .demo.scenarios import Scenario
    from .model import Slo
    from .planner.curve import Curve, SweepPoint

DESCRIPTION = f"""\
fleetwatch watches an LLM inference fleet ({", ".join(e.title for e in ENGINES)}, and their GPUs
through dcgm-exporter or NVML) one hardware tier at a time, computes the production monitoring
table, and checks it against the sizing plan the fleet was built from."""

EPILOG = """\
exit codes: 0 ok; 1 (check) something in the report is critical; 2 usage or config error.
docs: README.md; the report's fields and the definitions are explained there."""


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fleetwatch")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser. The demo's scenarios (and the simulator they import) are loaded only when ``argv``
    names the demo: every other command starts without them."""
    argv = sys.argv[1:] if argv is None else argv
    scenarios = _scenarios() if "demo" in argv else {}
    p = argparse.ArgumentParser(prog="fleetwatch", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log-level", default=os.environ.get("FLEETWATCH_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"], help="log verbosity on stderr (default: info)")
    p.add_argument("--version", action="version", version=f"fleetwatch {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the exporter daemon: scrape every interval, serve /metrics and /healthz",
                       description="Scrape every target each interval, evaluate the window, and serve the result "
                                   "on /metrics (Prometheus text format) and /healthz. Stops cleanly on SIGTERM.")
    s.add_argument("--config", "-c", required=True, help="fleet config YAML (see examples/)")
    s.add_argument("--watch", action="store_true",
                   help="also show the report live in this terminal, redrawn each cycle (logs: warnings only)")
    s.add_argument("--listen", default=os.environ.get("FLEETWATCH_LISTEN") or None,
                   help="host:port to serve on (env FLEETWATCH_LISTEN; overrides the config's listen:, "
                        "default 0.0.0.0:9108)")
    side = s.add_argument_group(
        "sidecar mode", "With --tier, fleetwatch watches one engine on localhost and its own GPUs, beside it in its "
        "pod, and leaves the fleet verdicts (instances up, peak, recommended count, resize alerts) to the generated "
        "rules in Prometheus. The config supplies the tier's plan; its targets are not used. The flags override the "
        "config's sidecar: block. POD_NAME and POD_NAMESPACE (downward API) name the instance and select its GPUs "
        "on a node-wide dcgm-exporter.")
    side.add_argument("--tier", default=os.environ.get("FLEETWATCH_TIER") or None,
                      help="run as a sidecar of an instance of this tier (env FLEETWATCH_TIER)")
    side.add_argument("--engine", choices=engine_names(), default=os.environ.get("FLEETWATCH_ENGINE") or None,
                      help=f"the engine beside it (env FLEETWATCH_ENGINE; default {engine_names()[0]})")
    side.add_argument("--engine-url", default=os.environ.get("FLEETWATCH_ENGINE_URL") or None,
                      help="its /metrics URL (env FLEETWATCH_ENGINE_URL; default http://127.0.0.1:8000/metrics, "
                           "SGLang :30000)")
    side.add_argument("--dcgm-url", default=os.environ.get("FLEETWATCH_DCGM_URL") or None,
                      help="the node's dcgm-exporter /metrics URL (env FLEETWATCH_DCGM_URL)")
    side.add_argument("--dcgm-bearer-token-file", default=os.environ.get("FLEETWATCH_DCGM_BEARER_TOKEN_FILE") or None,
                      help="bearer token file for that dcgm-exporter (env FLEETWATCH_DCGM_BEARER_TOKEN_FILE)")
    side.add_argument("--nvml", action="store_true", default=None,
                      help="read the GPUs visible to this container through NVML instead of dcgm-exporter")

    c = sub.add_parser("check", help="scrape twice, a window apart, print one report; exit 1 if anything is critical",
                       description="Scrape every target at the start and again after --window, evaluate the "
                                   "increases between the two scrapes and print the report. With source: "
                                   "prometheus, ask Prometheus for the last --window instead. Exit 1 when anything "
                                   "is critical, 2 on a config error.")
    c.add_argument("--config", "-c", required=True, help="fleet config YAML")
    c.add_argument("--format", choices=["table", "json"], default="table", help="output format (default: table)")
    c.add_argument("--window", type=_duration, default=None,
                   help="time between the two scrapes (default: 15s); with source: prometheus, the window "
                        "evaluated back from now (default: the config's window), with no wait")

    b = sub.add_parser(
        "backtest", help="replay a stretch of the fleet's history from Prometheus through the plan, one cycle a step",
        description=textwrap.fill(
            "Read the fleet's history from a Prometheus (or any engine with its HTTP API) and evaluate it every --step "
            "from --from to --to as a live cycle at that time would have: the rows over the window ending there, the "
            "resize verdict from the history up to then, the schedule and the findings. Prints, per tier, the time "
            "spent above each SLO, when the tier was undersized or in the utilization trap, the instances deployed, "
            "recommended and scheduled, GPU-hours and cost, and each --plan set beside the current one on the same "
            "traffic; then the alerts the rules would have fired and the notifications Alertmanager would have sent.",
            width=100),
        epilog="times: 2026-11-26T00:00:00Z, 2026-11-26 14:00 (UTC), Unix seconds, now, now-7d\n"
               "example: fleetwatch backtest -c fleet.yaml --from now-7d --plan h100=plans/h100-b.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--config", "-c", required=True, help="fleet config YAML (its tiers, plans and window)")
    b.add_argument("--from", dest="start", required=True, metavar="TIME", help="start of the replay")
    b.add_argument("--to", dest="end", default="now", metavar="TIME", help="end of the replay (default: now)")
    b.add_argument("--step", type=_duration, default=300.0,
                   help="time between two replayed cycles (default: 5m)")
    b.add_argument("--plan", action="append", default=[], metavar="TIER=FILE",
                   help="also evaluate TIER's traffic against this plan file (repeatable)")
    b.add_argument("--prometheus", metavar="URL",
                   help="the Prometheus API to read (default: the config's source.prometheus.url)")
    b.add_argument("--rules", metavar="FILE",
                   help="the Prometheus rule file whose alerts to replay (default: the rules `fleetwatch rules` "
                        "generates from the config); a PrometheusRule manifest works too")
    b.add_argument("--alertmanager-config", metavar="FILE",
                   help="Alertmanager's config: its root route's group_by and intervals decide the notifications "
                        "(default: Alertmanager's defaults)")
    b.add_argument("--flapping", type=int, default=3, metavar="N",
                   help="an alert that fired more than N times in the replay is listed as flapping (default: 3)")
    b.add_argument("--no-alerts", action="store_true", help="replay the rows and verdicts only")
    b.add_argument("--format", choices=["table", "json"], default="table", help="output format (default: table)")
    b.add_argument("--report", metavar="DIR",
                   help="also write DIR/index.html with plots per tier (PNG; needs matplotlib: pip install "
                        "matplotlib); it opens offline")

    d = sub.add_parser("demo", help="run a simulated two-tier fleet and fleetwatch against it (no GPU needed)",
                       description="Start simulated vLLM instances (4 x H100 TP2, 3 x A100 TP4) and their "
                                   "dcgm-exporters on free loopback ports, run fleetwatch against them every 5s "
                                   "over a 30s window, and print each report. The plan comes from the "
                                   "simulator's own concurrency sweep, shipped with the package.",
                       epilog="scenarios:\n" + "\n".join(f"  {n:<18} {s.what_happens}; catches {s.must_catch}"
                                                         for n, s in scenarios.items()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--scenario", default="healthy", choices=list(scenarios) or None,
                   help="what goes wrong (default: healthy)")
    d.add_argument("--duration", type=_duration, default=None,
                   help="stop after this long, e.g. 60s or 5m (default: run until Ctrl-C)")
    d.add_argument("--format", choices=["table", "json"], default="table",
                   help="table, or one JSON report per stdout line (default: table)")
    d.add_argument("--remeasure", action="store_true",
                   help="rerun the simulator's load sweep (about 45 s) instead of using the shipped plan")
    d.add_argument("--engine", choices=["vllm-0.33", "vllm-0.6", "sglang-0.5"], default="vllm-0.33",
                   help="which engine version the simulated instances emulate (default: vllm-0.33)")
    d.add_argument("--listen", default="127.0.0.1:0",
                   help="host:port for fleetwatch's own /metrics (default: a free loopback port)")
    d.add_argument("--prometheus-config", metavar="FILE",
                   help="write a Prometheus config that scrapes the demo's engines, GPUs and fleetwatch (their "
                        "ports change every run), for `prometheus --config.file FILE` and then `fleetwatch "
                        "dashboards --preview`")

    r = sub.add_parser("rules", help="generate Prometheus recording/alerting rules, their promtool tests and runbook",
                       description="Generate, from the metric catalogue: recording rules "
                                   "(tier:fleetwatch_<quantity>:<op><window>), alerting rules (every band of the "
                                   "monitoring table, compared with the thresholds fleetwatch exports from each "
                                   "tier's plan and band overrides, so a plan change needs no new rules; observed vs "
                                   "benchmark, Little's Law, findings, resize triggers, fleetwatch itself), a "
                                   "PrometheusRule rendering of the same groups, promtool tests for every alert, and "
                                   "runbook.md. --check compares instead of writing and exits 1 on drift.")
    r.add_argument("--config", "-c", required=True, help="fleet config YAML")
    r.add_argument("-o", "--out", help="output directory (e.g. rules/); may be left out with --prometheusrule")
    r.add_argument("--runbook", default=None,
                   help="where the runbook is written (default: OUT/runbook.md); --runbook-url is what alerts link")
    r.add_argument("--runbook-url", default=None, metavar="URL",
                   help="where you publish the generated runbook.md: every alert's runbook_url is URL#<its name in "
                        "lower case> (default: the config's alerting.runbook_url, itself the relative 'runbook.md', "
                        "which a notification cannot open)")
    r.add_argument("--for", dest="for_", default=None, metavar="DURATION",
                   help="'for:' of every alert, e.g. 15s for a drill (default: per family and severity, from the "
                        "config's alerting.for; a scale-down always waits its tier's stabilization)")
    r.add_argument("--eval-interval", default=None, metavar="DURATION",
                   help="rule group interval (default: the config's interval)")
    r.add_argument("--prometheusrule", default=None, metavar="FILE",
                   help="also write the PrometheusRule here (e.g. deploy/kubernetes/base/prometheusrule.yaml: "
                        "kustomize reads only files inside its base)")
    r.add_argument("--check", action="store_true", help="exit 1 if the files on disk differ from what would be written")

    g = sub.add_parser("dashboards", help="generate the Grafana dashboards (fleet overview, tier drill-down, plan)",
                       description="Write the Grafana dashboards, generated from the metric catalogue, as JSON "
                                   "files for import or provisioning. They need no config: the data source, tiers "
                                   "and instances are template variables. --check compares instead of writing and "
                                   "exits 1 on drift.")
    g.add_argument("-o", "--out", default=None, help="output directory (e.g. grafana/); needed unless --preview")
    g.add_argument("--configmap", default=None, metavar="FILE",
                   help="also write them as one ConfigMap labelled grafana_dashboard: \"1\" for Grafana's sidecar "
                        "(e.g. deploy/kubernetes/base/dashboards-configmap.yaml)")
    g.add_argument("--check", action="store_true", help="exit 1 if the files on disk differ from what would be written")
    g.add_argument("--preview", default=None, metavar="DIR",
                   help="draw each dashboard from a real Prometheus (--prometheus) into DIR/<dashboard>.png, panel by "
                        "panel in its grid, every variable at All: see them before importing (needs matplotlib)")
    g.add_argument("--prometheus", default="http://localhost:9090", metavar="URL",
                   help="with --preview: the Prometheus that scrapes the fleet and fleetwatch (default %(default)s)")
    g.add_argument("--range", default="1h", help="with --preview: how far back the panels reach (default 1h)")
    g.add_argument("--bearer-token-file", default=None, help="with --preview: a file holding Prometheus's token")

    pl = sub.add_parser(
        "plan", help="size a tier from a workload, a model and a GPU: the plan fleetwatch validates",
        description="Size one tier: classify the workload and rank the GPUs for it, check whether routing simple "
                    "requests to a small model pays, account for one instance's memory as vLLM does (weights from "
                    "the checkpoint's quantization, KV cache per attention type, the start-up overhead) at the "
                    "model's native precision and at the chosen one, pick a TP/PP layout vLLM accepts, read a "
                    "concurrency sweep into the latency-throughput curve (the benchmark), derive the serving "
                    "checklist, size the fleet and cost it. Without --sweep the instance count is a roofline "
                    "estimate, labelled as one. --from-report re-characterizes the workload from a fleetwatch "
                    "report; --workload-from derives it from the Prometheus that scrapes the fleet.",
        epilog="workload keys: input_tokens {p50,p95,p99}, output_tokens {p50,p95,p99}, peak_rps, average_rps, "
               "slo {ttft_p99, itl_p99}; optional online_share, concurrency_per_instance (32), safety_factor (0.2), "
               "simple_share, shared_prefixes, lora {adapters, rank}. GPUs built in: H100-SXM (H100), H100-PCIe, "
               "H100-NVL, H200, H20, A100-40GB, A100-80GB, L4, L40S, MI300X, MI325X, B200, GB200.")
    pl.add_argument("--workload", "-w", default=None, help="the workload profile: lengths, peak, SLOs (YAML)")
    pl.add_argument("--workload-from", default=None, metavar="URL",
                    help="derive the workload from this Prometheus (the one that scrapes the fleet): length "
                         "percentiles, peak and average RPS, the daily profile, the prefix-cache hit rate, and the "
                         "SLOs of the tier's current plan; writes it to --workload-out, then plans with it when "
                         "--model and --gpu are given")
    pl.add_argument("--range", default="7d", help="with --workload-from: how far back to look (default 7d)")
    pl.add_argument("--at", type=float, default=None, metavar="UNIX_SECONDS",
                    help="with --workload-from: the end of the range (default now)")
    pl.add_argument("--workload-out", default="workload.yaml", metavar="FILE",
                    help="with --workload-from: where to write the derived workload (default workload.yaml)")
    pl.add_argument("--config", default=None, metavar="FLEET.yaml",
                    help="with --workload-from: the fleet config whose tier plan gives the SLOs (default: the "
                         "plan figures fleetwatch exports to that Prometheus)")
    pl.add_argument("--bearer-token-file", default=None, help="with --workload-from: a file holding the token "
                                                                 "Prometheus wants")
    pl.add_argument("--model", "-m", default=None, help="the model's Hugging Face config.json (or a YAML/JSON with "
                                                        "the same keys and num_parameters)")
    pl.add_argument("--gpu", "-g", default=None, help="the GPU to size on (H100-SXM, A100-80GB, ...; an alias such as "
                                                      "H100 or 'NVIDIA H100 80GB HBM3'; or one from --gpu-catalog)")
    pl.add_argument("--weights", choices=["fp16", "bf16", "fp8", "int8", "int4", "mxfp4"], default=None,
                    help="weights precision (default: the checkpoint's: its quantization_config, else torch_dtype)")
    pl.add_argument("--kv-cache", choices=["fp16", "bf16", "fp8"], default=None,
                    help="KV cache precision (default: vLLM's auto, the model's 16-bit dtype)")
    pl.add_argument("--tp", type=int, default=None, help="pin tensor parallelism (default: the lowest vLLM accepts "
                                                         "that holds the model)")
    pl.add_argument("--pp", type=int, default=None, help="pin pipeline parallelism (default: 1; a model that needs "
                                                         "more than a node is a verdict, not a silent PP)")
    pl.add_argument("--ep", type=int, default=None, help="expert parallelism for a mixture-of-experts model: the "
                                                         "experts spread over the TP group (equals --tp)")
    pl.add_argument("--memory-model", choices=["vllm", "chapter"], default="vllm",
                    help="vllm (default): gpu_memory_utilization x the HBM the device reports, less weights and "
                         "vLLM's measured start-up overhead, is KV cache; chapter: activations 20%% of the weights "
                         "and the framework 7.5%% of the VRAM")
    pl.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                    help="vLLM's --gpu-memory-utilization (default 0.9)")
    pl.add_argument("--max-num-batched-tokens", type=int, default=8192,
                    help="vLLM's --max-num-batched-tokens, which sets its activation peak (default 8192)")
    pl.add_argument("--sweep", default=None, help="a concurrency sweep of this configuration: vllm bench serve "
                                                  "--save-result JSON (a file, a list, JSON lines or a directory) or a "
                                                  "CSV (concurrency,rps,ttft_p99,itl_p99[,mean_latency,gpu_utilization])")
    pl.add_argument("--gpu-catalog", default=None, help="YAML overriding or adding GPUs (name: {hbm_gb, hbm_tb_s, "
                                                        "tflops: {fp16, fp8, int8}, interconnect, interconnect_gb_s, "
                                                        "hour_usd, gpus_per_node, reported_gib})")
    pl.add_argument("--from-report", default=None, metavar="REPORT.json",
                    help="re-characterize: replace the workload's lengths and peak with what this fleetwatch report "
                         "observed")
    pl.add_argument("--tier", default=None, help="with --from-report or --workload-from: the tier to read")
    pl.add_argument("--small-model", default=None, help="routing: the small model that simple requests would be "
                                                        "routed to (config.json); sized when routing pays")
    pl.add_argument("--small-gpu", default=None, help="its GPU (default: --gpu)")
    pl.add_argument("--small-sweep", default=None, help="its concurrency sweep")
    pl.add_argument("--lora-adapters", type=int, default=None, help="adapters served at once (overrides the workload's "
                                                                    "lora.adapters)")
    pl.add_argument("--lora-rank", type=int, default=None, help="their rank (overrides lora.rank)")
    pl.add_argument("--format", choices=["table", "json", "yaml"], default="table",
                    help="table (the human report), json (for tools) or yaml (the plan serve reads)")

    i = sub.add_parser(
        "inject", help="add the fleetwatch sidecar to engine workloads: a Helm post-renderer, or a kustomize Component",
        description="Read Kubernetes manifests on stdin (as Helm's post-renderer hands them) and write them to stdout "
                    "with the fleetwatch sidecar added to every Deployment and StatefulSet labelled with the tier "
                    "label. The sidecar reads its tier from the pod's label, its plan from the config map, and its "
                    "GPUs from the node's dcgm-exporter. With --component, write the same addition as a kustomize "
                    "Component instead.",
        epilog="helm (4): helm plugin install deploy/helm/fleetwatch-sidecar, then helm install ... --post-renderer "
               "fleetwatch-sidecar [--post-renderer-args=--image=REGISTRY/fleetwatch:TAG]")
    i.add_argument("--image", default="fleetwatch:dev", help="the sidecar's image (default: fleetwatch:dev)")
    i.add_argument("--tier-label", default="fleetwatch.io/tier",
                   help="the workload and pod label that names the tier (default: fleetwatch.io/tier)")
    i.add_argument("--config-map", default="fleetwatch-config",
                   help="the ConfigMap with fleet.yaml and the plans, in the engines' namespace (default: "
                        "fleetwatch-config)")
    i.add_argument("--dcgm-url", default="http://fleetwatch-dcgm-local.gpu-operator.svc:9400/metrics",
                   help="the node's dcgm-exporter, through a Service with internalTrafficPolicy: Local (default: "
                        "fleetwatch-dcgm-local in gpu-operator); empty: no GPU rows")
    i.add_argument("--engine-url", default=None, help="the engine's /metrics (default: localhost, vLLM :8000)")
    i.add_argument("--component", default=None, metavar="DIR", help="write a kustomize Component to DIR instead")
    i.add_argument("--check", action="store_true", help="with --component: exit 1 if DIR differs from what would "
                                                        "be written")

    v = sub.add_parser("validate-config", help="validate a fleet config and exit (0 valid, 2 invalid)")
    v.add_argument("file", help="fleet config YAML")
    return p


def _rules(cfg: "Config", args: argparse.Namespace) -> int:
    from pathlib import Path

    from .render.rules import build, runbook

    try:
        if args.for_ is not None:
            _duration(args.for_)
    except argparse.ArgumentTypeError as e:
        print(f"fleetwatch: --for: {e}", file=sys.stderr)
        return 2
    if not args.out and not args.prometheusrule:
        print("fleetwatch: rules: give -o DIR, --prometheusrule FILE, or both", file=sys.stderr)
        return 2
    built = build(cfg, for_=args.for_, runbook_base=args.runbook_url, eval_interval=args.eval_interval)
    base = args.runbook_url or cfg.alerting.runbook_url
    if "://" not in base and not args.check:  # said, not refused: the committed example rules use the relative default
        print(f"fleetwatch: note: alerts link the runbook as {base}#<alert>, a relative link a notification "
              f"cannot open; set alerting.runbook_url (or --runbook-url) to where you publish runbook.md",
              file=sys.stderr)
    files: dict[Path, str] = {}
    if args.out:
        files = {Path(args.out) / name: text for name, text in built.items()}
        # everything goes under -o unless the runbook is given its own path: never into the cwd
        files[Path(args.runbook) if args.runbook else Path(args.out) / "runbook.md"] = runbook(cfg, args.for_)
    if args.prometheusrule:
        files[Path(args.prometheusrule)] = built["fleetwatch-prometheusrule.yaml"]
    return _write_or_check(files, f"`fleetwatch rules` generates from {cfg.path}", args.check)


def _serve_config(cfg: "Config", args: argparse.Namespace) -> "Config":
    """Fleet mode as configured, or with --tier the config of one sidecar."""
    from .sidecar import environment_value

    for flag in ("tier", "engine_url", "dcgm_url", "dcgm_bearer_token_file"):  # flags, or FLEETWATCH_* variables
        environment_value(f"--{flag.replace('_', '-')} (or FLEETWATCH_{flag.upper()})", getattr(args, flag))
    if args.tier is not None and not args.tier.strip():
        raise ConfigError(cfg.path, "", "--tier is empty: in a pod, FLEETWATCH_TIER comes from the pod's tier label "
                                        "(is the label on the pod template, not only on the workload?)")
    if not args.tier:
        if args.engine or args.engine_url or args.dcgm_url or args.nvml or args.dcgm_bearer_token_file:
            raise ConfigError(cfg.path, "", "--engine, --engine-url, --dcgm-url, --nvml and "
                                            "--dcgm-bearer-token-file need --tier (sidecar mode)")
        require_targets(cfg)
        return cfg
    from .model import SidecarSettings
    from .sidecar import sidecar_config

    if cfg.prometheus is not None:
        raise ConfigError(cfg.path, "source", "a sidecar (--tier) scrapes its own engine; source: prometheus is for "
                                              "fleet mode")
    flags = SidecarSettings(engine=args.engine, url=args.engine_url, dcgm=args.dcgm_url, nvml=args.nvml,
                            dcgm_bearer_token_file=args.dcgm_bearer_token_file)
    return sidecar_config(cfg, args.tier, flags, pod=environment_value("POD_NAME", os.environ.get("POD_NAME")),
                          namespace=environment_value("POD_NAMESPACE", os.environ.get("POD_NAMESPACE")))


def _write_or_check(files: "dict[Path, str]", source: str, check: bool) -> int:
    if check:
        stale = [p for p, text in files.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
        for p in stale:
            print(f"{p}: differs from what {source}; regenerate and commit", file=sys.stderr)
        return 1 if stale else 0
    for p, text in files.items():
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8")
        except OSError as e:  # -o naming a file, a read-only place: said in one line, as a usage error
            print(f"fleetwatch: cannot write {p}: {e.strerror or e} (-o names a directory)", file=sys.stderr)
            return 2
        print(f"wrote {p}")
    return 0


def _sweep_points(sweep: str) -> list[SweepPoint]:
    from .planner import files

    return files.load_sweep(sweep)


def _curve_of(sweep: str, points: list[SweepPoint], slo: Slo) -> Curve:
    """The usable-capacity curve of a sweep's points; what cannot be sized on names the file."""
    from .planner.curve import usable_rps_at_slo

    try:
        return usable_rps_at_slo(points, slo)
    except ValueError as e:
        raise ConfigError(sweep, "", str(e)) from None


def _curve(sweep: str | None, slo: Slo) -> Curve | None:
    return _curve_of(sweep, _sweep_points(sweep), slo) if sweep else None


def _layout_args(args: argparse.Namespace) -> None:
    """--tp/--pp/--ep and the vLLM settings: in range, or a usage error naming the flag."""
    for flag in ("tp", "pp", "ep"):
        v = getattr(args, flag)
        if v is not None and not 1 <= v <= 512:
            raise ValueError(f"--{flag}: expected a whole number from 1 to 512, got {v}")
    if not 0 < args.gpu_memory_utilization <= 1:
        raise ValueError(f"--gpu-memory-utilization: expected a share above 0 and at most 1, got "
                         f"{args.gpu_memory_utilization:g}")
    if not 1 <= args.max_num_batched_tokens <= 10_000_000:
        raise ValueError(f"--max-num-batched-tokens: expected a whole number from 1 to 10,000,000, got "
                         f"{args.max_num_batched_tokens}")


def _plan(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .planner import files
    from .planner.gpus import lookup, merge
    from .planner.render import plan_document, plan_yaml, report_json, report_text
    from .planner.sizing import Engine, Layout, MemoryModel, SmallTier, size, with_observed

    try:
        _layout_args(args)
        if args.workload_from:
            from .planner.observe import derive_to_file

            if args.workload:
                raise ValueError("--workload and --workload-from: give one (the second derives the first)")

            written = derive_to_file(args)
            print(f"wrote {written}", file=sys.stderr)
            if not (args.model and args.gpu):
                return 0
            args.workload = written
        missing = [f for f, v in (("--workload (or --workload-from)", args.workload), ("--model", args.model),
                                  ("--gpu", args.gpu)) if not v]
        if missing:
            print(f"fleetwatch plan: needs {', '.join(missing)}", file=sys.stderr)
            return 2
        wl = files.load_workload(args.workload)
        arch = files.load_architecture(args.model)
        catalogue = files.load_catalogue(args.gpu_catalog) if args.gpu_catalog else merge({})
        if args.from_report:
            _, inputs, outputs, peak = files.observed(args.from_report, args.tier)
            wl = with_observed(wl, inputs, outputs, peak)
        gpu = lookup(args.gpu, catalogue)
        sweep_notes: list[str] = []
        curve = None
        if args.sweep:
            points = _sweep_points(args.sweep)
            sweep_notes = files.sweep_warnings(points, files.model_names(args.model, arch), gpu, catalogue)
            curve = _curve_of(args.sweep, points, wl.slo)
        if args.lora_adapters is not None or args.lora_rank is not None:
            wl = replace(wl, lora_adapters=wl.lora_adapters if args.lora_adapters is None else args.lora_adapters,
                         lora_rank=wl.lora_rank if args.lora_rank is None else args.lora_rank)
            if wl.lora_adapters and wl.lora_rank <= 0:
                if args.lora_rank is not None:
                    raise ValueError(f"--lora-rank {args.lora_rank}: adapters need a rank of at least 1")
                raise ConfigError(args.workload, "lora.rank", "adapters need a rank (--lora-rank)")
        small = None
        if args.small_model:
            small_curve = _curve(args.small_sweep, wl.slo)
            small = SmallTier(files.load_architecture(args.small_model), lookup(args.small_gpu or args.gpu, catalogue),
                              small_curve)
        result = size(wl, arch, gpu, catalogue, weights=args.weights, kv_cache=args.kv_cache, curve=curve,
                      small=small, memory_model=MemoryModel(args.memory_model),
                      layout=Layout(args.tp, args.pp, args.ep),
                      engine=Engine(args.gpu_memory_utilization, args.max_num_batched_tokens),
                      sweep_warnings=tuple(sweep_notes))
    except ConfigError as e:
        print(f"fleetwatch: {e}", file=sys.stderr)
        return 2
    except (KeyError, ValueError) as e:  # the message itself, never the exception's repr of it
        print(f"fleetwatch: {e.args[0] if e.args else type(e).__name__}", file=sys.stderr)
        return 2
    for w in result.warnings:  # on stderr as well, whatever the format: a pipe to a file still shows them
        print(f"fleetwatch: warning: {w}", file=sys.stderr)
    if args.format == "json":
        print(report_json(result, plan_document(result, wl, curve, gpu.hour_usd)))
    elif args.format == "yaml":
        tiers = result.steps["3_routing"].get("tiers") or []
        if len(result.tier_plans) == 2:  # routed: one plan per tier, as YAML documents
            assert small is not None
            for t, plan, share, c, hour in ((tiers[0], result.tier_plans[0], 1 - wl.simple_share, curve, gpu.hour_usd),
                                            (tiers[1], result.tier_plans[1], wl.simple_share, small.curve,
                                             small.gpu.hour_usd)):
                print(f"--- # tier {t['tier']}: {share:.0%} of the traffic ({t['peak_rps']:g} peak RPS)")
                print(plan_yaml(plan, replace(wl, peak_rps=t["peak_rps"], simple_share=0.0), c, hour), end="")
        else:
            print(plan_yaml(result, wl, curve, gpu.hour_usd), end="")
    else:
        print(report_text(result))
    return 0


def _inject(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from .render.inject import SidecarSpec, component, inject_text

    spec = SidecarSpec(image=args.image, tier_label=args.tier_label, config_map=args.config_map,
                       dcgm_url=args.dcgm_url or None, engine_url=args.engine_url)
    if args.component:
        return _write_or_check({Path(args.component) / n: t for n, t in component(spec).items()},
                               "`fleetwatch inject --component` writes", args.check)
    try:
        sys.stdout.write(inject_text(sys.stdin.read(), spec))
    except yaml.YAMLError as e:
        print(f"fleetwatch: inject: the manifests on stdin are not YAML: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


def _countdown(seconds: float) -> None:
    """check's wait between its two scrapes, as one line on stderr that counts down and is then erased."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        sys.stderr.write(f"\rfleetwatch check: first scrape done; the second in {left:4.0f}s ")
        sys.stderr.flush()
        time.sleep(min(1.0, left))
    sys.stderr.write("\r" + " " * 60 + "\r")
    sys.stderr.flush()


def _scenarios() -> "dict[str, Scenario]":
    from .demo.scenarios import SCENARIOS

    return dict(SCENARIOS)


def main(argv: list[str] | None = None) -> int:
    try:
        rc = _main(argv)
        sys.stdout.flush()  # inside the guard: a reader gone by now would fail the flush at exit
        return rc
    except BrokenPipeError:
        # the reader left (`fleetwatch demo | head`): stop quietly with the status of a command killed by
        # SIGPIPE; the rest of stdout goes nowhere, so that the interpreter's last flush has nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _main(argv: list[str] | None) -> int:
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .secrets import redact_logging

    redact_logging()  # no password or token of the config in any log line, whatever logs it
    if args.log_level != "debug":  # the scheduler says "running job" twice a cycle: fleetwatch logs the cycle
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as e:  # every command's bad config, flag or file: one line, exit 2
        print(f"fleetwatch: {e}", file=sys.stderr)
        return 2


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .demo.run import run_demo

    if args.log_level == "info":  # the reports are the output; per-cycle logs would drown them
        logging.getLogger("exporter.daemon").setLevel(logging.WARNING)
    return run_demo(args.scenario, duration=args.duration, fmt=args.format, remeasure=args.remeasure,
                    flavour=args.engine, listen=args.listen,
                    prometheus_config=Path(args.prometheus_config) if args.prometheus_config else None)


def _dashboards(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .render.dashboards import build as dashboards, configmap

    boards = dashboards()
    if args.preview:
        return _preview(args)
    if not args.out:
        print("fleetwatch dashboards: needs -o DIR (or --preview DIR)", file=sys.stderr)
        return 2
    files = {Path(args.out) / n: t for n, t in boards.items()}
    if args.configmap:
        files[Path(args.configmap)] = configmap(boards)
    return _write_or_check(files, "`fleetwatch dashboards` generates", args.check)


def _preview(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from .config import parse_duration
    from .planner.observe import check_url
    from .sources.prometheus_api import PrometheusError

    try:
        check_url(args.prometheus)
        seconds = parse_duration(args.range)
        import matplotlib  # noqa: F401 - said here, not mid-drawing
    except ImportError:
        print("fleetwatch dashboards --preview: needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"fleetwatch dashboards --preview: {e}", file=sys.stderr)
        return 2
    from .render.preview import preview

    try:
        empty = preview(args.prometheus, Path(args.preview), seconds, time.time(), args.bearer_token_file)
    except (PrometheusError, OSError) as e:
        print(f"fleetwatch dashboards --preview: {redact_url(args.prometheus)}: {e}", file=sys.stderr)
        return 2
    for png, titles in empty.items():
        print(f"wrote {Path(args.preview) / png}" + (f" ({len(titles)} panels without data: {', '.join(titles)})"
                                                     if titles else ""))
    return 0


def _validate_config(args: argparse.Namespace) -> int:
    from .evaluate import plan_shortfall
    from .text import plural

    cfg = load_config(args.file)
    n = sum(len(t.targets) for t in cfg.tiers.values())
    found = [f"{name} by DNS" for name, t in cfg.tiers.items() if t.discover is not None]
    if cfg.kubernetes is not None:
        found.append(f"the rest from the Kubernetes API ({cfg.kubernetes.namespace}/{cfg.kubernetes.service})"
                     if n or found else f"from the Kubernetes API ({cfg.kubernetes.namespace}/"
                                        f"{cfg.kubernetes.service})")
    read = (f"read from prometheus {redact_url(cfg.prometheus.url)}" if cfg.prometheus is not None
            else "no targets: a config for sidecars (serve --tier)" if not n and not found
            else ", ".join(([plural(n, "target") + " listed"] if n else [])
                           + (["instances found at run time: " + "; ".join(found)] if found else [])))
    for name, tier in cfg.tiers.items():  # valid, but a plan that contradicts itself is worth a word
        short = plan_shortfall(tier)
        if short is not None:
            where = f"{tier.plan_file}: instances" if tier.plan_file else f"{args.file}: tiers.{name}.plan.instances"
            print(f"fleetwatch: warning: {where}: {short}", file=sys.stderr)
    print(f"{args.file}: ok ({plural(len(cfg.tiers), 'tier')}, {read})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .lifecycle import serve
    from .state import StateLocked

    cfg = _serve_config(load_config(args.config), args)
    if args.listen:
        bad = validate_listen(args.listen)
        if bad:
            print(f"fleetwatch: --listen: {bad}", file=sys.stderr)
            return 2
        cfg = replace(cfg, listen=args.listen)
    watch = bool(args.watch)
    if watch:
        from .live import wanted

        if not wanted(sys.stdout, "table"):
            print("fleetwatch: --watch needs a terminal on stdout (not a pipe, not TERM=dumb)", file=sys.stderr)
            return 2
        logging.getLogger().setLevel(max(logging.WARNING, logging.getLogger().level))
    from .daemon import collect_garbage_rarely

    collect_garbage_rarely()  # this process runs cycles until it is stopped
    try:
        return serve(cfg, watch=watch)
    except StateLocked as e:
        print(f"fleetwatch: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the listen address is taken or not ours: a usage error, not a crash
        print(f"fleetwatch: cannot listen on {cfg.listen}: {e.strerror or e}", file=sys.stderr)
        return 2


def _rules_command(args: argparse.Namespace) -> int:
    return _rules(load_config(args.config), args)


def _check(args: argparse.Namespace) -> int:
    from .check import format_json, format_table, run_check
    from .sources.prometheus_api import PrometheusError

    cfg = load_config(args.config)
    require_targets(cfg)
    from .daemon import collect_garbage_rarely

    collect_garbage_rarely()  # two scrapes of every target and an evaluation: as serve's cycle
    window = args.window if args.window is not None else (cfg.window if cfg.prometheus else 15.0)
    sleep: Callable[[float], None] = time.sleep
    if cfg.prometheus is None and sys.stderr.isatty() and os.environ.get("TERM", "") != "dumb":
        sleep = _countdown  # a terminal sees the wait, not a silent pause
    try:
        report = run_check(cfg, window, sleep=sleep)
    except PrometheusError as e:  # nothing to report on: said in one line, as a failed check
        print(f"fleetwatch: cannot read the fleet from prometheus: {e.reason}: {e}", file=sys.stderr)
        return 1
    try:
        text = format_json(report) if args.format == "json" else format_table(report)
    except ValueError as e:  # a number JSON cannot carry: a bug, said in one line, never half a document
        print(f"fleetwatch: cannot write the report: {e}", file=sys.stderr)
        return 2
    print(text)
    return 1 if report.critical else 0


def _backtest(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .backtest import backtest, format_json, format_table, parse_time
    from .config import load_plan
    from .model import Plan, PrometheusSource
    from .planner.observe import check_url
    from .sources.prometheus_api import PrometheusApi, PrometheusError

    cfg = load_config(args.config)
    if args.prometheus:
        try:
            check_url(args.prometheus)
        except ValueError as e:
            print(f"fleetwatch backtest: --prometheus: {e}", file=sys.stderr)
            return 2
        source = cfg.prometheus or PrometheusSource(args.prometheus)
        cfg = replace(cfg, prometheus=replace(source, url=args.prometheus.rstrip("/")))
    if cfg.prometheus is None:
        raise ConfigError(cfg.path, "source", "backtest reads the fleet's history from Prometheus: set "
                                              "source.prometheus in the config, or pass --prometheus URL")
    now = time.time()
    try:
        start, end = parse_time(args.start, now), parse_time(args.end, now)
    except ValueError as e:
        print(f"fleetwatch backtest: --from/--to: {e}", file=sys.stderr)
        return 2
    if end <= start:
        print("fleetwatch backtest: --to must be after --from", file=sys.stderr)
        return 2
    from .backtest import cycle_times

    try:
        cycle_times(start, end, args.step)
    except ValueError as e:
        print(f"fleetwatch backtest: --step: {e}", file=sys.stderr)
        return 2
    alternatives: dict[str, dict[str, Plan]] = {}
    for item in args.plan:
        tier, sep, file = item.partition("=")
        if not sep or not file:
            print(f"fleetwatch backtest: --plan {item!r}: expected TIER=FILE", file=sys.stderr)
            return 2
        if tier not in cfg.tiers:
            print(f"fleetwatch backtest: --plan {item!r}: the config has no tier {tier!r} (it has "
                  f"{', '.join(cfg.tiers)})", file=sys.stderr)
            return 2
        alternatives.setdefault(tier, {})[os.path.basename(file)] = load_plan(file)
    rules, recorded, route = _backtest_alerting(cfg, args)
    if args.report:
        try:
            import matplotlib  # noqa: F401 - said before the replay, not after it
        except ImportError:
            print("fleetwatch backtest --report: needs matplotlib (pip install matplotlib)", file=sys.stderr)
            return 2
        try:  # a directory it cannot write is said now, not after the replay
            os.makedirs(args.report, exist_ok=True)
            probe = os.path.join(args.report, ".fleetwatch-write-test")
            with open(probe, "w", encoding="utf-8"):
                pass
            os.unlink(probe)
        except OSError as e:
            print(f"fleetwatch backtest --report: cannot write to {args.report}: {e.strerror or e}", file=sys.stderr)
            return 2
    verify: bool | str = cfg.ca_file if (cfg.tls_verify and cfg.ca_file) else cfg.tls_verify
    # a week of a large fleet in one range query takes Prometheus a while; each is still bounded
    api = PrometheusApi(cfg.prometheus, timeout=RANGE_QUERY_TIMEOUT, max_bytes=RANGE_QUERY_MAX_BYTES, verify=verify)
    progress = _progress_bar("replaying") if sys.stderr.isatty() and os.environ.get("TERM", "") != "dumb" else None
    try:
        result = backtest(cfg, api.query_range, start, end, args.step, alternatives=alternatives, rules=rules,
                          recorded=recorded, route=route, flap=args.flapping, progress=progress)
    except PrometheusError as e:
        print(f"fleetwatch backtest: cannot read the history from prometheus: {e.reason}: {e}", file=sys.stderr)
        return 1
    finally:
        api.close()
    sys.stdout.write(format_json(result) if args.format == "json" else format_table(result))
    if args.report:
        from pathlib import Path

        from .render.report import write_report

        try:
            index = write_report(result, cfg, Path(args.report))
        except OSError as e:
            print(f"fleetwatch backtest --report: cannot write the report: {e.strerror or e}", file=sys.stderr)
            return 1
        print(f"fleetwatch backtest: report written to {index}", file=sys.stderr)
    return 0


def _backtest_alerting(cfg: "Config", args: argparse.Namespace
                       ) -> tuple[list["AlertRule"], dict[str, str], "Route | None"]:
    """The alerting rules to replay, the series their recording rules write, and Alertmanager's root route, from
    the files named (ConfigError if bad)."""
    from .alertreplay import alert_rules, recordings, route_from
    from .config import load_yaml
    from .render.rules import rule_groups

    if args.no_alerts:
        return [], {}, None
    if args.rules:
        doc = load_yaml(args.rules, "rules")
        if isinstance(doc, dict) and doc.get("kind") == "PrometheusRule":
            doc = doc.get("spec")
        if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list):
            raise ConfigError(args.rules, "groups", "expected a Prometheus rule file (groups: [...])")
    else:
        doc = {"groups": rule_groups(cfg)}
    try:
        rules, recorded = alert_rules(doc, cfg.interval), recordings(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError(args.rules or cfg.path, "groups", f"not a valid rule file: {e}") from None
    route = None
    if args.alertmanager_config:
        am = load_yaml(args.alertmanager_config, "Alertmanager config")
        if not isinstance(am, dict) or not isinstance(am.get("route"), dict):
            raise ConfigError(args.alertmanager_config, "route", "no route: is this an Alertmanager config?")
        try:
            route = route_from(am if isinstance(am, dict) else None)
        except (TypeError, ValueError) as e:
            raise ConfigError(args.alertmanager_config, "route", f"not a valid route: {e}") from None
    return rules, recorded, route


RANGE_QUERY_TIMEOUT = 120.0  # seconds, per range query
RANGE_QUERY_MAX_BYTES = 256 * 1024 * 1024  # a week at 5m of per-instance series of a large fleet


def _progress_bar(what: str) -> Callable[[int, int], None]:
    """A one-line progress bar on stderr (a terminal only), redrawn at most every percent."""
    shown = [-1]

    def draw(done: int, total: int) -> None:
        pct = 100 * done // max(1, total)
        if pct == shown[0] and done != total:
            return
        shown[0] = pct
        bar = "#" * (pct * 30 // 100)
        sys.stderr.write(f"\r{what} [{bar:<30}] {pct:3d}% ({done:,} of {total:,} steps)")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return draw


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": _serve, "check": _check, "validate-config": _validate_config, "rules": _rules_command,
    "dashboards": _dashboards, "plan": _plan, "demo": _demo, "inject": _inject, "backtest": _backtest,
}

if __name__ == "__main__":
    sys.exit(main())
