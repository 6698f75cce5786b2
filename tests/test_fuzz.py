"""Property: a mutated real capture of any engine version never crashes the pipeline.

No exception but ExpositionError escapes parse -> window -> evaluate -> JSON, the report always
serialises with allow_nan=False, and it holds no negative number. A few hundred examples here;
bench/fuzz_pipeline.py runs tens of thousands.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzzing import Mutation, captures, dcgm_captures, mutations, run_case

CAPTURES = captures()
GPUS = dcgm_captures()


def test_every_engine_version_is_covered() -> None:
    engines = {e for e, _ in CAPTURES.values()}
    assert engines == {"vllm", "sglang"} and len(CAPTURES) >= 7, sorted(CAPTURES)
    # and the unmutated captures go through cleanly: the property is not vacuous
    for name, (engine, text) in CAPTURES.items():
        assert run_case(engine, text, [Mutation("insert", 0, "# a comment")]) == "ok", name


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(CAPTURES)), muts=mutations(), gpu=st.integers(0, 100))
def test_mutated_captures_never_crash_the_pipeline(name: str, muts: list[Mutation], gpu: int) -> None:
    engine, text = CAPTURES[name]
    run_case(engine, text, muts, GPUS[gpu % len(GPUS)] if gpu % 3 == 0 else None)
