"""Property: every input file format, mutated, is read to a plan or a report or refused in one line
naming the file; never a traceback, a hang, or a NaN in what is written. 300 examples a format
here; bench/fuzz_files.py runs 10,000 and more.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from filefuzz import FORMATS, Mutation, TextMutation, mutations, run_case, text_mutations


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_the_unmutated_file_of_each_format_is_read(fmt: str) -> None:
    """The property is not vacuous: each format's base file goes all the way through."""
    assert run_case(fmt, [], []) == "ok", fmt
    assert run_case(fmt, [], [TextMutation("insert", 0, "\x00")]) == "refused", fmt


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(muts=mutations(), text_muts=text_mutations())
def test_a_mutated_input_file_is_read_or_refused_in_one_line(fmt: str, muts: list[Mutation],
                                                              text_muts: list[TextMutation]) -> None:
    run_case(fmt, muts, text_muts)
