"""``fleetwatch demo``: the simulated fleet, the daemon against it, a report every interval.

The fleet is served on free loopback ports and written into an ordinary fleet config (printed, so
it can be reused with ``serve`` or ``check``); the daemon's pipeline scrapes it over HTTP exactly as
it scrapes a real fleet. ``Clock`` decides how time passes: ``WallClock`` for people,
``SimClock`` for tests, which run minutes of traffic in seconds.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Protocol, TextIO

import yaml

from ..check import format_json, format_table
from ..collector import Snapshot
from ..config import load_config
from ..model import Config
from ..daemon import Pipeline
from ..lifecycle import ONE_SHOT, Daemon, Parts
from ..live import LiveView, wanted
from ..model import Report
from ..scrape import Scraper
from .fleet import DEFAULT_TIERS, FleetServers, SimFleet
from .flavours import DEFAULT_FLAVOUR, FLAVOURS
from .scenarios import SCENARIOS, Scenario
from .sweep import PLANS_DIR, measure_all, write_plans

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 5.0
WINDOW_SECONDS = 30.0
WARMUP_SECONDS = 30.0  # simulated before the run starts, so the first window sees steady traffic


class Clock(Protocol):
    def now(self) -> float: ...

    def wait_until(self, run_t: float) -> bool:
        """Let the fleet reach run time ``run_t``; False when the run was stopped meanwhile."""
        ...


class SimClock:
    """Simulated time only: ``wait_until`` advances the fleet at once. For tests and benchmarks."""

    def __init__(self, fleet: SimFleet) -> None:
        self.fleet = fleet

    def now(self) -> float:
        return self.fleet.t

    def wait_until(self, run_t: float) -> bool:
        self.fleet.advance(self.fleet.start + run_t)
        return True


class WallClock:
    """Real time: a thread keeps the fleet at wall-clock time; ``wait_until`` sleeps."""

    def __init__(self, fleet: SimFleet, stop: threading.Event, tick: float = 0.05) -> None:
        self.fleet, self.stop, self.tick = fleet, stop, tick
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="sim", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.tick):
            self.fleet.advance(self.fleet.start + time.monotonic() - self.t0)

    def now(self) -> float:
        return time.time()

    def wait_until(self, run_t: float) -> bool:
        return not self.stop.wait(max(0.0, self.t0 + run_t - time.monotonic()))


@dataclass
class Demo:
    """A running simulated fleet and the fleet config that points at it."""

    fleet: SimFleet
    servers: FleetServers
    config: Config
    config_path: Path
    workdir: tempfile.TemporaryDirectory[str]

    def close(self) -> None:
        self.servers.close()
        self.workdir.cleanup()

    def scrape_targets(self) -> dict[str, list[dict[str, Any]]]:
        """The static targets a Prometheus scrapes this fleet with, by job: each engine with its tier, and the
        namespace and pod a Kubernetes scrape would give it (the simulated dcgm-exporters label each GPU with the
        pod that holds it, and the GPU rows join the two on namespace and pod); each dcgm-exporter with its tier."""
        from urllib.parse import urlparse

        engines: list[dict[str, Any]] = []
        dcgm: list[dict[str, Any]] = []
        for name, tier in self.config.tiers.items():
            for inst, t in zip(self.fleet.tiers[name].instances, tier.targets):
                engines.append({"targets": [urlparse(t.url).netloc],
                                "labels": {"tier": name, "namespace": "llm", "pod": inst.pod}})
            dcgm.append({"targets": sorted({urlparse(t.dcgm).netloc for t in tier.targets if t.dcgm}),
                         "labels": {"tier": name}})
        return {"llm-engines": engines, "dcgm": dcgm}

    def prometheus_config(self, fleetwatch: str) -> str:
        """A Prometheus config scraping this fleet and fleetwatch's /metrics at ``fleetwatch`` (host:port)."""
        jobs: list[dict[str, Any]] = [{"job_name": job, "static_configs": static}
                                      for job, static in self.scrape_targets().items()]
        jobs.append({"job_name": "fleetwatch", "honor_labels": True, "static_configs": [{"targets": [fleetwatch]}]})
        doc = {"global": {"scrape_interval": f"{INTERVAL_SECONDS:g}s", "evaluation_interval": f"{INTERVAL_SECONDS:g}s"},
               "scrape_configs": jobs}
        return ("# The demo fleet, for a Prometheus beside `fleetwatch demo`: its ports change every run.\n"
                + yaml.safe_dump(doc, sort_keys=False))


def start_fleet(scenario: str | Scenario = "healthy", *, flavour: str = DEFAULT_FLAVOUR, seed: int = 0,
                plans: dict[str, Path] | None = None, warmup: float = WARMUP_SECONDS,
                listen: str = "127.0.0.1:0", interval: float = INTERVAL_SECONDS, window: float = WINDOW_SECONDS,
                alertmanagers: tuple[str, ...] = ()) -> Demo:
    """Build the fleet for ``scenario``, warm it up, serve it, and write its config."""
    sc = SCENARIOS[scenario] if isinstance(scenario, str) else scenario
    workdir = tempfile.TemporaryDirectory(prefix="fleetwatch-demo-")
    plans = plans or {spec.name: PLANS_DIR / f"{spec.name}.yaml" for spec in DEFAULT_TIERS}
    usable = {}
    for spec in DEFAULT_TIERS:
        with open(plans[spec.name], encoding="utf-8") as fh:
            usable[spec.name] = float(yaml.safe_load(fh)["benchmark"]["usable_rps_per_instance"])
    fleet = SimFleet({spec.name: (spec, sc.behaviour(spec.name), usable[spec.name]) for spec in DEFAULT_TIERS},
                     seed=seed, flavour=flavour, warmup=warmup)
    fleet.advance(0.0)
    servers = FleetServers(fleet)
    engine_key = FLAVOURS[flavour].engine
    tiers: dict[str, object] = {}
    for spec in DEFAULT_TIERS:
        targets = []
        for inst in fleet.tiers[spec.name].instances:
            targets.append({"name": inst.name, engine_key: servers.engines[(spec.name, inst.index)].url,
                            "dcgm": servers.dcgm[inst.node].url,
                            "gpus": {"indices": [str(g) for g in inst.gpu_indices]}})
        tiers[spec.name] = {"plan": str(plans[spec.name]), "targets": targets}
    doc: dict[str, object] = {"interval": f"{interval:g}s", "window": f"{window:g}s",
                              "scrape_timeout": f"{min(2.0, interval * 0.8):g}s", "listen": listen, "tiers": tiers}
    if alertmanagers:
        doc["alertmanagers"] = list(alertmanagers)
    path = Path(workdir.name) / "fleet.yaml"
    path.write_text(f"# fleetwatch demo, scenario {sc.name}: {sc.what_happens}\n"
                    + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return Demo(fleet, servers, load_config(str(path)), path, workdir)


SEEDED_DAYS = 3  # of history before the demo starts: the load profile and the levers show at once
SEEDED_STEP = 300.0  # seconds between seeded points: coarser than a cycle, so a scale-down still waits for
# a stabilization window observed live (the history counts as observed only without gaps over a minute)


def seed_history(pipeline: Pipeline, fleet: SimFleet, now: float, days: int = SEEDED_DAYS) -> None:
    """SEEDED_DAYS of UTC days before ``now``, each the scenario's compressed day stretched to 24 h: the
    arrival rate every tier's behaviour gives, and what each cycle would have recommended."""
    from ..evaluate import replay_history
    from .scenarios import DAY_SECONDS

    for name, tier in fleet.tiers.items():
        points = []
        t = now - days * 86400.0
        while t < now:
            run_t = ((t - now) % 86400.0) / 86400.0 * DAY_SECONDS  # the run's own day, stretched
            points.append((t, tier.rate(run_t)))
            t += SEEDED_STEP
        pipeline.history.extend(name, replay_history(pipeline.config.tiers[name].plan, points))
    pipeline.history.seeded = (f"{days} simulated days before the demo started (the scenario's compressed day "
                               f"stretched to 24 h), so that the schedule and the levers show")


DEMO = Parts(http=True, notify=False, lock=False, persist=False, local_gpus=False)  # /metrics on the demo's own port


def reports(demo: Demo, clock: Clock, duration: float | None, snapshot: Snapshot | None = None, *,
            parts: Parts = ONE_SHOT, on_start: Callable[[Daemon], None] | None = None
            ) -> Generator[tuple[float, Report], None, None]:
    """One (run seconds, report) per interval until ``duration`` or a stop. ``on_start``: called once the
    daemon's parts are up (its HTTP server listening), before the first cycle."""
    scraper = Scraper(demo.config, clock=clock.now)
    with Daemon(demo.config, parts, scraper=scraper, clock=clock.now, snapshot=snapshot) as daemon:
        pipeline = daemon.pipeline
        if on_start is not None:
            on_start(daemon)
        seed_history(pipeline, demo.fleet, clock.now())
        run_t = 0.0
        while True:
            yield run_t, pipeline.cycle()
            run_t += INTERVAL_SECONDS
            if duration is not None and run_t > duration + 1e-9:
                return
            if not clock.wait_until(run_t):
                return


def run_demo(scenario: str = "healthy", *, duration: float | None = None, fmt: str = "table",
             remeasure: bool = False, flavour: str = DEFAULT_FLAVOUR, listen: str = "127.0.0.1:0",
             out: TextIO = sys.stdout, stop: threading.Event | None = None,
             on_ready: Callable[[str], None] | None = None, prometheus_config: Path | None = None) -> int:
    """The command. Returns the exit status (0, also on Ctrl-C). ``prometheus_config``: where to write a
    Prometheus config that scrapes the demo (``--prometheus-config``)."""
    stop = stop or threading.Event()
    plans = None
    plans_dir: tempfile.TemporaryDirectory[str] | None = None
    if remeasure:
        log.info("re-running the simulator's load sweep for every tier (about 45 s)")
        plans_dir = tempfile.TemporaryDirectory(prefix="fleetwatch-plans-")
        plans = write_plans(Path(plans_dir.name), measure_all())
        log.info("measured plans written to %s (removed when the demo ends)", plans_dir.name)
    demo = start_fleet(scenario, flavour=flavour, plans=plans, listen=listen)
    sc = SCENARIOS[scenario]
    screen = contextlib.ExitStack()  # the live view, entered after the banner

    def started(daemon: Daemon) -> None:
        assert daemon.server is not None
        url = f"http://{demo.config.listen_host}:{daemon.server.port}/metrics"
        scraped = ""
        if prometheus_config is not None:
            prometheus_config.write_text(demo.prometheus_config(f"{demo.config.listen_host}:{daemon.server.port}"))
            scraped = f"\n  a Prometheus config that scrapes it all: {prometheus_config}"
        # what is running, before the first report: on stdout with the reports, except beside JSON lines,
        # which a program reads one document at a time
        print(f"fleetwatch demo: scenario {scenario}: {sc.what_happens}.\n"
              f"  fleetwatch should catch: {sc.must_catch}.\n"
              f"  fleet config: {demo.config_path}\n  fleetwatch /metrics: {url}{scraped}\n"
              f"  a report every {INTERVAL_SECONDS:g}s over a {WINDOW_SECONDS:g}s window; Ctrl-C to stop.",
              file=sys.stderr if fmt == "json" else out, flush=True)
        if on_ready is not None:
            on_ready(url)
        if wanted(out, fmt):  # a terminal: one screen redrawn in place; pipes and files get the plain reports
            live.append(screen.enter_context(LiveView(f"fleetwatch demo: scenario {scenario}", out)))

    clock = WallClock(demo.fleet, stop)
    # SIGTERM, and SIGHUP (its terminal closed), end the demo as Ctrl-C does: its temporary folder goes too
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGHUP)} \
        if _main_thread() else {}
    live: list[LiveView] = []
    try:
        with contextlib.closing(reports(demo, clock, duration, parts=DEMO, on_start=started)) as cycles:
            for run_t, report in cycles:
                if live:
                    live[0].update(report, f"  t={run_t:.0f}s  (Ctrl-C to stop)")
                elif fmt == "json":
                    print(format_json(report), file=out, flush=True)
                else:
                    print(f"--- t={run_t:.0f}s scenario={scenario} ---\n{format_table(report)}\n", file=out, flush=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a demo ends
    finally:
        screen.close()
        stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        demo.close()
        if plans_dir is not None:
            plans_dir.cleanup()
    return 0


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
