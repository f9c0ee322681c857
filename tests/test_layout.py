"""The shape of the code, as docs/design.md states it: imports read top-down (prediction never
imports training; the library never imports the jobs, tests or benchmarks), no sys.path tricks,
and modules and functions small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.paths import ROOT

LIBRARY = ROOT / "cifar"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in LIBRARY.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in modules} for m, p in modules.items()}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for n in graph.get(m, ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_prediction_never_imports_training():
    graph = _graph()
    for m in graph:
        if m.startswith("cifar.predict"):
            leaked = sorted(n for n in _reachable(graph, m) if n.startswith("cifar.train"))
            assert not leaked, f"{m} reaches {leaked}"


def test_the_library_imports_no_job_test_or_benchmark():
    for p in LIBRARY.rglob("*.py"):
        outside = {i for i in _imports(p) if i.split(".")[0] in ("jobs", "tests", "benchmarks")}
        assert not outside, f"{p.relative_to(ROOT)} imports {sorted(outside)}"


def test_no_sys_path_tricks():
    """Nothing changes ``sys.path``: tests, benchmarks and jobs import the installed package."""
    for folder in ("cifar", "jobs", "tests", "benchmarks"):
        for p in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(p.read_text())):
                call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                target = node.func.value if call else None
                if isinstance(target, ast.Attribute) and ast.unparse(target) == "sys.path":
                    raise AssertionError(f"{p.relative_to(ROOT)}:{node.lineno} changes sys.path")


def test_modules_and_functions_stay_readable():
    """No module of the library or the jobs over 350 lines, no function over 60."""
    for p in [*LIBRARY.rglob("*.py"), *(ROOT / "jobs").glob("*.py")]:
        source = p.read_text()
        assert len(source.splitlines()) <= 350, p.relative_to(ROOT)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                assert lines <= 60, f"{p.relative_to(ROOT)}:{node.lineno} {node.name}()"
