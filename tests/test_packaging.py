"""Packaging: `pip install .` and `pip install -e .` both provide sparsec, sparsec.passes and
sparsec.backends, and pyproject.toml lists every package directory."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_IMPORTS = (
    "import sparsec, sparsec.passes, sparsec.backends, sparsec.passes.rewrite.prune_channels, "
    "sparsec.backends.onnxruntime; print(sparsec.__file__, sparsec.passes.__file__, sparsec.backends.__file__)"
)


def _package_dirs() -> set[str]:
    roots = {"sparsec": "sparsec", "passes": "sparsec.passes", "backends": "sparsec.backends"}
    found = set()
    for root, name in roots.items():
        for init in (REPO / root).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / root)
            found.add(".".join([name, *rel.parts]))
    return found


def test_every_package_directory_is_listed() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    assert _package_dirs() == listed


def test_editable_install_imports_from_the_checkout() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS], capture_output=True, text=True, cwd="/", check=True
    )
    files = out.stdout.split()
    assert files[0].startswith(str(REPO / "sparsec"))
    assert files[1].startswith(str(REPO / "passes"))
    assert files[2].startswith(str(REPO / "backends"))


@pytest.mark.slow
def test_regular_install_imports_all_packages(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS], capture_output=True, text=True, cwd="/", env=env
    )
    assert out.returncode == 0, out.stderr
    for path in out.stdout.split():
        assert path.startswith(str(target)), path


def test_import_and_help_do_not_load_torch() -> None:
    """`sparsec --help` answers at once: the package's names load on first use."""
    code = (
        "import sys, sparsec, sparsec.cli\n"
        "assert 'torch' not in sys.modules, 'import sparsec loaded torch'\n"
        "import sparsec.driver\n"
        "assert callable(sparsec.compile) and sparsec.load.__name__ == 'read_artifact'\n"
        "assert 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    help_text = subprocess.run(
        [sys.executable, "-m", "sparsec", "--help"], check=True, capture_output=True, text=True, cwd=REPO
    ).stdout
    assert "compile" in help_text


def test_no_public_name_is_also_a_submodule() -> None:
    """Importing a submodule sets the package attribute of its name: a submodule called
    `recover` would replace the function `sparsec.recover` once anything imported it."""
    import sparsec

    submodules = {path.stem for path in (REPO / "sparsec").iterdir() if path.suffix == ".py" or path.is_dir()}
    assert not set(sparsec.__all__) & submodules
