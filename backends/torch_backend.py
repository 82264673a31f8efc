"""The "torch" backend: run the graph's module eagerly; persist it as a pickle-free .pt2
(`sparsec.program_files`).

Example:
    executable = TorchBackend().lower(graph, "cpu", BackendOptions(threads=2))
    logits = executable(x)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.export import ExportedProgram
from torch.utils import _pytree as pytree

from sparsec.frontends import program_graph
from sparsec.parallel import torch_threads
from sparsec.program_files import PROGRAM_FILE, WEIGHTS_FILE, load_program, save_program

from .base import TARGETS, BackendOptions, Diagnostic, Executable, require_lowerable
from .semi_structured import lower_2_4

if TYPE_CHECKING:
    from sparsec.ir.graph import Graph

__all__ = ["TorchBackend", "TorchExecutable"]


class TorchExecutable:
    """Runs a torch module eagerly; on "cuda" with a GPU it runs a CUDA copy of it.

    On "cuda" it runs a CUDA copy of the graph whose 2:4 layers run on sparse tensor cores
    where the GPU and the layer allow it (the `semi-structured-2-4` lowering pass); the notes
    say which did and why the others did not.
    """

    def __init__(
        self,
        graph: Graph,
        program: Callable[[], ExportedProgram],
        target: str,
        threads: int | None = None,
        options: BackendOptions | None = None,
    ) -> None:
        self.notes: list[str] = []
        self._program = program
        self._target = target
        self._threads = threads
        self._device = torch.device("cpu")
        module: torch.nn.Module = graph.module
        if target == "cuda":
            if torch.cuda.is_available():
                self._device = torch.device("cuda")
            else:
                self.notes.append("torch has no CUDA device here; ran on CPU")
            module, notes = lower_2_4(graph, self._device, options or BackendOptions())
            self.notes.extend(notes)
        self._module = module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        def to_device(x: Any) -> Any:
            return x.to(self._device) if isinstance(x, torch.Tensor) else x

        args, kwargs = pytree.tree_map(to_device, (args, kwargs))
        with torch_threads(self._threads), torch.no_grad():
            return self._module(*args, **kwargs)

    def files(self) -> tuple[str, ...]:
        return (PROGRAM_FILE, WEIGHTS_FILE)

    def save(self, directory: Path) -> dict[str, Any]:
        save_program(self._program(), directory)
        return {"target": self._target, "threads": self._threads}


class TorchBackend:
    """Eager torch: the reference every other backend is compared with."""

    name = "torch"

    def supports(self, target: str) -> bool:
        return target in TARGETS

    def check(self, graph: Graph) -> list[Diagnostic]:
        return []

    def lower(self, graph: Graph, target: str, options: BackendOptions) -> Executable:
        require_lowerable(self, graph, target)
        return TorchExecutable(graph, graph.export_program, target, options.threads, options)

    def load(self, directory: Path, metadata: dict[str, Any]) -> Executable:
        program = load_program(directory)
        return TorchExecutable(
            program_graph(program),
            lambda: program,
            str(metadata["target"]),
            metadata.get("threads"),
        )
