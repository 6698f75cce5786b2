"""Every input file format at volume: mutated configs, plans, workloads, model config.json files, GPU
catalogues, sweeps (CSV and JSON), reports and state files through the command that reads each
(the test suite runs 300 a format; this runs --examples a format).

Prints one row per format: examples, files read, files refused (exit 2 with one line naming the
file, the one outcome allowed besides success), and failures (a traceback, two lines, a NaN in the
output). Exits 1 when anything failed, printing the first failures.
Run: python bench/fuzz_files.py [--examples 10000] [--format config]
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

from filefuzz import FORMATS, Mutation, TextMutation, mutations, run_case, text_mutations  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=10_000, help="examples per format (default 10000)")
    ap.add_argument("--format", action="append", choices=sorted(FORMATS), help="only these formats (repeatable)")
    args = ap.parse_args()
    outcome: Counter[tuple[str, str]] = Counter()
    failures: list[str] = []
    took: dict[str, float] = {}
    for fmt in args.format or sorted(FORMATS):

        @settings(max_examples=args.examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(muts=mutations(), text_muts=text_mutations())
        def case(muts: list[Mutation], text_muts: list[TextMutation]) -> None:
            try:
                outcome[(fmt, run_case(fmt, muts, text_muts))] += 1
            except Exception:  # noqa: BLE001 - counted and shown, not raised: the run goes on
                outcome[(fmt, "failed")] += 1
                if len(failures) < 3:
                    failures.append(f"{fmt} {muts} {text_muts}\n{traceback.format_exc()}")

        t0 = time.perf_counter()
        case()
        took[fmt] = time.perf_counter() - t0
    print(f"{'format':<12} {'examples':>9} {'read':>9} {'refused':>9} {'failed':>7} {'seconds':>8}")
    for fmt in took:
        ok, ref, bad = outcome[(fmt, "ok")], outcome[(fmt, "refused")], outcome[(fmt, "failed")]
        print(f"{fmt:<12} {ok + ref + bad:>9} {ok:>9} {ref:>9} {bad:>7} {took[fmt]:>8.0f}")
    total = {k: sum(v for (_, kind), v in outcome.items() if kind == k) for k in ("ok", "refused", "failed")}
    print(f"{'all':<12} {sum(total.values()):>9} {total['ok']:>9} {total['refused']:>9} {total['failed']:>7} "
          f"{sum(took.values()):>8.0f}")
    for f in failures:
        print("\nfirst failures:\n" + f, file=sys.stderr)
    return 1 if total["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
