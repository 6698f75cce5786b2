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

from .evaluate import HistoryPoint

FILE_NAME = "fleetwatch-state.json"
VERSION = 1
MAX_BYTES = 64 * 1024 * 1024  # a week of 15 s points for dozens of tiers fits many times over


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


def decode(text: str) -> dict[str, list[HistoryPoint]]:
    """The history in ``text``, or StateError: every field is checked, nothing is trusted."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise StateError("corrupt", f"not JSON: {str(e)[:80]}") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("tiers"), dict):
        raise StateError("corrupt", f"not a version {VERSION} fleetwatch state")
    out: dict[str, list[HistoryPoint]] = {}
    for name, points in doc["tiers"].items():
        if not isinstance(points, list):
            raise StateError("corrupt", f"tier {str(name)[:40]!r}: expected a list of points")
        hist: list[HistoryPoint] = []
        for p in points:
            if (not isinstance(p, list) or len(p) != 3 or not _finite(p[0])
                    or not (p[1] is None or (_finite(p[1]) and p[1] >= 0))
                    or not (p[2] is None or (isinstance(p[2], int) and not isinstance(p[2], bool) and p[2] >= 0))):
                raise StateError("corrupt", f"tier {str(name)[:40]!r}: a point is not [time, rps, recommended]")
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
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise StateError("too_large", f"{size} bytes, more than the {MAX_BYTES} byte cap")
        text = path.read_text(encoding="utf-8")
        history = decode(text)
    except FileNotFoundError:
        return Loaded(empty)
    except UnicodeDecodeError:
        return _aside(path, empty, StateError("corrupt", "not UTF-8 text"), now)
    except StateError as e:
        return _aside(path, empty, e, now)
    except OSError as e:
        return Loaded(empty, None, StateError("unreadable", f"cannot read {path}: {e.strerror}"))
    return Loaded({t: history.get(t, []) for t in tiers})


def _aside(path: Path, empty: dict[str, list[HistoryPoint]], error: StateError, now: float | None) -> Loaded:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, target)
    except OSError:
        return Loaded(empty, None, error)
    return Loaded(empty, str(target), error)
