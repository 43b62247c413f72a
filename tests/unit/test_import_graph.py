"""The import graph points one way: ground modules < data/ < megatron/ < the phases, in data-flow order.

Every ``megatron_gm`` import of every module (module level, inside functions, under TYPE_CHECKING) is an
edge; an edge to a later layer is a back edge and fails, naming it. Within a phase package any import is
allowed, between phases only to an earlier one, and no two modules import each other (directly or round
a loop). The one exception is the ``install()`` facade in
``megatron_gm/__init__.py``, and importing the package root itself (``from megatron_gm import __version__``).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "megatron_gm"
GROUND = ("errors", "manifest", "shards", "procs", "stats", "evalpack", "sampler", "fs", "dist", "config")
# Layer rank of each top-level name under megatron_gm/: the data flow, pool -> next stage.
LAYERS = {
    **dict.fromkeys(GROUND, 0),
    "data": 1,
    "megatron": 2,
    "oracle": 3,
    "influence": 4,
    "selection": 5,
    "quality": 6,
    "evaluate": 7,
    "pipeline": 8,
}


def imported_modules(source: str, module: str) -> list[str]:
    """Every ``megatron_gm...`` module named by an import statement anywhere in ``source``."""
    package = module if module.endswith("__init__") else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out += [f"{base}.{a.name}" for a in node.names]  # a name or a submodule: see module_of
    return [m for m in out if m == "megatron_gm" or m.startswith("megatron_gm.")]


def module_of(name: str, modules: set[str]) -> str:
    """The longest prefix of ``megatron_gm.a.b.name`` that is a module (a package counts)."""
    while name not in modules and name.count(".") > 1:
        name = name.rsplit(".", 1)[0]
    return name


def layer(module: str) -> tuple[int, str] | None:
    """(rank, top-level name) of a ``megatron_gm.x...`` module; None for the package root."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] == "__init__" or parts[1] == "__version__":
        return None
    top = parts[1]
    if top not in LAYERS:
        raise KeyError(f"{module}: not in LAYERS; add megatron_gm/{top} to the layer map")
    return LAYERS[top], top


def back_edges(sources: dict[str, str]) -> list[str]:
    """``importer -> imported`` for every import that points to a later layer."""
    bad = []
    modules = {m.removesuffix(".__init__") for m in sources}
    for module, source in sorted(sources.items()):
        here = layer(module)
        if here is None:  # the install() facade, megatron_gm/__init__.py
            continue
        for target in sorted({module_of(t, modules) for t in imported_modules(source, module)}):
            there = layer(target)
            if there is not None and there[0] > here[0]:
                bad.append(f"{module} -> {target}")
    return bad


def cycles(sources: dict[str, str]) -> list[str]:
    """Import cycles between modules (``a -> b -> a``), lazy imports included; the package root aside."""
    modules = {m.removesuffix(".__init__") for m in sources}
    graph = {
        m.removesuffix(".__init__"): {module_of(t, modules) for t in imported_modules(s, m)} - {"megatron_gm"}
        for m, s in sources.items()
    }
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                found.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in done and nxt != node:
                done.add(nxt)
                visit(nxt, [*path, nxt])

    for m in sorted(graph):
        if m not in done:
            done.add(m)
            visit(m, [m])
    return found


def tree_sources() -> dict[str, str]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        out[".".join(rel.parts)] = path.read_text()
    return out


def test_the_tree_has_no_back_edge():
    assert back_edges(tree_sources()) == []


def test_the_tree_has_no_import_cycle():
    assert cycles(tree_sources()) == []


def test_a_cycle_is_caught_and_named():
    sources = {
        "megatron_gm.influence.embed": "def f():\n    from megatron_gm.influence.model import M\n",
        "megatron_gm.influence.model": "from megatron_gm.influence import embed\n",
        "megatron_gm.influence.__init__": "",
    }
    assert cycles(sources) == [
        "megatron_gm.influence.embed -> megatron_gm.influence.model -> megatron_gm.influence.embed"
    ]


def test_every_top_level_name_has_a_layer():
    for path in ROOT.iterdir():
        name = path.stem
        if name in ("__init__", "__pycache__"):
            continue
        if path.suffix == ".py" or (path / "__init__.py").exists():
            assert name in LAYERS, f"megatron_gm/{path.name} has no layer"


def test_a_back_edge_is_caught_and_named():
    sources = {
        "megatron_gm.data.reader": "import os\n\ndef f():\n    from megatron_gm.selection.cli import main\n",
        "megatron_gm.selection.cli": "from megatron_gm.data import reader\n",
        "megatron_gm.oracle.store": "from . import trajectories\nfrom ..influence import model\n",
        "megatron_gm.errors": "from megatron_gm import __version__\n",
    }
    assert back_edges(sources) == [
        "megatron_gm.data.reader -> megatron_gm.selection.cli",
        "megatron_gm.oracle.store -> megatron_gm.influence",
    ]


def test_an_unknown_top_level_name_is_an_error():
    with pytest.raises(KeyError, match="megatron_gm/attic"):
        back_edges({"megatron_gm.data.x": "import megatron_gm.attic.y\n"})


if __name__ == "__main__":  # the same check as a script: one back edge a line
    edges = back_edges(tree_sources()) + cycles(tree_sources())
    print("\n".join(edges) or "no back edge, no cycle")
    sys.exit(1 if edges else 0)
