"""Sidecar mode: ``serve --tier NAME`` beside one engine, in its pod.

Pure: turns the shared config (plans for every tier, usually one ConfigMap) into the config of one
sidecar: the named tier only, with one target, the engine on localhost, and its own GPUs. Those
come from NVML, or from the node's dcgm-exporter filtered by this pod's name and namespace (the
downward API's POD_NAME and POD_NAMESPACE), since a node-wide exporter also lists other pods' GPUs.
The fleet verdicts (instances up, observed peak, recommended count) then come from the generated
rules in Prometheus, which see every sidecar.
"""
from __future__ import annotations

from dataclasses import replace
import re

from .config import ConfigError, Reader, default_name
from .engines import engine, engine_names, in_words
from .secrets import REDACT
from .model import Config, GpuSelector, Mode, SidecarSettings, Target



def default_url(engine_name: str) -> str:
    """Where a sidecar finds its engine: the engine's default port on localhost."""
    return f"http://127.0.0.1:{engine(engine_name).default_port}/metrics"


def merge(base: SidecarSettings, flags: SidecarSettings) -> SidecarSettings:
    """Flags (and their environment variables) win over the config's ``sidecar:`` block."""
    return SidecarSettings(**{k: getattr(flags, k) if getattr(flags, k) is not None else getattr(base, k)
                              for k in SidecarSettings.__dataclass_fields__})


def sidecar_config(config: Config, tier: str, flags: SidecarSettings | None = None,
                   pod: str | None = None, namespace: str | None = None) -> Config:
    """The config of one sidecar. Raises ConfigError naming what is wrong."""
    flags = flags or SidecarSettings()
    if tier not in config.tiers:
        raise ConfigError(config.path, "tiers", f"has no tier {tier!r} (asked for by --tier or FLEETWATCH_TIER); "
                                                f"it has {', '.join(sorted(config.tiers))}")
    s = merge(config.sidecar, flags)
    if s.dcgm and s.nvml:
        raise ConfigError(config.path, "sidecar", "dcgm and nvml both set (flags included): a sidecar reads its "
                                                  "GPUs from one of them")
    engine_name = s.engine or engine_names()[0]
    if engine_name not in engine_names():
        raise ConfigError(config.path, "sidecar.engine", f"expected {in_words()}, got {engine_name[:40]!r}")
    c = Reader(config.path)
    url = c.url(s.url or default_url(engine_name), "sidecar.url")  # as the config's: port, host, no spaces
    if s.dcgm is not None:
        c.url(s.dcgm, "sidecar.dcgm")
    REDACT.learn_urls(u for u in (url, s.dcgm) if u)
    if s.dcgm_bearer_token_file and not s.dcgm:
        raise ConfigError(config.path, "sidecar.dcgm_bearer_token_file", "set without a dcgm URL")
    # a node-wide dcgm-exporter lists every pod's GPUs: keep this pod's. Without the downward API
    # there is no pod to select by: an exporter with pod labels gives none (never another pod's),
    # one without gives all (as in fleet mode)
    selector = GpuSelector(pod=pod, namespace=namespace) if s.dcgm and pod else None
    target = Target(name=pod or default_name(url), engine=engine_name, url=url, dcgm=s.dcgm, nvml=bool(s.nvml),
                    gpus=selector, bearer_token_file=s.bearer_token_file,
                    dcgm_bearer_token_file=s.dcgm_bearer_token_file)
    # one engine on localhost: no discovery (the shared config may carry fleet mode's), and no history on
    # disk (a sidecar's root filesystem is read-only, and the fleet verdicts that need it are the rules')
    return replace(config, mode=Mode.SIDECAR, kubernetes=None, state_dir=None,
                   tiers={tier: replace(config.tiers[tier], targets=(target,), discover=None)})


# what the downward API and the pod spec hand a sidecar: each value becomes a label and a log field
_KUBERNETES_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
ENVIRONMENT_NAMES = {"POD_NAME": "a pod name", "POD_NAMESPACE": "a namespace"}


def environment_value(name: str, value: str | None) -> str | None:
    """``value`` of the environment variable or flag ``name``, checked as the config's values are: UTF-8, one
    line, and for a pod or namespace a Kubernetes name (it becomes the instance label). ConfigError otherwise;
    the message never echoes the value."""
    if value is None or value == "":
        return None
    source = "environment" if name.isupper() else "command line"  # a flag's value may come from FLEETWATCH_*
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(source, name, "not UTF-8 text") from None
    if any(ch < " " or ch == "\x7f" for ch in value):
        raise ConfigError(source, name, "holds a line break or another control character: one line only")
    if len(value) > 1024:
        raise ConfigError(source, name, f"{len(value)} characters; at most 1024")
    if name in ENVIRONMENT_NAMES and not _KUBERNETES_NAME.fullmatch(value):
        raise ConfigError(source, name, f"expected {ENVIRONMENT_NAMES[name]}: lower-case letters, digits, '-' and '.', "
                                        f"at most 253 characters")
    return value
