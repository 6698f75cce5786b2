"""Prometheus text exposition parser (the hot path).

Selective: lines whose metric name does not start with one of ``prefixes``, or is not one of the
``names`` the engine parser reads, are skipped before any label parsing, so a 300 kB vLLM scrape
costs only the families we read. Like Prometheus,
one malformed sample line rejects the whole scrape: half a scrape would silently skew ratios.
"""
from __future__ import annotations

import functools
import re
from typing import Callable, Collection, Iterable, Mapping, NamedTuple


class ExpositionError(ValueError):
    """The body is not valid Prometheus text format."""


class Sample(NamedTuple):
    name: str
    labels: Mapping[str, str]  # read-only: samples whose label text is the same share one dict
    value: float


_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_ESC_RE = re.compile(r'\\[\\"n]')


def _unescape(s: str) -> str:
    return _ESC_RE.sub(lambda m: _ESCAPES[m.group(0)], s) if "\\" in s else s


_LNAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
_LVALUE = r'"(?:[^"\\]|\\.)*"'
# a whole label set, validated in one C-speed match ("}" and "," inside quotes included), then split
_LABEL_SET = re.compile(r"\{\s*(?:%s\s*=\s*%s\s*,\s*)*(?:%s\s*=\s*%s\s*,?\s*)?\}" % (_LNAME, _LVALUE, _LNAME, _LVALUE))
_PAIR = re.compile(r'(%s)\s*=\s*"((?:[^"\\]|\\.)*)"' % _LNAME)
_VALID_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")


_SIMPLE_SET = re.compile(r'(?:[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*")*,?)?\}')  # the usual case
_SIMPLE_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"')
# One sample line in the usual form, whole: name, labels up to the first "}", value, optional
# timestamp, single spaces. A block whose every line is this, a comment or blank is parsed by one
# C-level scan; each distinct label text is then checked once against _SIMPLE_SET (a "}" inside a
# value, or an escape, fails that check and sends the block line by line).
_FAST_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}\n]*\})? +([^ \n]+)(?: +-?[0-9]+)? *$', re.M)
# label text -> its dict, shared by every sample (of every target) with the same text: a fleet's
# instances repeat the same label sets scrape after scrape. Bounded: cleared when full.
_LABEL_DICTS: dict[str, dict[str, str]] = {}
_LABEL_DICTS_MAX = 1 << 16
# the sample names a family's lines may carry besides its own (text format 0.0.4)
_SUFFIXES = ("", "_bucket", "_sum", "_count", "_total", "_created", "_info")


def not_metrics(text: str, what: str) -> ExpositionError:
    """The error for a body that holds none of ``what`` (``vllm:`` metrics), saying what it is instead (a
    login or error page, JSON, nothing) and its size, never a word of it: a page may reflect a request's
    credentials."""
    head = text.lstrip()[:1]
    size = len(text.encode("utf-8", "replace"))
    kind = ("the body is empty" if not head else
            f"it is an HTML page of {size:,} bytes" if head == "<" else
            f"it is JSON of {size:,} bytes" if head in "{[" else
            f"it is text of {size:,} bytes in another format")
    return ExpositionError(f"no {what} metrics in the body: {kind}")


def has_prefix(text: str, prefixes: Iterable[str]) -> bool:
    """Whether some line begins with one of ``prefixes`` (a body of the right engine, whatever it holds)."""
    return any(text.startswith(p) or ("\n" + p) in text for p in prefixes)


def parse(text: str, prefixes: Iterable[str] | None = None, names: Collection[str] | None = None) -> list[Sample]:
    """Parse exposition text into samples, keeping only names starting with one of ``prefixes``
    and, when ``names`` is given, only those exact sample names (``x_bucket``, ``x_sum``, ...).

    Selection happens before any label is split. With ``names``, the body is cut at its ``# TYPE``
    lines and a family nobody reads is skipped whole, after four ``str.count`` calls prove that
    every sample line in it is of that family (a sample out of its family's place, or a line that
    does not begin with its name, sends the block through the line-by-line path instead)."""
    pref = tuple(prefixes) if prefixes is not None else None
    wanted = None if names is None else names if isinstance(names, frozenset) else frozenset(names)
    out: list[Sample] = []
    if wanted is None or "\n# TYPE " not in text:
        _lines(text, lambda: 1, pref, wanted, out)
        return out
    families = _families(wanted)
    chunks = text.split("\n# TYPE ")
    _lines(chunks[0], lambda: 1, pref, wanted, out)
    offset = len(chunks[0]) + 1  # where the next chunk's TYPE comment starts in text
    shadowed = _shadowed(wanted)
    for chunk in chunks[1:]:
        head_end = chunk.find("\n")
        blank = chunk.find(" ", 0, head_end)
        family = chunk[:blank] if blank > 0 else ""  # a TYPE line without a name: read its lines, to reject them
        if head_end != -1:
            read = family in families or not family
            if not read:
                # skipped whole if every line after the TYPE line is the family's or a comment (the
                # usual case, in three counts), or blank (then _only, which counts those too)
                lines = chunk.count("\n", head_end) - chunk.endswith("\n")
                read = family in shadowed or (
                    lines != chunk.count("\n" + family, head_end) + chunk.count("\n#", head_end)
                    and not _only(chunk, head_end, family, wanted))
            if read:
                body = chunk[head_end + 1:]
                if not (family in families and _fast(body, wanted, out)):
                    # line numbers are counted only for an error message
                    _lines(body, functools.partial(_line_after_type, text, offset), pref, wanted, out)
        offset += len(chunk) + len("\n# TYPE ")
    return out


def _fast(body: str, wanted: frozenset[str], out: list[Sample]) -> bool:
    """Parse a block in one regex scan, if every line of it is a plain sample line, a comment or blank;
    False (and nothing added) otherwise, for the line-by-line path to parse or reject it."""
    found = _FAST_LINE.findall(body)
    lines = body.count("\n") + (not body.endswith("\n"))
    # comments and blank lines (two blank lines in a row count as one: the block then goes line by line)
    others = body.count("\n#") + body.startswith("#") + body.count("\n\n") + body.startswith("\n")
    if len(found) + others != lines:
        return False
    got: list[Sample] = []
    append, new, dicts = got.append, tuple.__new__, _LABEL_DICTS  # tuple.__new__: Sample() is Python-level
    try:
        for name, label_text, value in found:
            if name not in wanted:
                continue
            labels = dicts.get(label_text)
            if labels is None:
                if label_text and _SIMPLE_SET.fullmatch(label_text, 1) is None:
                    return False
                if len(dicts) >= _LABEL_DICTS_MAX:
                    dicts.clear()
                labels = dicts[label_text] = dict(_SIMPLE_PAIR.findall(label_text))
            append(new(Sample, (name, labels, float(value))))
    except ValueError:
        return False  # a bad number: the line-by-line path names the line
    out.extend(got)
    return True


def _line_after_type(text: str, offset: int) -> int:
    """The number of the line after the TYPE comment that starts at ``offset``."""
    return text.count("\n", 0, offset) + 2


@functools.lru_cache(maxsize=64)
def _families(wanted: frozenset[str]) -> frozenset[str]:
    return frozenset(n[:len(n) - len(s)] for n in wanted for s in _SUFFIXES if s and n.endswith(s)) | wanted


@functools.lru_cache(maxsize=64)
def _shadowed(wanted: frozenset[str]) -> frozenset[str]:
    """The family names that a wanted name begins with without being one of their sample names: a
    block of such a family may hold wanted lines that a count by family name cannot tell apart."""
    return frozenset(w[:k] for w in wanted for k in range(1, len(w)) if w[k:] not in _SUFFIXES)


def _shadows(family: str, wanted: frozenset[str]) -> bool:
    return family in _shadowed(wanted)


def _only(chunk: str, head_end: int, family: str, wanted: frozenset[str]) -> bool:
    """Every line after the TYPE line is a comment, blank, or begins with ``family``."""
    if not family or _shadows(family, wanted):
        return False
    body = chunk[head_end:]  # starts at the newline that ends the TYPE line
    lines = body.count("\n")
    blank = body.count("\n\n") + body.endswith("\n")
    return lines == body.count("\n" + family) + body.count("\n#") + blank


def _lines(text: str, first: Callable[[], int], pref: tuple[str, ...] | None, wanted: Collection[str] | None,
           out: list[Sample]) -> None:
    """Every sample line of ``text``. ``first()`` is the number of its first line in the whole body,
    asked for only to name the line of an error."""
    append = out.append
    for i, line in enumerate(text.splitlines()):
        if not line:
            continue
        if line[0] in " \t" or line[-1] in " \t":
            line = line.strip()
            if not line:
                continue
        if line[0] == "#":
            continue
        if pref is not None and not line.startswith(pref):
            continue
        brace, blank = line.find("{"), line.find(" ")
        if brace != -1 and (blank == -1 or brace < blank):
            name_end = brace
        else:
            name_end = blank if blank != -1 else len(line)
            brace = -1
        name = line[:name_end].rstrip("\t")
        if wanted is not None:
            if name not in wanted:
                continue
        elif not _VALID_NAME.match(name):  # a wanted name is valid by construction
            raise ExpositionError(f"line {first() + i}: expected a metric name, got {line[:60]!r}")
        labels: dict[str, str] = {}
        pos = name_end
        if brace != -1:
            m = _SIMPLE_SET.match(line, brace + 1)
            if m is not None:
                labels = dict(_SIMPLE_PAIR.findall(line, brace + 1, m.end()))
            else:  # blanks around the signs, escapes, a trailing comma: the full grammar
                m = _LABEL_SET.match(line, brace)
                if m is None:
                    raise ExpositionError(f"line {first() + i}: malformed labels in {line[:80]!r}")
                for k, v in _PAIR.findall(line, brace, m.end()):
                    labels[k] = _unescape(v)
            pos = m.end()
        rest = line[pos:].split()
        if not rest or len(rest) > 2:
            raise ExpositionError(f"line {first() + i}: expected 'name value [timestamp]', got {line[:80]!r}")
        try:
            value = float(rest[0])
            if len(rest) == 2:
                int(rest[1])
        except ValueError:
            raise ExpositionError(f"line {first() + i}: bad number in {line[:80]!r}") from None
        append(Sample(name, labels, value))
