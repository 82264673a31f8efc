"""Recovery by distillation: train the pruned model to match the dense one on unlabeled data.

Rules:
- the student is `compiled.module` (the user's module tree, which shares its tensors with
  the graph, so the next call or `save()` lowers what was trained) or any module; it trains
  in training mode (dropout on, BatchNorm learning), and each module's mode is restored
  afterwards; a traced graph module cannot switch modes and is refused with the fix;
- the teacher runs in eval mode without gradients, on the same batches;
- the loss compares every floating-point output leaf (HF `ModelOutput`s included):
  "mse", or "kl" (softmax over the last axis at `temperature`, scaled by T², for logits);
  `blocks` names submodules that exist in both models with outputs of the same shape,
  whose hidden states add `hidden_weight` × MSE; a named block whose shapes differ is
  refused, since a silent skip would train something else than asked;
- batches: the first `held_out` share (at least one batch) is held out; training cycles over
  the rest for `steps` AdamW steps, with linear warm-up over `warmup` of them and cosine
  decay to zero;
- every `eval_every` steps the held-out loss is measured; after `patience` measurements
  without improvement training stops early; the weights of the best measurement are put
  back at the end, so recovery never returns a model worse on held-out data than it got;
- fine-grained masks (`sparsify`) are kept (`preserve_masks`): pruned weights stay zero;
- a loss that turns NaN or infinite raises RecoveryError, after restoring the best weights;
- progress is a rich progress bar on a terminal (or when `progress=True`).

Example:
    compiled = sparsec.compile(model, x, pipeline="structured-50")
    result = sparsec.recover(compiled, teacher=model, data=batches, steps=300)
    compiled.save("artifacts/recovered")
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from rich.progress import Progress
from torch.utils import _pytree as pytree

from sparsec.calibration import Calibration
from sparsec.driver import CompiledModel
from sparsec.errors import PreconditionError, RecoveryError
from sparsec.ops.masks import recorded_masks
from sparsec.schedules import restore_modes, switch_mode
from sparsec.sparse_finetune import preserve_masks

__all__ = ["Recovery", "recover"]

Loss = Literal["mse", "kl"]
Inputs = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True)
class Recovery:
    """What a recovery run did: losses per step and on held-out data, and where it stopped."""

    steps: int
    best_step: int
    stopped_early: bool
    train_losses: list[float] = field(repr=False)
    held_out: list[tuple[int, float]]

    @property
    def initial_held_out(self) -> float:
        return self.held_out[0][1]

    @property
    def best_held_out(self) -> float:
        return min(loss for _, loss in self.held_out)


def _float_leaves(outputs: Any) -> list[torch.Tensor]:
    return [
        leaf
        for leaf in pytree.tree_leaves(outputs)
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point()
    ]


def _output_loss(student: Any, teacher: Any, loss: Loss, temperature: float) -> torch.Tensor:
    pairs = list(zip(_float_leaves(student), _float_leaves(teacher), strict=False))
    if not pairs or any(s.shape != t.shape for s, t in pairs):
        shapes = [(tuple(s.shape), tuple(t.shape)) for s, t in pairs]
        raise PreconditionError(
            f"the student's and teacher's floating-point outputs do not pair up ({shapes}); "
            "distillation compares them one to one. Fix: distil a model whose outputs keep "
            "their shapes (pruning keeps the model's output widths), or pass a wrapper that "
            "returns the outputs to match."
        )
    terms = []
    for s, t in pairs:
        if loss == "kl":
            log_p = torch.nn.functional.log_softmax(s / temperature, dim=-1)
            log_q = torch.nn.functional.log_softmax(t / temperature, dim=-1)
            kl = torch.nn.functional.kl_div(log_p, log_q, log_target=True, reduction="none")
            terms.append(kl.sum(-1).mean() * temperature**2)
        else:
            terms.append(torch.nn.functional.mse_loss(s, t))
    return torch.stack(terms).sum()


class _Hidden:
    """Forward hooks that keep the outputs of the named blocks of one model."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str], who: str) -> None:
        modules = dict(model.named_modules())
        missing = [name for name in names if name not in modules]
        if missing:
            raise PreconditionError(
                f"blocks {missing} are not submodules of the {who} ({type(model).__name__}). "
                "Fix: name modules present in both models, e.g. 'encoder.layer.0'."
            )
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[name].register_forward_hook(self._keep(name)) for name in names]

    def _keep(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            leaves = _float_leaves(output)
            if leaves:
                self.outputs[name] = leaves[0]

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _split(data: Iterable[Any], held_out: float) -> tuple[list[Inputs], list[Inputs]]:
    batches = list(data if isinstance(data, Calibration) else Calibration(data))
    if len(batches) < 2:
        raise PreconditionError(
            f"recovery needs at least 2 batches (one is held out for early stopping), got "
            f"{len(batches)}. Fix: pass more batches."
        )
    count = min(max(1, round(len(batches) * held_out)), len(batches) - 1)
    return batches[count:], batches[:count]


def _schedule(steps: int, warmup: float) -> Callable[[int], float]:
    warm = max(1, int(steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


@contextlib.contextmanager
def _bar(enabled: bool, steps: int) -> Iterator[Callable[[float], None]]:
    if not enabled:
        yield lambda loss: None
        return
    with Progress(transient=True) as progress:
        task = progress.add_task("recovering", total=steps)

        def advance(loss: float) -> None:
            progress.update(task, advance=1, description=f"recovering (loss {loss:.4g})")

        yield advance


def recover(
    model: CompiledModel | torch.nn.Module,
    *,
    teacher: torch.nn.Module,
    data: Iterable[Any],
    steps: int = 200,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    loss: Loss = "mse",
    temperature: float = 2.0,
    blocks: Sequence[str] = (),
    hidden_weight: float = 1.0,
    held_out: float = 0.1,
    eval_every: int = 20,
    patience: int = 3,
    warmup: float = 0.1,
    progress: bool | None = None,
) -> Recovery:
    """Distil `teacher` into the pruned `model` (see module rules); returns what happened."""
    if steps < 1 or eval_every < 1 or patience < 1 or lr <= 0 or temperature <= 0:
        raise PreconditionError(
            "recover needs steps, eval_every and patience >= 1, and lr and temperature > 0"
        )
    if loss not in ("mse", "kl"):
        raise PreconditionError(f"recover's loss must be 'mse' or 'kl', not {loss!r}")
    student = model.module if isinstance(model, CompiledModel) else model
    train, held = _split(data, held_out)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(steps, warmup))
    modes = {m: m.training for m in student.modules()}
    with contextlib.ExitStack() as stack:
        masks = stack.enter_context(_masks(model))
        hooks = (
            (_Hidden(student, blocks, "student"), _Hidden(teacher, blocks, "teacher"))
            if blocks
            else None
        )
        if hooks is not None:
            stack.callback(hooks[0].close)
            stack.callback(hooks[1].close)
        stack.callback(restore_modes, {m: m.training for m in teacher.modules()})
        stack.callback(restore_modes, modes)
        teacher.eval()

        def distil(inputs: Inputs) -> torch.Tensor:
            args, kwargs = inputs
            with torch.no_grad():
                expected = teacher(*args, **kwargs)
            value = _output_loss(student(*args, **kwargs), expected, loss, temperature)
            if hooks is not None:
                value = value + hidden_weight * _hidden_loss(*hooks)
            return value

        def evaluate() -> float:
            _set_training(student, False)
            with torch.no_grad():
                value = sum(float(distil(inputs)) for inputs in held) / len(held)
            _set_training(student, True)
            return value

        best = (evaluate(), 0, _snapshot(student))
        if not math.isfinite(best[0]):
            raise RecoveryError(
                f"the distillation loss is {best[0]} before training: the teacher's or the "
                "student's outputs are not finite on the held-out batches. Fix: check the "
                "models and the data."
            )
        history: list[tuple[int, float]] = [(0, best[0])]
        losses: list[float] = []
        stale, step = 0, 0
        _set_training(student, True)
        with torch.enable_grad(), _bar(_show(progress), steps) as advance:
            for step in range(1, steps + 1):
                value = distil(train[(step - 1) % len(train)])
                if not torch.isfinite(value):
                    _load(student, best[2])
                    raise RecoveryError(
                        f"the distillation loss became {float(value.detach())} at step {step}; the "
                        f"weights of step {best[1]} were restored. Fix: a lower lr (was {lr})."
                    )
                optimizer.zero_grad()
                value.backward()
                optimizer.step()
                scheduler.step()
                if masks is not None:
                    masks.reapply()
                losses.append(float(value.detach()))
                advance(losses[-1])
                if step % eval_every == 0 or step == steps:
                    current = evaluate()
                    history.append((step, current))
                    if current < best[0]:
                        best, stale = (current, step, _snapshot(student)), 0
                    else:
                        stale += 1
                        if stale >= patience:
                            break
        if best[1] != step:
            _load(student, best[2])
    return Recovery(
        steps=step,
        best_step=best[1],
        stopped_early=step < steps,
        train_losses=losses,
        held_out=history,
    )


def _hidden_loss(student: _Hidden, teacher: _Hidden) -> torch.Tensor:
    terms = []
    for name, hidden in student.outputs.items():
        expected = teacher.outputs[name]
        if hidden.shape != expected.shape:
            raise PreconditionError(
                f"block {name!r} outputs {tuple(hidden.shape)} in the student and "
                f"{tuple(expected.shape)} in the teacher; hidden-state distillation needs "
                "equal shapes. Fix: name blocks whose output width was not pruned, or drop "
                "`blocks`."
            )
        terms.append(torch.nn.functional.mse_loss(hidden, expected.detach()))
    return torch.stack(terms).sum()


def _masks(model: CompiledModel | torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
    """`preserve_masks` where `sparsify` recorded masks; nothing to keep otherwise."""
    module = model.graph.module if isinstance(model, CompiledModel) else model
    return preserve_masks(model) if recorded_masks(module) else contextlib.nullcontext()


def _show(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def _set_training(module: torch.nn.Module, training: bool) -> None:
    switch_mode(
        module,
        training,
        "recover compiled.to_module(), or see the report's note on why compiled.module is "
        "the graph module.",
    )


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _load(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        module.load_state_dict(state)
