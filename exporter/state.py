"""The per-tier history, kept across restarts in one small JSON file under ``state_dir``.

A monitor that forgets its observed peak on every redeploy recommends scaling down at the worst
moment, so ``serve`` loads this file at start and rewrites it as it goes. Writes are atomic
(temporary file, fsync, rename, fsync of the folder): a crash leaves the old file or the new
one, never half of one. A file that cannot be read as a state is moved aside, reported once,
and the daemon starts with an empty history.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .config import MAX_RPS  # a point beyond it would pin the peak, and the count, forever
from .evaluate import HistoryPoint
from .files import ConfigError, loads_json, one_line, read_text

FILE_NAME = "fleetwatch-state.json"
VERSION = 1
MAX_BYTES = 64 * 1024 * 1024  # a week of 15 s points for dozens of tiers fits many times over
MAX_INSTANCES = 1_000_000
MAX_SKEW = 3600.0  # seconds a saved point may lie ahead of this clock (clocks of two hosts disagree)
LOCK_NAME = "fleetwatch.lock"


class StateError(Exception):
    """The state file exists but is not a fleetwatch state. ``reason`` labels the error counter."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class Loaded:
    history: dict[str, list[HistoryPoint]]
    moved_to: str | None = None  # where a corrupt file was put aside
    error: StateError | None = None


def encode(history: Mapping[str, Sequence[HistoryPoint]], saved_at: float) -> str:
    tiers = {name: [[round(h.timestamp, 3), h.rps, h.recommended] for h in points]
             for name, points in history.items()}
    return json.dumps({"version": VERSION, "saved_at": saved_at, "tiers": tiers}, allow_nan=False,
                      separators=(",", ":"))


def decode(text: str, now: float | None = None) -> dict[str, list[HistoryPoint]]:
    """The history in ``text``, or StateError: every field is checked, nothing is trusted. With ``now``, a
    point from the future (beyond a clock's skew) is refused too."""
    try:
        doc = loads_json(text, FILE_NAME)
    except ConfigError as e:
        raise StateError("corrupt", e.reason[:100]) from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("tiers"), dict):
        raise StateError("corrupt", f"not a version {VERSION} fleetwatch state")
    out: dict[str, list[HistoryPoint]] = {}
    for name, points in doc["tiers"].items():
        if not isinstance(points, list):
            raise StateError("corrupt", f"tier {str(name)[:40]!r}: expected a list of points")
        hist: list[HistoryPoint] = []
        for p in points:
            if (not isinstance(p, list) or len(p) != 3 or not _finite(p[0]) or p[0] < 0
                    or not (p[1] is None or (_finite(p[1]) and 0 <= p[1] <= MAX_RPS))
                    or not (p[2] is None or (isinstance(p[2], int) and not isinstance(p[2], bool)
                                             and 0 <= p[2] <= MAX_INSTANCES))):
                raise StateError("corrupt", f"tier {str(name)[:40]!r}: a point is not [time, rps, recommended] "
                                            f"within range (rps up to {MAX_RPS:.0e}, instances up to {MAX_INSTANCES:,})")
            if now is not None and p[0] > now + MAX_SKEW:
                raise StateError("corrupt", f"tier {str(name)[:40]!r}: a point from the future "
                                            f"({p[0] - now:.0f} s ahead of the clock)")
            hist.append(HistoryPoint(float(p[0]), None if p[1] is None else float(p[1]), p[2]))
        hist.sort(key=lambda h: h.timestamp)
        out[str(name)] = hist
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def save(state_dir: str, history: Mapping[str, Sequence[HistoryPoint]], saved_at: float) -> None:
    """Write the state atomically. Raises OSError (the caller counts and logs it)."""
    folder = Path(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    data = encode(history, saved_at).encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=".fleetwatch-state-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / FILE_NAME)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # the rename itself survives a crash only once the folder is synced
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass  # some filesystems cannot fsync a folder; the file itself is synced


def load(state_dir: str, tiers: Sequence[str], now: float | None = None) -> Loaded:
    """The saved history of ``tiers`` (others are dropped). A missing file is an empty history; an
    unreadable or corrupt one is moved aside (``moved_to``) and reported in ``error``."""
    path = Path(state_dir) / FILE_NAME
    empty: dict[str, list[HistoryPoint]] = {t: [] for t in tiers}
    if not os.path.lexists(path):
        return Loaded(empty)
    try:
        # a regular file only (a FIFO would hang the start, /dev/zero stream without end), to a hard cap
        text = read_text(str(path), MAX_BYTES, "state file")
    except ConfigError as e:
        if "cannot open" in e.reason or "cannot read" in e.reason:
            return Loaded(empty, None, StateError("unreadable", f"cannot read {path}: {e.reason}"))
        return _aside(path, empty, StateError("too_large" if "byte limit" in e.reason else "corrupt", e.reason), now)
    try:
        history = decode(text, now)
    except StateError as e:
        return _aside(path, empty, e, now)
    except Exception as e:  # noqa: BLE001 - whatever breaks on a bad file, the daemon must start without it
        return _aside(path, empty, StateError("corrupt", f"{type(e).__name__}: {str(e)[:80]}"), now)
    return Loaded({t: history.get(t, []) for t in tiers})


class StateLocked(Exception):
    """Another fleetwatch holds ``state_dir``: two writers would overwrite each other's history."""


@dataclass
class Lock:
    fd: int
    path: str

    def release(self) -> None:
        try:
            os.close(self.fd)  # closing the descriptor drops the flock
        except OSError:
            pass


def lock(state_dir: str, holder: str) -> Lock:
    """An exclusive lock on ``state_dir`` for this process, or StateLocked naming who holds it. The lock is
    the kernel's (flock): it goes with the process, so a crash never leaves it behind."""
    import fcntl

    folder = Path(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            said = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
        finally:
            os.close(fd)
        raise StateLocked(f"{state_dir} is in use by {one_line(said)}: one fleetwatch per state_dir "
                          f"(give each daemon its own)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.encode("utf-8", "replace")[:200], 0)
    return Lock(fd, str(path))


def _aside(path: Path, empty: dict[str, list[HistoryPoint]], error: StateError, now: float | None) -> Loaded:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, target)
    except OSError:
        return Loaded(empty, None, error)
    return Loaded(empty, str(target), error)
