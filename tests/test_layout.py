"""The package layout of docs/architecture.md: one-way imports between layers, no import circles,
every public name where it was, and the module paths of earlier releases still importable."""
from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

import sparsekern
from sparsekern._moved import MOVED

ROOT = pathlib.Path(sparsekern.__file__).parent
# cli -> pruning -> nn -> ops -> backends; models and data sit beside nn (pruning and cli use them),
# integrations (the HF / Lightning callbacks) beside cli, on top of pruning
LAYERS = {"backends": 0, "ops": 1, "nn": 2, "models": 2, "data": 2, "pruning": 3, "cli": 4, "integrations": 4}
# inside pruning: train -> methods -> control -> surgery -> defaults, atomic_files
PRUNING_LAYERS = {"defaults": 0, "atomic_files": 0, "surgery": 1, "control": 2, "methods": 3, "train": 4}


def _module_name(path: pathlib.Path) -> str:
    parts = ("sparsekern",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}
EXTENSIONS = {"sparsekern._C"}  # compiled: a leaf


def _imports(name: str) -> set[str]:
    """The sparsekern modules ``name`` imports anywhere in its body (lazy imports count too)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for a in node.names:  # ``from pkg import sub`` depends on the submodule, not on pkg's __init__
                sub = f"{base}.{a.name}"
                found.add(sub if sub in MODULES or sub in EXTENSIONS else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name) for name in MODULES}


def _rank(name: str) -> tuple[int, int] | None:
    parts = name.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        return None
    inner = PRUNING_LAYERS.get(parts[2], -1) if parts[1] == "pruning" and len(parts) > 2 else -1
    return LAYERS[parts[1]], inner


def test_the_graph_sees_known_edges():
    """The parser finds real imports (else the checks below would pass on an empty graph)."""
    assert "sparsekern.ops.api" in GRAPH["sparsekern.ops"]
    assert "sparsekern.pruning.surgery.sparsify" in GRAPH["sparsekern.pruning.methods.l0"]
    assert "sparsekern.backends.extension" in GRAPH["sparsekern.backends.registry"]
    assert len(MODULES) > 60


def test_no_import_circles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(GRAPH[name]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def test_imports_go_one_way():
    """A layer imports only itself and the layers below it (and so does each room of pruning)."""
    wrong = []
    for name, deps in GRAPH.items():
        mine = _rank(name)
        if mine is None:
            continue
        for dep in deps:
            theirs = _rank(dep)
            if theirs is None:
                continue
            same_top = name.split(".")[1] == dep.split(".")[1]
            if theirs[0] > mine[0] or (same_top and mine[1] >= 0 and theirs[1] > mine[1]):
                wrong.append(f"{name} -> {dep}")
    assert not wrong, "imports against the layering: " + ", ".join(sorted(wrong))


@pytest.mark.parametrize("package", ["sparsekern", "sparsekern.nn", "sparsekern.pruning", "sparsekern.ops",
                                     "sparsekern.backends", "sparsekern.data", "sparsekern.pruning.methods",
                                     "sparsekern.integrations"])
def test_every_public_name_imports(package):
    module = importlib.import_module(package)
    assert module.__all__
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.{name}"


def test_public_names_of_the_earlier_layout():
    """What users imported from the package and its submodules before the move."""
    import sparsekern as sk

    for name in ("soft_threshold", "gated_weight", "uniform", "use_backend", "sparsify", "regularization",
                 "TargetSparsity", "TargetLambda", "GMP", "finalize", "shrink_model", "recalibrate_bn",
                 "make_optimizers", "param_groups", "L0_LAMBDA", "ParameterEMA", "calibrate_gates"):
        assert getattr(sk, name) is not None
    for name in ("nn", "pruning", "reference", "backends", "ops", "selftest"):
        assert getattr(sk, name).__name__.startswith("sparsekern.")
    from sparsekern.pruning.trainer import PruneConfig, run_prune  # noqa: F401
    from sparsekern.pruning.recipes import clamp_log_alpha, sparsify_l0_paper  # noqa: F401
    from sparsekern.data import load_dataset  # noqa: F401


@pytest.mark.parametrize("old", sorted(MOVED))
def test_moved_module_paths_still_import(old):
    if old == "sparsekern.triton" or old.startswith("sparsekern.triton."):
        pytest.importorskip("triton")
    assert importlib.import_module(old) is importlib.import_module(MOVED[old])


def test_moved_paths_do_not_shadow_public_names():
    """Importing an old path binds it on its parent package: it must not replace a public name there."""
    for old in MOVED:
        parent, _, name = old.rpartition(".")
        assert name not in getattr(importlib.import_module(parent), "__all__", ()), old


def test_moved_paths_are_not_also_files():
    """An old path is only an alias: no second copy of a module lives there."""
    for old in MOVED:
        assert old not in MODULES, old
