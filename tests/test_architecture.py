"""The package's import graph, built from the source: no cycle, and imports only point down.

Every ``import`` / ``from ... import`` statement is read with :mod:`ast`, including
those inside functions (lazy imports still run, so they still count), relative and
absolute. The layer rule is the one stated in ``siamsearch/__init__.py`` and in the
README's "Development" section:

    core (0) < data, metrics (1) < training, gallery (2) < query (3)
    < evaluation (4) < demo, serve (5) < cli (6) < __main__ (7)

A module may import modules of its own folder and of lower layers only (so ``data``
and ``metrics`` never import each other, nor ``training`` and ``gallery``, nor ``demo``
and ``serve``). The command line is the outermost shell: its ``demo`` and ``serve``
commands start those front ends, which never import the CLI.
``siamsearch._version`` and ``siamsearch.core.errors`` may be imported by anyone.
"""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

import pytest

import siamsearch

PACKAGE_DIR = Path(siamsearch.__file__).resolve().parent

# Top-level part of the package -> layer. A new top-level module or folder must be added here.
LAYERS: Dict[str, int] = {
    "core": 0,
    "data": 1, "metrics": 1,
    "training": 2, "gallery": 2,
    "query": 3,
    "evaluation": 4,
    "demo": 5, "serve": 5,
    "cli": 6,
    "__main__": 7,  # `python -m siamsearch`: the command line, nothing else
}
# Importable by every module, whatever its layer.
ANYONE_MAY_IMPORT = {"siamsearch._version", "siamsearch.core.errors"}

Edge = Tuple[str, str, int]  # (importer, imported, line)


# --------------------------------------------------------------------------- graph builder
def module_names(root: Path, package: str) -> Dict[str, Path]:
    """Map every module of the package rooted at ``root`` to its file (``pkg.sub`` for ``sub/__init__.py``)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join([package, *parts])] = path
    return names


def _is_package(name: str, modules: Dict[str, Path]) -> bool:
    return name in modules and modules[name].name == "__init__.py"


def _resolve(importer: str, modules: Dict[str, Path], level: int, base: Optional[str]) -> Optional[str]:
    """The absolute dotted name an import statement refers to (without the imported names)."""
    if level == 0:
        return base
    # Relative: level 1 is the importer's package (itself if it is a package's __init__).
    pkg = importer if _is_package(importer, modules) else importer.rpartition(".")[0]
    parts = pkg.split(".")
    if level - 1 > len(parts) - 1:
        raise ValueError(f"{importer}: relative import beyond the top-level package")
    parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([base] if base else []))


def _known(name: str, modules: Dict[str, Path]) -> Optional[str]:
    """The longest prefix of ``name`` that is a module of the package (``None`` if outside it)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def _ancestors_entered(importer: str, target: str, modules: Dict[str, Path]) -> Iterable[str]:
    """Packages whose ``__init__`` runs when ``importer`` imports ``target`` (those it is not inside)."""
    parts = target.split(".")
    for n in range(2, len(parts)):  # skip the root package itself
        pkg = ".".join(parts[:n])
        if pkg in modules and not (importer == pkg or importer.startswith(pkg + ".")):
            yield pkg


def import_edges(root: Path, package: str) -> List[Edge]:
    """Every import inside the package as ``(importer, imported module, line)``; imports of outside code are skipped."""
    modules = module_names(root, package)
    edges: List[Edge] = []
    for importer, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(importer, modules, node.level, node.module)
                if base is None:
                    continue
                # `from pkg import name` imports pkg.name when that is a module, else pkg itself.
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                known = _known(target, modules)
                if known is None or known == importer:
                    continue
                for pkg in _ancestors_entered(importer, known, modules):
                    edges.append((importer, pkg, node.lineno))
                edges.append((importer, known, node.lineno))
    return edges


def find_cycle(edges: Iterable[Edge]) -> Optional[List[str]]:
    """One import cycle as a list of modules (first == last), or ``None`` when the graph is acyclic."""
    graph: Dict[str, Set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    state: Dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def layer_violations(edges: Iterable[Edge], package: str, layers: Dict[str, int],
                     anyone: Set[str]) -> List[str]:
    """Edges that break the rule "own folder or a lower layer", as readable lines."""
    def part(module: str) -> Optional[str]:
        rest = module[len(package) + 1:] if module != package else ""
        return rest.split(".")[0] if rest else None

    bad = []
    for a, b, line in edges:
        if b in anyone or a == package:  # the root __init__ only re-exports, lazily
            continue
        pa, pb = part(a), part(b)
        if pa not in layers:
            bad.append(f"{a} is in no layer: add {pa!r} to the layer rule")
            continue
        if pb is None:
            bad.append(f"{a}:{line} imports the package root {b} (import the module that defines the name)")
            continue
        if pb not in layers:
            bad.append(f"{b} is in no layer: add {pb!r} to the layer rule")
            continue
        if pa != pb and layers[pb] >= layers[pa]:
            bad.append(f"{a}:{line} imports {b}: {pa} (layer {layers[pa]}) may not import {pb} (layer {layers[pb]})")
    return sorted(set(bad))


# --------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def edges() -> List[Edge]:
    return import_edges(PACKAGE_DIR, "siamsearch")


def test_the_graph_sees_the_package(edges):
    """Guard against a builder that silently finds nothing: known edges (one lazy, inside a function) are present."""
    pairs = {(a, b) for a, b, _ in edges}
    assert ("siamsearch.cli.demo", "siamsearch.demo") in pairs  # inside the command function
    assert ("siamsearch.data.base", "siamsearch.core.errors") in pairs
    assert len(pairs) > 50


def test_no_import_cycle(edges):
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_point_down(edges):
    bad = layer_violations(edges, "siamsearch", LAYERS, ANYONE_MAY_IMPORT)
    assert not bad, "imports that break the layer rule:\n" + "\n".join(bad)


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem for p in PACKAGE_DIR.iterdir()
             if (p.is_dir() and any(p.glob("*.py"))) or (p.suffix == ".py" and p.stem != "__init__")}
    assert parts - {"_version"} <= set(LAYERS), f"not in the layer rule: {sorted(parts - {'_version'} - set(LAYERS))}"


def test_the_rule_is_stated_where_people_read_it():
    """The package docstring and the README state the same layer order as this test."""
    order = sorted(set(LAYERS.values()))
    rule = " < ".join(", ".join(n for n in LAYERS if LAYERS[n] == k) + f" ({k})" for k in order)
    doc = " ".join((siamsearch.__doc__ or "").split())
    readme = " ".join((PACKAGE_DIR.parent / "README.md").read_text(encoding="utf-8").split())
    for text, where in ((doc, "siamsearch/__init__.py docstring"), (readme, "README.md")):
        assert rule in text, f"{where} does not state the layer rule {rule!r}"
        assert "_version" in text and "core.errors" in text, f"{where} does not name the two modules anyone may import"


# --------------------------------------------------------------------------- the checker can fail
def _write_package(tmp_path: Path, files: Dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def test_builder_finds_a_cycle_hidden_in_a_function(tmp_path):
    root = _write_package(tmp_path, {
        "__init__.py": "",
        "core/__init__.py": "",
        "core/a.py": "from ..query import b\n",
        "query/__init__.py": "",
        "query/b.py": "def f():\n    from pkg.core.a import x\n    return x\n",
    })
    edges = import_edges(root, "pkg")
    cycle = find_cycle(edges)
    assert cycle is not None and {"pkg.core.a", "pkg.query.b"} <= set(cycle)
    # ... and the upward edge is reported by the layer rule.
    bad = layer_violations(edges, "pkg", {"core": 0, "query": 3}, set())
    assert any("pkg.core.a" in line and "pkg.query.b" in line for line in bad)


def test_layer_rule_forbids_siblings_and_allows_down_and_exempt(tmp_path):
    root = _write_package(tmp_path, {
        "__init__.py": "",
        "_version.py": "",
        "core/__init__.py": "",
        "core/errors.py": "",
        "core/x.py": "from .. import _version\n",
        "data/__init__.py": "",
        "data/d.py": "from ..core import x\nfrom . import e\n",
        "data/e.py": "import pkg.metrics.m\n",
        "metrics/__init__.py": "",
        "metrics/m.py": "from pkg.core.errors import E\n",
    })
    edges = import_edges(root, "pkg")
    assert find_cycle(edges) is None
    bad = layer_violations(edges, "pkg", {"core": 0, "data": 1, "metrics": 1},
                           {"pkg._version", "pkg.core.errors"})
    assert len(bad) == 2 and all("pkg.data.e" in line and "pkg.metrics" in line for line in bad), bad
