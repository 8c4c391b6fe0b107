"""The package's import graph (tools/import_graph.py): no cycle, and inference free of the training callbacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "import_graph.py"
PACKAGE = "imagenette_sota"
INFERENCE = ("predict", "serve", "commands", "export", "trained")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, check=False)


def edges(stdout: str) -> dict[str, set[str]]:
    """The ``module -> a, b`` lines of the tool's output as {module: its imports}."""
    graph = {}
    for line in stdout.splitlines():
        if " -> " in line:
            name, _, targets = line.partition(" -> ")
            graph[name] = set() if targets == "(none)" else set(targets.split(", "))
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def test_the_package_has_no_import_cycle_and_only_training_imports_callbacks() -> None:
    result = run()
    assert result.returncode == 0, result.stdout + result.stderr
    graph = edges(result.stdout)
    assert f"{PACKAGE}.callbacks.progressive" in graph and f"{PACKAGE}.tta" in graph  # the whole package was read
    callbacks = f"{PACKAGE}.callbacks"
    importers = {m for m, targets in graph.items() if any(t.split(".")[:2] == callbacks.split(".") for t in targets)}
    assert {m for m in importers if not m.startswith(callbacks)} == {f"{PACKAGE}.cli"}
    for name in INFERENCE:  # not even through another module
        assert not {t for t in reachable(graph, f"{PACKAGE}.{name}") if t.startswith(callbacks)}, name


def test_a_cycle_fails_the_tool_and_is_named(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "a.py").write_text("def f():\n    from . import b  # deferred: still a cycle\n")
    (package / "sub" / "b.py").write_text("from pkg.sub.a import f\nimport pkg\n")
    result = run(str(package))
    assert result.returncode == 1
    assert edges(result.stdout) == {
        "pkg": set(),
        "pkg.sub": {"pkg.sub.b"},
        "pkg.sub.a": {"pkg.sub.b"},
        "pkg.sub.b": {"pkg", "pkg.sub.a"},
    }
    assert "cycle: pkg.sub.a <-> pkg.sub.b" in result.stdout
    (package / "sub" / "a.py").write_text("import os\n")
    assert run(str(package)).returncode == 0
