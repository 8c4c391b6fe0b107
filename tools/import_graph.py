"""The package's internal import graph, read from its source with ``ast``; exit status 1 on an import cycle.

    python tools/import_graph.py [PACKAGE_DIR]   # default: imagenette_sota

Every ``import`` counts, at module level or inside a function (a deferred import hides a cycle, it does not break
it). ``from pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg`` (its ``__init__``).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent.parent / "imagenette_sota"


def modules(package: Path) -> dict[str, Path]:
    """{dotted module name: its file} for every .py file under ``package`` (a package is named by its __init__)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that module ``name`` (its file ``path``) imports."""

    def owner(dotted: str) -> str | None:  # the longest known module that `dotted` names or lies in
        parts = dotted.split(".")
        return next((m for i in range(len(parts), 0, -1) if (m := ".".join(parts[:i])) in known), None)

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets |= {owner(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per dot after the first
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            targets |= {
                owner(f"{base}.{alias.name}") if f"{base}.{alias.name}" in known else owner(base)
                for alias in node.names
            }
    return {t for t in targets if t is not None and t != name}


def graph(package: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports}."""
    known = modules(package)
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main(argv: list[str]) -> int:
    """Print ``module -> imports`` per module, then the cycles; 1 if there is any."""
    package = Path(argv[0]) if argv else DEFAULT
    if not (package / "__init__.py").is_file():
        print(f"{package} is not a package (no __init__.py): give the package's folder", file=sys.stderr)
        return 2
    edges = graph(package)
    for name in sorted(edges):
        print(f"{name} -> {', '.join(sorted(edges[name])) or '(none)'}")
    found = cycles(edges)
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports, {len(found)} cycle(s)")
    for component in found:
        print("cycle: " + " <-> ".join(component))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
