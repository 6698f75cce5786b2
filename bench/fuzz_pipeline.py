"""The pipeline property at volume: mutated real captures of every engine version through
parse -> window -> evaluate -> JSON (the test suite runs a few hundred; this runs --examples).

Prints one table row per capture: examples, reports written, scrapes rejected (ExpositionError,
the one exception allowed), and failures (any other exception, a NaN/Inf the JSON cannot carry, a
negative number in the report). Exits 1 when anything failed, printing the first failure.
Run: python bench/fuzz_pipeline.py [--examples 10000]
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fuzzing import Mutation, captures, dcgm_captures, mutations, run_case  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    caps, gpus = captures(), dcgm_captures()
    outcome: Counter[tuple[str, str]] = Counter()
    failures: list[str] = []

    @settings(max_examples=args.examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(name=st.sampled_from(sorted(caps)), muts=mutations(), gpu=st.integers(0, 100))
    def case(name: str, muts: list[Mutation], gpu: int) -> None:
        engine, text = caps[name]
        try:
            outcome[(name, run_case(engine, text, muts, gpus[gpu % len(gpus)] if gpu % 3 == 0 else None))] += 1
        except Exception:  # noqa: BLE001 - counted and shown, not raised: the run goes on
            outcome[(name, "failed")] += 1
            if len(failures) < 3:
                failures.append(f"{name} {muts}\n{traceback.format_exc()}")

    t0 = time.perf_counter()
    case()
    took = time.perf_counter() - t0
    print(f"{'capture':<34} {'examples':>9} {'reports':>9} {'rejected':>9} {'failed':>7}")
    for name in sorted(caps):
        ok, rej, bad = outcome[(name, "ok")], outcome[(name, "rejected")], outcome[(name, "failed")]
        print(f"{name:<34} {ok + rej + bad:>9} {ok:>9} {rej:>9} {bad:>7}")
    total = sum(outcome.values())
    failed = sum(v for (_, kind), v in outcome.items() if kind == "failed")
    print(f"{'all':<34} {total:>9} {sum(v for (_, k), v in outcome.items() if k == 'ok'):>9} "
          f"{sum(v for (_, k), v in outcome.items() if k == 'rejected'):>9} {failed:>7}   ({took:.0f} s)")
    for f in failures:
        print("\nfirst failures:\n" + f, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
