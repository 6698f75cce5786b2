"""The package's import graph has no cycles (config -> catalogue -> guardrails -> config was one)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "exporter"


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mod = ".".join(parts[:-1] if is_pkg else parts)
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                root = base[: len(base) - (node.level - 1)]
                target = ".".join(root + ([node.module] if node.module else []))
                deps.add(target)
                if not node.module:  # from . import x: x may be a module
                    deps.update(f"{target}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("exporter"))
        graph[mod] = deps
    return {m: {d for d in ds if d in graph and d != m} for m, ds in graph.items()}


def test_no_import_cycles() -> None:
    graph = _graph()
    assert "exporter.config" in graph and "exporter.catalogue" in graph
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


ROOT = PKG.parent
# a path into the workspace beside the clone: its shared folder, by a relative path or joined onto a parent
_OUTSIDE = re.compile(r"\.\./" + "shared" + r"|parents?\[\d\]\s*(\.parent\s*)?/\s*['\"]" + "shared" +
                      r"|['\"]" + "shared" + r"/(fixtures|reference)")


def test_nothing_reads_outside_the_repository() -> None:
    """A user's clone has nothing beside it: tests, benchmarks and the package read only the project."""
    offenders = []
    for folder in ("tests", "bench", "exporter"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if _OUTSIDE.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_pattern_catches_the_ways_a_path_leaves_the_clone() -> None:
    for line in ('FIXTURES = Path(__file__).resolve().parents[1].parent / "' + "shared" + '" / "fixtures"',
                 'open("../' + "shared" + '/fixtures/x.prom")', 'ROOT.parents[1] / "' + "shared" + '"'):
        assert _OUTSIDE.search(line), line
    assert not _OUTSIDE.search('"shared_prefixes": wl.shared_prefixes')


def test_every_fixture_has_its_source() -> None:
    fixtures = ROOT / "tests" / "fixtures"
    sources = (fixtures / "SOURCES.md").read_text(encoding="utf-8")
    files = [p for p in fixtures.rglob("*") if p.is_file() and p.name != "SOURCES.md"]
    assert len(files) > 70
    for p in files:
        # a capture is named in its table; a generated sequence or a chart by its folder
        named = [p.name, *(f"{a.name}/" for a in p.relative_to(fixtures).parents if a.name)]
        assert any(n in sources for n in named), f"{p.relative_to(ROOT)} has no entry in SOURCES.md"


def test_every_command_has_one_handler() -> None:
    import argparse

    from exporter.cli import COMMANDS, build_parser

    parser = build_parser([])
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == set(COMMANDS)
