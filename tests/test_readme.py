"""Every shell block of the README marked runnable (an `<!-- runnable -->` line before its fence) runs,
as a user would paste it, from the root of the clone, and succeeds."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import INSTALL, binary

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = re.compile(r"^<!-- runnable -->\n```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
BLOCKS = RUNNABLE.findall((ROOT / "README.md").read_text(encoding="utf-8"))


def test_the_readme_marks_its_runnable_blocks() -> None:
    assert len(BLOCKS) >= 3
    # a fence marked but not matched (a typo in the marker or the language) would silently never run
    assert (ROOT / "README.md").read_text(encoding="utf-8").count("<!-- runnable -->") == len(BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.splitlines()[0][:60] for b in BLOCKS])
def test_a_runnable_readme_block_succeeds(block: str) -> None:
    for name in INSTALL:  # a block that calls promtool, kubectl ... needs it, or skips naming the package
        if re.search(rf"(^|[|;&]\s*){re.escape(name)}\b", block, re.MULTILINE):
            binary(name)
    fleetwatch = shutil.which("fleetwatch")
    assert fleetwatch is not None, "fleetwatch is not on PATH: pip install -e '.[test]'"
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, f"{block}\nexit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
