"""Backend options from pipeline files, compile() and the CLI: typed, located errors, round trips.

The file's `[backend_options]` table becomes the named backend's options object (`TvmOptions`
for "tvm"); errors read like pass-option errors (file:line, field, suggestion). One compile
per mode checks that the options reach the backend; nothing here runs meta-schedule tuning.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from config_files import ErrorCase, assert_located_error, config_error, write
from torch import nn

import sparsec
from sparsec.backends.base import (
    BackendEntry,
    backend_options_class,
    backends_with_options,
    register_backend,
)
from sparsec.cli import parse_backend_options
from sparsec.config import (
    backend_options_from_dict,
    dump_pipeline,
    load_pipeline,
    parse_pipeline_text,
    pipeline_from_dict,
)
from sparsec.config.resolve import resolve_pipeline
from sparsec.errors import ConfigError
from sparsec.pipeline import Pipeline

REPO = Path(__file__).resolve().parent.parent
SPARSE = "sparsify{pattern=block,block=[16,1],sparsity=0.75},lower-sparse-weights{gate=off}"


@pytest.fixture(scope="module")
def tvm():  # type: ignore[no-untyped-def]
    """The TVM backend module (TvmOptions, TvmMode); skips where apache-tvm is not installed."""
    pytest.importorskip("tvm")
    from sparsec.backends.tvm import backend

    return backend


TOML = """\
target = "cpu"
backend = "tvm"

[backend_options]
mode = "relax"
tune_trials = 64
tune_search = "replay-trace"
tuning_dir = "/tmp/sparsec-tuning"

[[passes]]
name = "sparsify"
"""

YAML = """\
target: cpu
backend: tvm
backend_options:
  mode: relax
  tune_trials: 64
  tune_search: replay-trace
  tuning_dir: /tmp/sparsec-tuning
passes:
  - name: sparsify
"""


@pytest.mark.parametrize(("name", "text"), [("p.toml", TOML), ("p.yaml", YAML)])
def test_table_parses_into_tvm_options(tmp_path: Path, tvm, name: str, text: str) -> None:  # type: ignore[no-untyped-def]
    pipeline = load_pipeline(write(tmp_path, name, text))
    assert pipeline.backend == "tvm"
    assert pipeline.backend_options == tvm.TvmOptions(
        mode=tvm.TvmMode.RELAX,
        tune_trials=64,
        tune_search=tvm.SearchStrategy.RANDOM,
        tuning_dir=Path("/tmp/sparsec-tuning"),
    )
    assert isinstance(pipeline.backend_options.tuning_dir, Path)


TOML_CASES: dict[str, ErrorCase] = {
    "unknown key": (
        """\
        backend = "tvm"
        [backend_options]
        mode = "relax"
        tune_trial = 64
        """,
        4,
        "backend_options.tune_trial",
        ["unknown option 'tune_trial' of backend 'tvm'", "did you mean 'tune_trials'?"],
    ),
    "string for an integer": (
        """\
        backend = "tvm"

        [backend_options]
        dense_threads = "two"
        """,
        4,
        "backend_options.dense_threads",
        ["got 'two'", "expected an integer or none"],
    ),
    "bool for an integer": (
        """\
        backend = "tvm"
        [backend_options]
        tune_trials = true
        """,
        3,
        "backend_options.tune_trials",
        ["got True", "expected an integer"],
    ),
    "enum typo": (
        """\
        backend = "tvm"
        [backend_options]
        mode = "relx"
        """,
        3,
        "backend_options.mode",
        ["expected one of 'partitioned', 'relax'", "did you mean 'relax'?"],
    ),
    "rejected by TvmOptions": (
        """\
        backend = "tvm"
        [backend_options]
        cuda_arch = "sm_90"
        tune_trials = 64
        """,
        4,
        "backend_options.tune_trials",
        ["backend 'tvm' rejected its options", "needs mode=TvmMode.RELAX"],
    ),
    "top-level key after the table": (
        """\
        backend = "tvm"
        [backend_options]
        mode = "relax"
        target = "cpu"
        """,
        4,
        "backend_options.target",
        ["unknown option 'target'", "top-level keys go before the first table"],
    ),
    "dotted keys": (
        """\
        backend = "tvm"
        backend_options.mdoe = "relax"
        """,
        2,
        "backend_options.mdoe",
        ["did you mean 'mode'?"],
    ),
}


@pytest.mark.parametrize("case", list(TOML_CASES))
def test_toml_errors(tmp_path: Path, tvm, case: str) -> None:  # type: ignore[no-untyped-def]
    assert_located_error(tmp_path, "bad.toml", TOML_CASES[case])


def test_yaml_errors_have_lines_and_are_reported_together(tmp_path: Path, tvm) -> None:  # type: ignore[no-untyped-def]
    path = write(
        tmp_path,
        "bad.yaml",
        """\
        backend: tvm
        backend_options:
          mode: relax
          tune_trails: 64
          tuning_dir: 3
        """,
    )
    message = config_error(path)
    assert message.startswith(f"2 problems in {path}:")
    assert f"{path}:4: backend_options.tune_trails: unknown option" in message
    assert "did you mean 'tune_trials'?" in message
    assert (
        f"{path}:5: backend_options.tuning_dir: got 3; expected a path (a string) or none"
        in message
    )


def test_table_without_backend(tmp_path: Path) -> None:
    path = write(tmp_path, "p.toml", '[backend_options]\nmode = "relax"\n')
    message = config_error(path)
    assert f"{path}:1: backend_options: backend options need a backend: name it" in message
    assert "backends with options: 'onnxruntime', 'tvm'" in message


def test_backends_without_options_refuse_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "backend: torch\nbackend_options:\n  threads: 2\n")
    message = config_error(path)
    assert f"{path}:2: backend_options: backend 'torch' takes no options" in message


def test_onnxruntime_options_are_checked(tmp_path: Path) -> None:
    path = write(
        tmp_path, "p.yaml", "backend: onnxruntime\nbackend_options:\n  quantize: int4\n"
    )
    message = config_error(path)
    assert f"{path}:3: backend_options.quantize" in message
    assert "dynamic" in message and "static" in message


def test_not_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, "p.toml", 'backend = "tvm"\nbackend_options = "relax"\n')
    assert f"{path}:2: backend_options: must be a table" in config_error(path)


def test_tvm_is_imported_only_for_tvm_options() -> None:
    code = (
        "import sys\n"
        "from sparsec.config import pipeline_from_dict\n"
        "pipeline_from_dict({'backend': 'onnxruntime', 'backend_options': {}})\n"
        "pipeline_from_dict({'backend': 'tvm'})\n"
        "assert 'tvm' not in sys.modules, 'config imported tvm'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_round_trips(tmp_path: Path, tvm, suffix: str) -> None:  # type: ignore[no-untyped-def]
    options = tvm.TvmOptions(mode=tvm.TvmMode.RELAX, tune_trials=8, tuning_dir=Path("/tmp/t"))
    passes = parse_pipeline_text(SPARSE).passes
    pipeline = Pipeline(passes, backend="tvm", backend_options=options)
    path = tmp_path / ("out" + suffix)
    dump_pipeline(pipeline, path)
    assert load_pipeline(path) == pipeline
    # the manifest's form reads back, and so does text plus the options beside it
    data = pipeline.to_dict()
    assert data["backend_options"]["mode"] == "relax"
    assert data["backend_options"]["tuning_dir"] == "/tmp/t"
    assert pipeline_from_dict(json.loads(json.dumps(data))) == pipeline
    assert (
        parse_pipeline_text(str(pipeline), backend="tvm", backend_options=data["backend_options"])
        == pipeline
    )


def test_dump_refuses_a_none_toml_cannot_hold(tmp_path: Path, tvm) -> None:  # type: ignore[no-untyped-def]
    pipeline = Pipeline([], backend="tvm", backend_options=tvm.TvmOptions(dense_threads=None))
    with pytest.raises(ConfigError, match="dense_threads is None, which TOML cannot hold"):
        dump_pipeline(pipeline, tmp_path / "p.toml")
    dump_pipeline(pipeline, tmp_path / "p.yaml")
    assert load_pipeline(tmp_path / "p.yaml") == pipeline


def test_resolve_merges_and_checks(tmp_path: Path, tvm) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, "p.toml", TOML)
    merged = resolve_pipeline(path, backend_options={"tune_trials": 8, "dense_threads": 2})
    assert merged.backend_options == tvm.TvmOptions(
        mode=tvm.TvmMode.RELAX,
        dense_threads=2,
        tune_trials=8,
        tune_search=tvm.SearchStrategy.RANDOM,
        tuning_dir=Path("/tmp/sparsec-tuning"),
    )
    plain = resolve_pipeline("none", backend="tvm", backend_options={"mode": "relax"})
    assert plain.backend_options == tvm.TvmOptions(mode=tvm.TvmMode.RELAX)
    with pytest.raises(ConfigError, match="overrides the pipeline's backend 'tvm'"):
        resolve_pipeline(path, backend="onnxruntime")
    with pytest.raises(
        ConfigError, match=r"^--backend-option: backend_options.tune_trial: .*'tune_trials'"
    ):
        resolve_pipeline(path, backend_options={"tune_trial": 1}, options_source="--backend-option")
    with pytest.raises(ConfigError, match="backend options need a backend"):
        resolve_pipeline("none", backend_options={"mode": "relax"})
    with pytest.raises(ConfigError, match="unknown option 'mode' of backend 'onnxruntime'"):
        backend_options_from_dict("onnxruntime", {"mode": "relax"})
    with pytest.raises(ConfigError, match="are TvmOptions, but backend 'torch' takes no options"):
        resolve_pipeline(Pipeline([], backend="torch", backend_options=tvm.TvmOptions()))


def test_pipeline_options_need_a_backend_and_a_dataclass() -> None:
    with pytest.raises(ConfigError, match="need a backend"):
        Pipeline([], backend_options=object())
    with pytest.raises(ConfigError, match="not dict"):
        Pipeline([], backend="tvm", backend_options={"mode": "relax"})


def test_cli_option_parsing() -> None:
    assert parse_backend_options(
        ["tune_trials=64", "mode=relax", "dense_threads=none", "tuning_dir='123'"]
    ) == {"tune_trials": 64, "mode": "relax", "dense_threads": None, "tuning_dir": "123"}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_backend_options(["tune_trials"])
    with pytest.raises(ConfigError, match="given twice"):
        parse_backend_options(["mode=relax", "mode=partitioned"])


class TinyMlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(64, 128)
        self.down = nn.Linear(128, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def test_compile_builds_the_backend_from_the_file(tmp_path: Path, tvm) -> None:  # type: ignore[no-untyped-def]
    from sparsec.backends.tvm.relax_executable import RelaxExecutable

    path = write(
        tmp_path,
        "tvm.yaml",
        """\
        backend: tvm
        backend_options:
          mode: relax
        passes:
          - name: sparsify
            pattern: block
            block: [16, 1]
            sparsity: 0.75
          - name: lower-sparse-weights
            gate: "off"
        """,
    )
    assert str(load_pipeline(path)) == str(parse_pipeline_text(SPARSE))
    compiled = sparsec.compile(TinyMlp().eval(), (torch.randn(2, 64),), pipeline=path)
    assert isinstance(compiled.executable, RelaxExecutable)
    assert compiled.report.backend_reason == "named in the pipeline with its backend_options"
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.allclose(compiled(x), compiled.module(x), atol=1e-4)
    manifest = json.loads((compiled.save(tmp_path / "a") / "manifest.json").read_text())
    assert manifest["pipeline"]["backend_options"]["mode"] == "relax"
    assert pipeline_from_dict(manifest["pipeline"]) == compiled.pipeline


def test_a_backend_object_wins_and_is_what_the_manifest_records(tmp_path: Path, tvm) -> None:  # type: ignore[no-untyped-def]
    from sparsec.backends.tvm.partitioned import PartitionedExecutable

    path = write(tmp_path, "p.toml", 'backend = "tvm"\n[backend_options]\nmode = "relax"\n')
    backend = tvm.TvmBackend(tvm.TvmOptions(dense_threads=2))
    # the file's options say relax; the object (partitioned, 2 dense threads) wins
    pipeline = resolve_pipeline(path)
    compiled = sparsec.compile(
        TinyMlp().eval(),
        (torch.randn(2, 64),),
        pipeline=Pipeline(
            parse_pipeline_text(SPARSE).passes,
            backend="tvm",
            backend_options=pipeline.backend_options,
        ),
        backend=backend,
    )
    assert isinstance(compiled.executable, PartitionedExecutable)
    assert compiled.pipeline.backend_options == tvm.TvmOptions(dense_threads=2)
    manifest = json.loads((compiled.save(tmp_path / "a") / "manifest.json").read_text())
    assert manifest["pipeline"]["backend_options"]["dense_threads"] == 2
    assert manifest["backend_metadata"]["dense_threads"] == 2
    with pytest.raises(ConfigError, match="both given"):
        sparsec.compile(
            TinyMlp(), pipeline="none", backend=backend, backend_options={"mode": "relax"}
        )


def test_cli_backend_options(tmp_path: Path, tvm) -> None:  # type: ignore[no-untyped-def]
    def sparsec_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "sparsec",
                "compile",
                "examples.models:mlp",
                "--input",
                "2x64",
                "--pipeline",
                SPARSE,
                "--backend",
                "tvm",
                *args,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )

    bad = sparsec_cli("--backend-option", "dense_thread=2", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 1
    error = " ".join(bad.stderr.split())
    assert "--backend-option: backend_options.dense_thread: unknown option" in error
    assert "did you mean 'dense_threads'?" in error
    out = tmp_path / "mlp"
    good = sparsec_cli("--backend-option", "dense_threads=2", "--out", str(out))
    assert good.returncode == 0, good.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "tvm"
    assert manifest["pipeline"]["backend_options"]["dense_threads"] == 2
    assert manifest["backend_metadata"]["dense_threads"] == 2


def test_a_backend_name_is_registered_once() -> None:
    with pytest.raises(ValueError, match="already registered as 'torch'"):
        register_backend("torch", BackendEntry("sparsec.backends.torch_backend:TorchBackend"))


def test_the_registry_names_each_backends_options() -> None:
    assert backends_with_options() == ("onnxruntime", "tvm")
    for name in backends_with_options():
        options = backend_options_class(name)
        assert options is not None and dataclasses.is_dataclass(options)
    assert backend_options_class("torch") is None
