"""The selective exposition parser gives exactly what prometheus_client's text parser gives, for
the sample names it keeps: on every engine fixture, and on generated expositions (escapes, NaN and
±Inf, timestamps, families out of order, labels with `}` and `,` inside quotes)."""
from __future__ import annotations

import math
from pathlib import Path

from typing import Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter import exposition
from exporter.sources import sglang, vllm

from conftest import FIXTURES

Key = tuple[str, tuple[tuple[str, str], ...], str]


def key(name: str, labels: Mapping[str, str], value: float) -> Key:
    return name, tuple(sorted(labels.items())), "nan" if math.isnan(value) else repr(float(value))


def theirs(text: str, names: frozenset[str]) -> list[Key]:
    return sorted(key(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples
                  if s.name in names)


def ours(text: str, names: frozenset[str], prefixes: tuple[str, ...] | None = None) -> list[Key]:
    return sorted(key(s.name, s.labels, s.value) for s in exposition.parse(text, prefixes, names))


def engine_fixtures() -> list[tuple[Path, tuple[str, ...], frozenset[str]]]:
    out = []
    for module in (vllm, sglang):
        engine = module.PREFIXES[0].rstrip(":")
        for p in sorted((FIXTURES / engine).rglob("*.prom")):
            out.append((p, module.PREFIXES, module.WANTED))
    assert len(out) > 60
    return out


def test_every_engine_fixture_parses_as_prometheus_client_parses_it() -> None:
    for path, prefixes, names in engine_fixtures():
        text = path.read_text(encoding="utf-8")
        expected = theirs(text, names)
        assert ours(text, names, prefixes) == expected, path.name
        # selecting by name changes nothing in what is kept
        full = [s for s in exposition.parse(text, prefixes) if s.name in names]
        assert exposition.parse(text, prefixes, names) == full, path.name


def test_a_family_out_of_place_is_still_found() -> None:
    """A wanted sample inside another family's block (no TYPE of its own) is not skipped with it."""
    text = ("# TYPE other_total counter\nother_total 1\nwanted_total 5\n"
            "# TYPE more gauge\nmore 2\n")
    assert ours(text, frozenset({"wanted_total"})) == theirs(text, frozenset({"wanted_total"})) != []
    # and a wanted family whose name extends the skipped one's
    text = "# TYPE a gauge\na 1\na_b_c 7\n"
    assert ours(text, frozenset({"a_b_c"})) == [("a_b_c", (), "7.0")]
    # indented, after a blank line, or under a TYPE line that names nothing: still found
    for text in ("# TYPE x gauge\nx 1\n  wanted_total 5\n", "# TYPE x gauge\nx 1\n\nwanted_total 5\n",
                 "# TYPE  gauge\nwanted_total 5\n"):
        assert ours(text, frozenset({"wanted_total"})) == [("wanted_total", (), "5.0")], repr(text)


def test_errors_name_the_line_of_the_whole_body() -> None:
    text = "# HELP a x\n# TYPE a counter\na_total 1\n# TYPE b gauge\nb 1\nb{x=\"1\" 2\n"
    for names in (None, frozenset({"b"})):
        with pytest.raises(exposition.ExpositionError, match="^line 6: malformed labels"):
            exposition.parse(text, None, names)
    # a well-formed line with a bad number, in a family read by the one-scan path: the same error
    text = "# TYPE b gauge\nb{x=\"1\"} 1\nb{x=\"2\"} one\n"
    for names in (None, frozenset({"b"})):
        with pytest.raises(exposition.ExpositionError, match="^line 3: bad number"):
            exposition.parse(text, None, names)


# ---------------------------------------------------------------- generated expositions

_NAME = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
_LABEL = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(lambda s: s != "le")
_VALUE_TEXT = st.text(alphabet=st.sampled_from(list('ab}{,="\\\n =é')), max_size=12)
_NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                    st.integers(min_value=-10**12, max_value=10**12).map(float))


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(v: float, spelling: int) -> str:
    if math.isnan(v):
        return ("NaN", "nan")[spelling]
    if math.isinf(v):
        return ("+Inf", "Inf")[spelling] if v > 0 else "-Inf"
    return repr(v)


@st.composite
def exposition_text(draw: st.DrawFn) -> tuple[str, frozenset[str]]:
    names = draw(st.lists(_NAME, min_size=1, max_size=6, unique=True))
    blocks, sample_names = [], []
    for name in names:
        kind = draw(st.sampled_from(["counter", "gauge", "histogram"]))
        label_names = draw(st.lists(_LABEL, max_size=3, unique=True))
        lines = [f"# HELP {name} help with \\\\ and {{braces}}", f"# TYPE {name} {kind}"]
        for _ in range(draw(st.integers(1, 3))):
            labels = {k: draw(_VALUE_TEXT) for k in label_names}
            body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            if draw(st.booleans()) and body:
                body = body.replace(",", " , ") + ","  # blanks and a trailing comma, as the format allows
            stamp = f" {draw(st.integers(-10**13, 10**13))}" if draw(st.booleans()) else ""
            if kind == "histogram":
                for le in ("0.1", "1.0", "+Inf"):
                    lb = body + ("," if body and not body.endswith(",") else "") + f'le="{le}"'
                    lines.append(f"{name}_bucket{{{lb}}} {_number(draw(_NUMBER), draw(st.integers(0, 1)))}{stamp}")
                for sfx in ("_sum", "_count"):
                    lines.append(f"{name}{sfx}{{{body}}} {_number(draw(_NUMBER), draw(st.integers(0, 1)))}{stamp}")
                sample_names += [name + "_bucket", name + "_sum", name + "_count"]
            else:
                sname = name + ("_total" if kind == "counter" else "")
                labelled = body or draw(st.booleans())
                value = _number(draw(_NUMBER), draw(st.integers(0, 1)))
                lines.append(f"{sname}{{{body}}} {value}{stamp}" if labelled else f"{sname} {value}{stamp}")
                sample_names.append(sname)
        blocks.append("\n".join(lines))
    order = draw(st.permutations(blocks))  # families in any order
    keep = draw(st.sets(st.sampled_from(sorted(set(sample_names))), min_size=1))
    return "\n".join(order) + "\n", frozenset(keep)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(exposition_text())
def test_generated_expositions_parse_as_prometheus_client_parses_them(case: tuple[str, frozenset[str]]) -> None:
    text, keep = case
    assert ours(text, keep) == theirs(text, keep)
