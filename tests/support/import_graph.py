"""The import graph of the project's own packages, read from the source with ``ast``.

``python -m tests.support.import_graph`` prints, per package, its modules, its floors (the
longest chain of imports inside it), its import arrows and its cycles;
``tests/project/test_imports.py`` holds the layers to it. Lazy imports (inside a function)
count: they run too.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def modules(package: str) -> dict[str, Path]:
    """Every module of ``package`` and its subpackages (Django's generated migrations aside)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        if "migrations" in path.parts:
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def graph(*packages: str) -> dict[str, set[str]]:
    """Each module and the project modules it imports (``from a import b`` counts ``a.b`` if
    that is a module, else ``a``)."""
    known: dict[str, Path] = {}
    for package in packages:
        known |= modules(package)
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    found.add(target if target in known else base)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        edges[name] = {target for target in found if target in known} - {name}
    return edges


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``edges`` as a path that ends where it began, or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done or module not in edges:
            return None
        for dependency in sorted(edges[module]):
            if found := visit(dependency, [*path, module]):
                return found
        done.add(module)
        return None

    for module in sorted(edges):
        if found := visit(module, []):
            return found
    return None


def figures(package: str) -> dict[str, int]:
    """Modules, floors, arrows and cycles (0 or 1: the first one found) inside ``package``."""
    edges = {
        name: {target for target in targets if target.split(".")[0] == package}
        for name, targets in graph(package).items()
    }

    @cache
    def floor(module: str) -> int:
        return 1 + max((floor(target) for target in edges[module]), default=0)

    return {
        "modules": len(edges),
        "floors": max(floor(module) for module in edges),
        "arrows": sum(len(targets) for targets in edges.values()),
        "cycles": 0 if cycle(edges) is None else 1,
    }


if __name__ == "__main__":
    for package in sys.argv[1:] or ["gql", "tasks"]:
        print(package, " ".join(f"{k} {v}" for k, v in figures(package).items()))  # noqa: T201
