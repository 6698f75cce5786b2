"""Every file fleetwatch reads is a hostile input: the config and its plans, the state, and what
`fleetwatch plan` reads (the workload, a model's config.json, the GPU catalogue, a sweep, a report).

One reader for all of them: a regular file only (never a FIFO, a device or a directory, which could
hang the start or stream without end), opened without blocking and checked after opening, read to a
hard byte cap (not a size from stat(), which /dev/zero or a growing file defeats), and UTF-8 text
without NUL bytes. JSON is parsed only below a nesting depth, with integers of bounded length and no
NaN or Infinity. Every failure is a ConfigError: the file, where in it, and why, on one line.
"""
from __future__ import annotations

import json
import math
import os
import stat
from typing import Any

MAX_JSON_DEPTH = 64  # the deepest real input (a sweep's result file) nests 4 levels
MAX_DIGITS = 40  # an integer longer than this is no count fleetwatch uses (float() would lose it anyway)


class ConfigError(Exception):
    """A file fleetwatch cannot use: the file, ``path`` in it (a key path, a line) and ``reason``, one line."""

    def __init__(self, file: str, path: str, reason: str) -> None:
        file, path, reason = one_line(file), one_line(path), one_line(reason)
        self.file, self.path, self.reason = file, path, reason
        super().__init__(f"{file}: {path}: {reason}" if path else f"{file}: {reason}")


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters written as escapes: a message stays one
    line whatever a file's keys or values hold."""
    return "".join(ch if ch >= " " and ch != "\x7f" else ch.encode("unicode_escape").decode() for ch in text)


def read_text(file: str, max_bytes: int, what: str = "file") -> str:
    """The file's text, or ConfigError: not a regular file, over ``max_bytes``, not UTF-8, or with a NUL byte."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise ConfigError(file, "", "file not found") from None
    except IsADirectoryError:
        raise ConfigError(file, "", "is a directory, not a file") from None
    except OSError as e:
        raise ConfigError(file, "", f"cannot open: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(file, "", "is a directory, not a file")
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) \
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
            raise ConfigError(file, "", f"is {kind}, not a regular file: a {what} must be a file")
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise ConfigError(file, "", f"cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    if size > max_bytes:
        raise ConfigError(file, "", f"more than the {max_bytes} byte limit for a {what}")
    raw = b"".join(chunks)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(file, "", f"not UTF-8 text (at byte offset {e.start}); is it a binary file?") from None
    if "\x00" in text:
        raise ConfigError(file, "", f"holds a NUL byte (at {text.index(chr(0))}): not a text file")
    return text


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects, strings skipped: checked before json.loads, which recurses."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def _float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"the number {text[:20]} is out of range")
    return v


def _constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def loads_json(text: str, file: str) -> Any:
    """JSON with a depth limit, bounded integers, finite numbers; ConfigError otherwise."""
    if json_depth(text) > MAX_JSON_DEPTH:
        raise ConfigError(file, "", f"nesting deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except RecursionError:
        raise ConfigError(file, "", f"nesting deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:
        raise ConfigError(file, "", f"not JSON: {str(e)[:120]}") from None
