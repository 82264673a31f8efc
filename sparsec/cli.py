"""The `sparsec` command line: compile, inspect, run, and list passes and presets.

Example:
    sparsec compile examples.models:small_cnn --input 1x3x32x32 --out artifacts/cnn
    sparsec compile examples.models:mlp --input 2x64 --pipeline unstructured-50 \
        --backend tvm --backend-option mode=relax --backend-option dense_threads=1
    sparsec inspect artifacts/cnn
    sparsec run artifacts/cnn --input x.npy --output y.npy
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from sparsec.errors import SparsecError

if TYPE_CHECKING:  # torch loads when a command runs: `sparsec --help` stays quick
    import torch

__all__ = ["app", "load_model_factory", "parse_backend_options", "parse_input_spec"]

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, help="sparsec: a compiler for sparse neural networks.")
console = Console(stderr=True)

_DTYPES = ("float32", "float16", "int64", "int32", "bool")  # torch's names for --input


def parse_input_spec(spec: str) -> torch.Tensor:
    """`1x3x32x32` (float32), `2x16:int64` (token ids in [0, 2)), `2x16:int64:1000` (ids < 1000)."""
    import torch

    shape_text, *rest = spec.split(":")
    try:
        shape = [int(s) for s in shape_text.lower().split("x")]
    except ValueError:
        raise SparsecError(f"bad --input {spec!r}: the shape must look like 1x3x32x32") from None
    dtype_name = rest[0] if rest else "float32"
    if dtype_name not in _DTYPES:
        raise SparsecError(f"bad --input {spec!r}: dtype {dtype_name!r} is not one of {', '.join(_DTYPES)}")
    dtype = getattr(torch, dtype_name)
    generator = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    try:
        high = int(rest[1]) if len(rest) > 1 else 2
    except ValueError:
        raise SparsecError(
            f"bad --input {spec!r}: the bound {rest[1]!r} must be an integer, e.g. 2x16:int64:1000"
        ) from None
    if high < 1 or any(s < 1 for s in shape):
        raise SparsecError(f"bad --input {spec!r}: sizes and the bound must be positive")
    return torch.randint(0, high, shape, generator=generator).to(dtype)


def parse_backend_options(items: list[str]) -> dict[str, Any]:
    """`["tune_trials=64", "mode=relax"]` → `{"tune_trials": 64, "mode": "relax"}`.

    Rules:
    - each item is `key=value`; a key given twice is an error;
    - values read as in pipeline text: integers, numbers, true/false, none, else a string
      (quote it, `tuning_dir='123'`, to keep digits a string); whether they fit the backend
      is checked with the pipeline file's rules.
    """
    from sparsec.config._pipeline_text import parse_literal
    from sparsec.errors import ConfigError

    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"bad --backend-option {item!r}: expected key=value, e.g. tune_trials=64"
            )
        if key in options:
            raise ConfigError(f"--backend-option {key} is given twice")
        options[key] = parse_literal(value)
    return options


def load_model_factory(reference: str) -> torch.nn.Module:
    """`package.module:factory` → the module the factory returns (or the module attribute)."""
    import torch

    model = _load_reference(reference, "model", "examples.models:small_cnn")
    if not isinstance(model, torch.nn.Module):
        raise SparsecError(f"{reference} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_calibration(reference: str) -> Any:
    """`package.module:factory` → a `Calibration` or an iterable of input batches."""
    data = _load_reference(reference, "calibration", "mypkg.data:calibration")
    if not hasattr(data, "__iter__") and not hasattr(data, "batches"):
        raise SparsecError(
            f"{reference} returned {type(data).__name__}; expected a sparsec.calibration."
            "Calibration (batches and a loss, for gradient criteria) or an iterable of batches"
        )
    return data


def _load_reference(reference: str, what: str, example: str) -> Any:
    """The object `package.module:name` names, called if it is a factory."""
    import torch

    if ":" not in reference:
        raise SparsecError(f"bad {what} {reference!r}: use package.module:factory, e.g. {example}")
    module_name, attribute = reference.split(":", 1)
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SparsecError(f"cannot import {module_name!r} for model {reference!r}: {exc}") from exc
    finally:
        sys.path.pop(0)
    if not hasattr(module, attribute):
        raise SparsecError(f"module {module_name!r} has no attribute {attribute!r}")
    obj = getattr(module, attribute)
    if isinstance(obj, torch.nn.Module) or not callable(obj) or isinstance(obj, type) and not issubclass(obj, torch.nn.Module):
        return obj
    try:
        return obj()
    except TypeError as exc:
        raise SparsecError(
            f"{reference} cannot be called without arguments ({exc}). Fix: point at a factory "
            f"that takes none, e.g. a function in your own module that builds the {what}"
        ) from exc


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=1)


@app.command("compile")
def compile_command(
    model: Annotated[str, typer.Argument(help="package.module:factory returning an nn.Module, or a model.onnx file")],
    input: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="example input: 1x3x32x32[:dtype[:high]] (optional for .onnx files)"),
    ] = None,
    out: Annotated[Path, typer.Option(help="artifact directory to write")] = Path("artifacts/model"),
    pipeline: Annotated[str, typer.Option(help="preset name, .toml/.yaml file, or pipeline text")] = "structured-50",
    target: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    backend: Annotated[str | None, typer.Option(help="onnxruntime, torch or tvm (default: per target)")] = None,
    backend_option: Annotated[
        list[str] | None,
        typer.Option(
            "--backend-option",
            help="backend option key=value, repeatable, e.g. mode=relax; overrides the pipeline file's backend_options table",
        ),
    ] = None,
    threads: Annotated[int | None, typer.Option(help="runtime threads")] = None,
    calibration: Annotated[
        str | None,
        typer.Option(help="package.module:factory returning a Calibration or batches, for data-aware passes"),
    ] = None,
    print_ir: Annotated[bool, typer.Option("--print-ir", help="print the IR after compiling")] = False,
    dump_ir: Annotated[Path | None, typer.Option(help="write numbered IR dumps per pass here")] = None,
    skip_pass: Annotated[
        list[str] | None,
        typer.Option("--skip-pass", help="leave this pass out (its name, e.g. prune-channels); repeatable"),
    ] = None,
    stop_after: Annotated[
        str | None, typer.Option(help="run no pass after this one (its name): bisects a pipeline")
    ] = None,
) -> None:
    """Compile a model into an artifact directory and print its report."""
    import sparsec
    from sparsec.config.resolve import resolve_pipeline
    from sparsec.frontends.onnx import is_onnx_source

    try:
        # options first: a typo fails in a second, before the model is imported and traced
        resolved = resolve_pipeline(
            pipeline, target=target, backend=backend,
            backend_options=parse_backend_options(backend_option or []),
            options_source="--backend-option",
        )
        module: Any = model if is_onnx_source(model) else load_model_factory(model)
        examples = tuple(parse_input_spec(s) for s in input or []) or None
        if examples is None and not is_onnx_source(model):
            raise SparsecError("--input is required for a torch model: e.g. --input 1x3x32x32")
        data = load_calibration(calibration) if calibration is not None else None
        with console.status("compiling") as status:
            compiled = sparsec.compile(
                module, examples, pipeline=resolved,
                threads=threads, dump_ir=dump_ir, calibration=data,
                skip_passes=skip_pass or (), stop_after=stop_after,
                progress=lambda m: (status.update(m), console.log(m)),
            )
            status.update("writing artifact")
            path = compiled.save(out)
    except SparsecError as exc:
        _fail(exc)
    if print_ir:
        typer.echo(str(compiled.graph))
    typer.echo(compiled.report.to_markdown())
    console.print(f"[green]artifact written to[/] {path}")


class _Engine(enum.StrEnum):
    """`sparsec.parallel.Engine` as a CLI choice."""

    auto = "auto"
    ray = "ray"
    sequential = "sequential"


@app.command("search")
def search_command(
    model: Annotated[str, typer.Argument(help="package.module:factory returning an nn.Module")],
    input: Annotated[list[str], typer.Option("--input", "-i", help="example input: 1x3x32x32[:dtype[:high]]")],
    calibration: Annotated[
        str, typer.Option(help="package.module:factory returning batches (a share is held out to score quality)")
    ],
    out: Annotated[Path, typer.Option(help="directory for search.json, the Pareto plot and the artifacts")] = Path("artifacts/search"),
    budget: Annotated[float, typer.Option(help="largest relative quality drop, e.g. 0.01")] = 0.01,
    target: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    recover: Annotated[bool, typer.Option("--recover", help="distil pruned candidates from the dense model")] = False,
    threads: Annotated[int, typer.Option(help="runtime threads, the same for every candidate")] = 1,
    repeats: Annotated[int, typer.Option(help="timed calls per candidate (median)")] = 30,
    time_budget: Annotated[float | None, typer.Option(help="seconds after which no new candidate starts")] = None,
    engine: Annotated[
        _Engine, typer.Option(help="where candidates compile and score: auto = Ray when installed")
    ] = _Engine.auto,
    address: Annotated[str | None, typer.Option(help="Ray cluster to join (auto, ray://host:10001); default: a local instance")] = None,
) -> None:
    """Find the fastest variant within a quality budget; resumes from OUT/search.json."""
    import sparsec

    try:
        module = load_model_factory(model)
        examples = tuple(parse_input_spec(s) for s in input)
        data = load_calibration(calibration)
        batches = data.batches if hasattr(data, "batches") else data
        with console.status("searching") as status:
            result = sparsec.search(
                module, examples, calibration=batches, budget=budget, target=target,
                recover=recover, threads=threads, repeats=repeats, time_budget_s=time_budget,
                results=out / "search.json", work_dir=out / "candidates",
                progress=lambda m: (status.update(m), console.log(m)),
                engine=engine.value, address=address,
            )
    except SparsecError as exc:
        _fail(exc)
    typer.echo("| candidate | quality | drop | ms | |\n|---|---:|---:|---:|---|")
    front = {m.name for m in result.front}
    for m in result.measured:
        if m.ok:
            mark = "chosen" if result.chosen and m.name == result.chosen.name else ("front" if m.name in front else "")
            typer.echo(f"| {m.name} | {m.quality:.4f} | {m.drop:.2%} | {m.ms:.3f} | {mark} |")
        else:
            typer.echo(f"| {m.name} | failed: {m.error} | | | |")
    typer.echo(result.message)
    if result.skipped:
        typer.echo(f"not started (time budget): {', '.join(result.skipped)}")
    if result.plot is not None:
        console.print(f"[green]Pareto plot:[/] {result.plot}")
    console.print(f"[green]results:[/] {out / 'search.json'}")


@app.command()
def inspect(directory: Annotated[Path, typer.Argument(help="artifact directory")]) -> None:
    """Show an artifact's manifest summary and report."""
    from sparsec.artifact import verify_artifact

    try:
        manifest = verify_artifact(directory)
    except SparsecError as exc:
        _fail(exc)
    summary = {k: manifest[k] for k in ("format_version", "target", "backend", "inputs", "outputs", "versions") if k in manifest}
    typer.echo(json.dumps(summary, indent=2))
    report = directory / "report.md"
    if report.exists():
        typer.echo(report.read_text())


@app.command()
def run(
    directory: Annotated[Path, typer.Argument(help="artifact directory")],
    input: Annotated[
        list[Path] | None, typer.Option("--input", "-i", help=".npy file per model input, in order")
    ] = None,
    random_input: Annotated[
        bool, typer.Option("--random-input", help="run on random inputs of the compiled signature")
    ] = False,
    dims: Annotated[
        str, typer.Option(help="sizes of the dynamic dims for --random-input")
    ] = "batch=2,seq=16",
    output: Annotated[Path | None, typer.Option(help="write the first output here (.npy)")] = None,
) -> None:
    """Run an artifact on .npy inputs (float32 unless the model was compiled otherwise)."""
    import numpy as np
    import torch

    import sparsec

    try:
        loaded = sparsec.load(directory)
        if (input is None) == (not random_input):
            raise SparsecError("give --input x.npy (one per model input) or --random-input")
        if input is not None:
            tensors = [torch.from_numpy(np.load(p, allow_pickle=False)) for p in input]
        else:
            tensors = random_inputs(loaded.manifest.get("inputs", []), dims)
        result = loaded(*tensors)
    except (SparsecError, OSError, ValueError) as exc:
        _fail(exc)
    leaves = [t for t in torch.utils._pytree.tree_leaves(result) if isinstance(t, torch.Tensor)]
    for k, t in enumerate(leaves):
        typer.echo(f"output {k}: shape {list(t.shape)} dtype {str(t.dtype).removeprefix('torch.')}")
    if output is not None and leaves:
        np.save(output, leaves[0].detach().numpy(), allow_pickle=False)
        console.print(f"[green]wrote[/] {output}")


def random_inputs(specs: list[dict[str, Any]], sizes: str) -> list[torch.Tensor]:
    """Random tensors for an artifact's inputs: `sizes` names the dynamic dims (batch=2,seq=16)."""
    import torch

    dims: dict[str, int] = {}
    for item in sizes.split(","):
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise SparsecError(f"bad --dims {sizes!r}: use name=size pairs, e.g. batch=4,seq=32")
        dims[name.strip()] = int(value)
    generator = torch.Generator().manual_seed(0)
    tensors = []
    for spec in specs:
        shape = [d if isinstance(d, int) else dims.get(str(d), 2) for d in spec["shape"]]
        dtype = getattr(torch, spec["dtype"])
        if dtype.is_floating_point:
            tensors.append(torch.randn(shape, generator=generator).to(dtype))
        else:
            tensors.append(torch.randint(0, 2, shape, generator=generator).to(dtype))
    return tensors


@app.command()
def passes() -> None:
    """List registered passes and their options."""
    from sparsec.config import registered_passes
    from sparsec.pipeline import Analysis

    for name, cls in sorted(registered_passes().items()):
        fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        kind = "analysis" if issubclass(cls, Analysis) else "rewrite"
        typer.echo(f"{name:28s} {kind:9s} {fields}")


@app.command()
def presets() -> None:
    """List pipeline presets."""
    from sparsec.config.presets import list_presets

    for name, description in list_presets().items():
        typer.echo(f"{name:16s} {description}")
