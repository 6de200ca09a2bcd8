"""The import graph of ``src/gmemlab``: no cycles between modules, and packages import downward only.

Every import counts: module level, inside functions (a "late import" that dodges a cycle is still one)
and under ``TYPE_CHECKING`` (a type-only back-pointer is still an upward arrow). ``from pkg import name``
is an edge to ``pkg.name`` when that is a module, else to ``pkg`` itself. The map is docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# What each package may import besides itself (docs/architecture.md). The base modules sit below all.
BASE = {"gmemlab.errors", "gmemlab.uapi", "gmemlab.rangemap", "gmemlab.backend", "gmemlab.level",
        "gmemlab.hostfacts", "gmemlab.checks", "gmemlab.output"}
ALLOWED = {
    "gmemlab.model": BASE,
    "gmemlab.kernel": BASE,
    "gmemlab.races": BASE,
    "gmemlab.conformance": BASE,  # cases talk to a Backend, never to the model or the kernel directly
    "gmemlab.workload": BASE,
    "gmemlab.qemu": BASE,
    "gmemlab.arch": BASE | {"gmemlab.workload"},
    "gmemlab.sim": BASE | {"gmemlab.model", "gmemlab.arch", "gmemlab.workload"},
    "gmemlab.sweep": BASE | {"gmemlab.sim", "gmemlab.model", "gmemlab.arch", "gmemlab.workload"},
}


def module_files(src: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


def import_graph(src: Path) -> dict[str, set[str]]:
    """Module -> modules it imports (within ``src``)."""
    mods = module_files(src)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        package = mod if is_pkg else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in mods else origin for a in node.names]
            for target in targets:
                while target and target not in mods:  # `import a.b.c` of a name inside a module
                    target = target.rpartition(".")[0]
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def describe(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & members))}" for m in component)


def test_no_import_cycles() -> None:
    graph = import_graph(SRC)
    assert len(graph) > 50, "the scan found too few modules: wrong source root?"
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(graph, c) for c in found)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_downward(package: str) -> None:
    graph = import_graph(SRC)
    allowed = ALLOWED[package]
    bad = sorted(
        f"{mod} -> {dep}"
        for mod, deps in graph.items()
        if mod == package or mod.startswith(package + ".")
        for dep in deps
        if not any(dep == ok or dep.startswith(ok + ".") for ok in (package, *allowed)) and dep != "gmemlab"
    )
    assert not bad, f"{package} imports above its layer:\n" + "\n".join(bad)


def test_only_the_entry_point_imports_the_cli() -> None:
    graph = import_graph(SRC)
    bad = sorted(f"{m} -> {d}" for m, deps in graph.items() if not m.startswith(("gmemlab.cli", "gmemlab.__main__"))
                 for d in deps if d.startswith("gmemlab.cli"))
    assert not bad, "the CLI is the top layer:\n" + "\n".join(bad)


def test_base_modules_import_no_package() -> None:
    graph = import_graph(SRC)
    bad = sorted(f"{m} -> {d}" for m in BASE for d in graph[m] if d not in BASE)
    assert not bad, "base modules import upward:\n" + "\n".join(bad)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_check_finds_seeded_cycles(tmp_path: Path) -> None:
    """The check can fail: a late import, a TYPE_CHECKING import and a package __init__ each close a cycle."""
    _write(tmp_path, {
        "pkg/__init__.py": "from .a import A\n",
        "pkg/a.py": "from .b import B\nclass A: ...\n",
        "pkg/b.py": "def f():\n    from . import a\nclass B: ...\n",
        "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import D\n",
        "pkg/d.py": "from .c import x\nclass D: ...\n",
        "pkg/e.py": "import pkg\n",
        "pkg/ok.py": "from .a import A\n",
    })
    graph = import_graph(tmp_path)
    found = cycles(graph)
    assert ["pkg.a", "pkg.b"] in found
    assert ["pkg.c", "pkg.d"] in found
    assert ["pkg", "pkg.a", "pkg.b", "pkg.e"] not in found  # e -> pkg, but pkg does not reach e
    assert not any("pkg.ok" in c for c in found)
    assert len(found) == 2
