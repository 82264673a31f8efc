"""Layers point down: a module imports only from its own layer and the layers below it.

Rules (ARCHITECTURE.md, "Layers"):
- core: `sparsec.errors`, `sparsec.ir`, `sparsec.pipeline`, and `sparsec.calibration`
  (the data the analysis manager hands to analyses);
- library: custom ops, front ends, metrics, the latency-model registry, program files...;
  they import only the core and each other;
- `sparsec.passes` and `sparsec.backends` import the core and the library, never each other
  and never the driver;
- the driver (`compile`, `artifact`, `cli`, configuration, ...) may import everything.
Every import counts: module level, inside functions, under TYPE_CHECKING, relative, and
`importlib.import_module("...")` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"sparsec": ROOT / "sparsec", "sparsec.passes": ROOT / "passes", "sparsec.backends": ROOT / "backends"}

CORE = ("sparsec.errors", "sparsec.ir", "sparsec.pipeline", "sparsec.calibration")
LIBRARY = (
    "sparsec._atomic",
    "sparsec.ops",
    "sparsec.frontends",
    "sparsec.metrics",
    "sparsec.signature",
    "sparsec.latency_model",
    "sparsec.gate_cache",
    "sparsec.program_files",
    "sparsec.parallel",
    "sparsec.nn",
)
PASSES = ("sparsec.passes",)
BACKENDS = ("sparsec.backends",)

# layer -> the layers it may import (its own included)
ALLOWED = {
    "core": {"core"},
    "library": {"core", "library"},
    "passes": {"core", "library", "passes"},
    "backends": {"core", "library", "backends"},
    "driver": {"core", "library", "passes", "backends", "driver"},
}


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer_of(module: str) -> str:
    for name, prefixes in (("core", CORE), ("library", LIBRARY), ("passes", PASSES), ("backends", BACKENDS)):
        if _within(module, prefixes):
            return name
    return "driver"


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            if package == "sparsec" and name.startswith(("sparsec.passes", "sparsec.backends")):
                continue
            found[name] = path
    return found


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return [(line, name) for line, name in found if name.split(".")[0] == "sparsec"]


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that `name` (a module, or a module plus attribute) names."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def violations() -> list[str]:
    modules = _modules()
    found = []
    for module, path in sorted(modules.items()):
        mine = layer_of(module)
        for line, name in _imports(module, path):
            target = _known(name, modules)
            if target is None or target == "sparsec":
                continue
            theirs = layer_of(target)
            if theirs not in ALLOWED[mine]:
                rel = path.relative_to(ROOT)
                found.append(f"{rel}:{line}: {mine} module {module} imports {theirs} module {target}")
    return sorted(set(found))


def test_layers_point_down() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        ("sparsec.ir.graph", "core"),
        ("sparsec.pipeline.pass_manager", "core"),
        ("sparsec.ops.masks", "library"),
        ("sparsec.passes.rewrite.sparsify", "passes"),
        ("sparsec.backends.tvm.kernels", "backends"),
        ("sparsec.driver", "driver"),
    ],
)
def test_layer_of(module: str, layer: str) -> None:
    assert layer_of(module) == layer


def test_the_check_sees_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A core module that imports a pass, inside a function, is found (the check can fail)."""
    core = tmp_path / "sparsec"
    (core / "ir").mkdir(parents=True)
    (core / "ir" / "__init__.py").write_text("")
    (core / "ir" / "bad.py").write_text(
        "def f():\n    from sparsec.passes.rewrite import sparsify\n    return sparsify\n"
    )
    passes = tmp_path / "passes" / "rewrite"
    passes.mkdir(parents=True)
    (passes.parent / "__init__.py").write_text("")
    (passes / "__init__.py").write_text("from . import sparsify\n")
    (passes / "sparsify.py").write_text("import importlib\nimportlib.import_module('sparsec.backends.x')\n")
    (tmp_path / "backends").mkdir()
    (tmp_path / "backends" / "x.py").write_text("")
    sources = {"sparsec": core, "sparsec.passes": tmp_path / "passes", "sparsec.backends": tmp_path / "backends"}
    monkeypatch.setitem(globals(), "SOURCES", sources)
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert violations() == [
        "passes/rewrite/sparsify.py:2: passes module sparsec.passes.rewrite.sparsify imports "
        "backends module sparsec.backends.x",
        "sparsec/ir/bad.py:2: core module sparsec.ir.bad imports passes module "
        "sparsec.passes.rewrite.sparsify",
    ]
