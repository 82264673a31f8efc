"""Models that cannot be traced whole: compile their largest traceable parts, put them back.

Rules:
- one eager run of the model on the example inputs records each submodule's first inputs;
- from the root down, a submodule with parameters is compiled on its recorded inputs; where
  it cannot be traced, its children are tried instead; parts that never ran, hold no
  parameters or fail for another reason stay as they are, with the reason;
- a part's inputs and outputs are its model inputs and outputs, which dependency analysis
  never prunes, so every width that crosses a part boundary stays: nothing is guessed;
- the compiled parts (each the user's own module tree, or its graph module) replace the
  originals in a copy of the model, which runs eagerly; the report lists every part.

Example:
    compiled = sparsec.compile(detector, (images,), pipeline="structured-30")
    print(compiled.report.to_markdown())     # which parts were compiled, which were left
    boxes = compiled(images)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsec.errors import ArtifactError, SparsecError, TraceError
from sparsec.ir.inputs import normalize_inputs

__all__ = ["CompiledParts", "PartRow", "PartsReport", "compile_parts"]

CompilePart = Callable[[nn.Module, Any], Any]  # (module, example inputs) -> CompiledModel


@dataclass(frozen=True)
class PartRow:
    """One submodule: what happened to it and why."""

    name: str
    kind: str
    params_before: int
    params_after: int
    status: str  # "compiled" or "left as is: <reason>"


@dataclass
class PartsReport:
    """What a compile by parts did, with the reason the whole model was not traced."""

    model: str
    reason: str
    rows: list[PartRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        compiled = [r for r in self.rows if r.status == "compiled"]
        before = sum(r.params_before for r in compiled)
        after = sum(r.params_after for r in compiled)
        lines = [
            f"# sparsec report: {self.model} (compiled by parts)",
            "",
            f"- the whole model could not be traced: {self.reason.splitlines()[0]}",
            *[f"- {line}" for line in self.reason.splitlines()[1:] if line.startswith("Fix:")],
            f"- {len(compiled)} part(s) compiled: parameters {before:,} → {after:,}; the rest run as they were",
            "",
            "| part | class | params before → after | outcome |",
            "|---|---|---:|---|",
        ]
        lines += [f"| {r.name} | {r.kind} | {r.params_before:,} → {r.params_after:,} | {r.status} |" for r in self.rows]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _record_inputs(model: nn.Module, example_inputs: Any) -> dict[str, tuple[tuple[Any, ...], dict[str, Any]]]:
    """Each submodule's first call inputs in one eager run of the model."""
    names = {id(m): n for n, m in model.named_modules()}
    seen: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        name = names.get(id(module))
        if name is not None and name not in seen:
            seen[name] = (args, kwargs)

    handles = [m.register_forward_pre_hook(record, with_kwargs=True) for m in model.modules()]
    args, kwargs = normalize_inputs(example_inputs)
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _example(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs and not args:
        return kwargs
    if kwargs:
        raise TraceError("called with positional and keyword inputs")
    return args


@dataclass
class CompiledParts:
    """A model compiled by parts: call it like the original; `.module` runs eagerly."""

    module: nn.Module
    parts: dict[str, Any]  # part name -> CompiledModel
    report: PartsReport

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.module(*args, **kwargs)

    def to_module(self) -> nn.Module:
        return self.module

    def save(self, directory: str | Path) -> Path:
        """Save each compiled part as an artifact under `directory/<part name>`."""
        directory = Path(directory)
        if not self.parts:
            raise ArtifactError("no part was compiled, so there is no artifact to write")
        for name, part in self.parts.items():
            part.save(directory / name)
        return directory


def compile_parts(model: nn.Module, example_inputs: Any, compile_part: CompilePart, reason: str) -> CompiledParts:
    """Compile the largest traceable parts of `model` (see module rules)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        inputs = _record_inputs(model, example_inputs)
    except Exception as exc:  # the model does not even run eagerly: the trace error says why
        raise TraceError(reason) from exc
    finally:
        for module, training in modes.items():
            module.training = training
    report = PartsReport(type(model).__name__, reason)
    parts: dict[str, Any] = {}
    pending = [(f"{name}", child) for name, child in model.named_children()]
    while pending:
        name, module = pending.pop(0)
        before = _params(module)
        if before == 0:
            continue
        if name not in inputs:
            report.rows.append(PartRow(name, type(module).__name__, before, before, "left as is: not called on the example inputs"))
            continue
        try:
            compiled = compile_part(module, _example(*inputs[name]))
        except TraceError as exc:
            children = [(f"{name}.{child_name}", child) for child_name, child in module.named_children()]
            if children:
                pending[:0] = children
            else:
                status = f"left as is: cannot be traced ({str(exc).splitlines()[0][:200]})"
                report.rows.append(PartRow(name, type(module).__name__, before, before, status))
            continue
        except SparsecError as exc:
            report.rows.append(PartRow(name, type(module).__name__, before, before, f"left as is: {str(exc).splitlines()[0][:200]}"))
            continue
        parts[name] = compiled
        report.rows.append(PartRow(name, type(module).__name__, before, _params(compiled.module), "compiled"))
    if not parts:
        raise TraceError(f"{reason}\nNo part of it could be compiled either: {_reasons(report)}")
    # the copy takes the compiled parts in place of the originals (no second copy of them)
    memo: dict[int, Any] = {id(model.get_submodule(name)): part.module for name, part in parts.items()}
    whole = copy.deepcopy(model, memo)
    args, kwargs = normalize_inputs(example_inputs)
    flags = {m: m.training for m in whole.modules()}
    try:
        with torch.no_grad():
            whole.eval()(*args, **kwargs)
    except Exception as exc:  # a boundary the analysis could not see: refuse, never guess
        raise TraceError(
            f"{reason}\nCompiling its parts ({', '.join(parts)}) broke the whole model: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    finally:
        for module, training in flags.items():
            module.training = training
    report.rows.sort(key=lambda r: r.name)
    return CompiledParts(whole, parts, report)


def _reasons(report: PartsReport) -> str:
    return "; ".join(f"{r.name}: {r.status}" for r in report.rows[:5]) or "no submodule with parameters ran"
