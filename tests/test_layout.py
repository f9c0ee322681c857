"""The shape of the code, as docs/design.md states it: imports read top-down (no cycle between
cifar's packages and top-level modules, nor between two modules; prediction never imports
training; ``cifar.device`` at the bottom; the library never imports the jobs, tests or
benchmarks), no sys.path tricks, no formatter opt-outs, and modules and functions small enough
to read."""

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


def _unit(module: str) -> str:
    """The room a module lives in: its package below ``cifar`` (``cifar.data``), or itself for a
    top-level module (``cifar.device``)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_packages_or_modules():
    """Lazy imports (inside functions) count: a cycle is a cycle whenever it is taken."""
    graph = _graph()
    units: dict[str, set[str]] = {}
    for m, targets in graph.items():
        if m == "cifar":
            continue
        units.setdefault(_unit(m), set()).update(
            _unit(t) for t in targets if t != "cifar" and _unit(t) != _unit(m)
        )
    assert not _cycles(units), f"cycles between cifar's packages: {_cycles(units)}"
    assert not _cycles(graph), f"cycles between modules: {_cycles(graph)}"


def test_device_is_the_bottom_layer():
    """``cifar.device`` (precision, memory format, timings) imports only the environment."""
    graph = _graph()
    reached = {_unit(m) for m in _reachable(graph, "cifar.device")} - {"cifar"}
    assert reached <= {"cifar.env"}, reached


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
    """No module of the library or the jobs over 400 lines, no function over 60: smoke alarms
    for a module or function doing two jobs, not targets (nothing is hand-wrapped to meet them:
    see test_the_formatter_is_never_told_to_look_away)."""
    for p in [*LIBRARY.rglob("*.py"), *(ROOT / "jobs").glob("*.py")]:
        source = p.read_text()
        assert len(source.splitlines()) <= 400, p.relative_to(ROOT)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                assert lines <= 60, f"{p.relative_to(ROOT)}:{node.lineno} {node.name}()"


def test_the_formatter_is_never_told_to_look_away():
    """No per-line formatter opt-out anywhere: code is formatted as ruff formats it (``# fmt:
    off`` stays around the config dataclasses, where every setting is one line)."""
    marker = "# fmt: " + "skip"
    for folder in ("cifar", "jobs", "tests", "benchmarks"):
        for p in (ROOT / folder).rglob("*.py"):
            for n, line in enumerate(p.read_text().splitlines(), 1):
                assert marker not in line, f"{p.relative_to(ROOT)}:{n}"


def test_ruff_reads_every_module_of_the_project():
    """``extend-exclude`` once named ``data``, which ruff matches anywhere: cifar/data/ was never
    linted nor format-checked. Every tracked .py file must be among the files ruff checks."""
    import subprocess
    import sys
    from pathlib import Path as P

    ruff = P(sys.executable).parent / "ruff"
    shown = subprocess.run(
        [str(ruff), "check", "--show-files", "."], cwd=ROOT, capture_output=True, text=True
    ).stdout
    checked = {P(line.strip()).resolve() for line in shown.splitlines() if line.strip()}
    for folder in ("cifar", "jobs", "tests", "benchmarks"):
        for p in (ROOT / folder).rglob("*.py"):
            assert p.resolve() in checked, f"ruff does not check {p.relative_to(ROOT)}"
