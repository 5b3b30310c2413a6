"""The library's layering (DESIGN §2), checked on its source: which parts of ``alignsam_diag``
may import which, no import cycle (lazy imports in function bodies included), ``store/`` never
loads ``analysis/``, and the library never imports the CLI (Typer, Rich)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Iterable, Mapping


import alignsam_diag

LIBRARY = Path(alignsam_diag.__file__).parent
ROOT = "alignsam_diag"

#: The library's parts (subpackages and top-level modules; "" is ``alignsam_diag/__init__.py``),
#: lowest layer first. A module may import its own part and the parts of lower layers only, so
#: parts in one layer never import each other (``models`` and ``data``, ``store`` and ``optim``...).
LAYERS = [
    {"", "errors"},
    {"files", "memory", "progress", "registry"},
    {"distributed"},  # torch.distributed for the commands that scale out; rank 0 alone locks and writes files
    {"landscape_types", "spectrum_types"},  # result and option types shared by the engines and the store
    {"data", "models", "optim", "store"},
    {"analysis", "inputs"},
    {"train_distributed"},  # the training loop's pieces for several ranks
    {"train"},  # calls analysis.tracking every step
    {"plots", "sweep"},
    {"demo"},  # the main job: runs every stage
]
#: Imports the library must never make: the CLI and its libraries.
CLI_ONLY = ("typer", "rich", "click", f"{ROOT}.cli")


def module_name(path: Path) -> str:
    parts = [ROOT, *path.relative_to(LIBRARY).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def library_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(LIBRARY.rglob("*.py"))}


def _imported_by(node: ast.ImportFrom, package: list[str]) -> str:
    """The module a ``from X import ...`` reads from, relative imports resolved against
    ``package`` (the dotted name of the importing module's package, as a list)."""
    if not node.level:
        return str(node.module)
    return ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))


def _type_checking_only(tree: ast.Module) -> set[int]:
    """The ids of the nodes inside ``if TYPE_CHECKING:`` blocks (never run)."""
    blocks = [n for n in ast.walk(tree) if isinstance(n, ast.If)
              and ast.unparse(n.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")]
    return {id(node) for block in blocks for statement in block.body for node in ast.walk(statement)}


def imported_modules(name: str, path: Path, *, type_checking: bool = True) -> set[str]:
    """Every module ``name`` (the source file ``path``) imports anywhere in its source, function
    bodies included, and ``if TYPE_CHECKING:`` blocks unless ``type_checking`` is False;
    ``from PKG import sub`` counts as importing the library module ``PKG.sub`` where there is one."""
    modules = library_modules()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text(), str(path))
    skipped = set() if type_checking else _type_checking_only(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _imported_by(node, package)
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return found


@cache
def import_graph(type_checking: bool = True) -> dict[str, frozenset[str]]:
    """Library module -> the library modules it imports (see :func:`imported_modules`)."""
    modules = library_modules()
    return {name: frozenset(m for m in imported_modules(name, path, type_checking=type_checking)
                            if m in modules and m != name)
            for name, path in modules.items()}


def part(module: str) -> str:
    """The part of the library a module belongs to: ``alignsam_diag.store.h5io`` -> ``store``."""
    return module.split(".")[1] if "." in module else ""


def layer(module: str) -> int:
    return next(i for i, parts in enumerate(LAYERS) if part(module) in parts)


def upward_imports(graph: Mapping[str, Iterable[str]]) -> set[tuple[str, str]]:
    """(module, imported) pairs that import another part of the same or a higher layer."""
    return {(m, t) for m, targets in graph.items() for t in targets if part(t) != part(m) and layer(t) >= layer(m)}


def import_cycles(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Each cycle a depth-first walk of ``graph`` closes, as ``a -> b -> a``."""
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "closed"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_every_part_of_the_library_has_a_layer():
    parts, placed = {part(m) for m in library_modules()}, set().union(*LAYERS)
    assert parts - placed == set(), "add the new part to LAYERS"
    assert placed - parts == set(), "LAYERS names a part that does not exist"


def test_imports_go_down_the_layers_only():
    assert sorted(upward_imports(import_graph())) == [], "an import goes up or sideways in LAYERS"


def test_the_module_import_graph_has_no_cycle():
    """Lazy imports in function bodies count (they hide a cycle, they do not remove it); an
    annotation's ``if TYPE_CHECKING:`` import never runs and does not."""
    assert import_cycles(import_graph(type_checking=False)) == []


def test_the_checks_catch_lazy_upward_imports_and_cycles(tmp_path):
    """The rules can fail: the import that made issue 13's cycle, written lazily in a store
    function, is found, resolved and refused, and so is the cycle it closes."""
    probe = tmp_path / "landscape.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .spectrum import EigsRecord\n"
                     "def read():\n    from ..analysis.directions import NORMS\n    from . import h5io\n")
    store, directions = f"{ROOT}.store.landscape", f"{ROOT}.analysis.directions"
    found = imported_modules(store, probe, type_checking=False)
    assert found == {"typing", directions, f"{ROOT}.store.h5io"}
    assert imported_modules(store, probe) == found | {f"{ROOT}.store.spectrum"}
    assert upward_imports({store: found}) == {(store, directions)}
    assert import_cycles({store: {directions}, directions: {store}}) == [f"{directions} -> {store} -> {directions}"]


def test_the_library_never_imports_the_cli():
    offending = sorted((m, t) for m, path in library_modules().items() for t in imported_modules(m, path)
                       if any(t == cli or t.startswith(f"{cli}.") for cli in CLI_ONLY))
    assert offending == []


def loaded_after_import(modules: list[str]) -> list[str]:
    """The library modules a fresh interpreter holds after importing ``modules``."""
    code = (f"import importlib, json, sys\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({ROOT!r}))))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


STORE_MODULES = sorted(m for m in library_modules() if part(m) == "store")


def test_importing_the_store_loads_no_analysis_module():
    """In a fresh interpreter."""
    assert [m for m in loaded_after_import(STORE_MODULES) if part(m) == "analysis"] == []
