"""Recovery by distillation: it lowers the student-teacher loss, trains in training mode, keeps
masks, restores the best weights, and what it trained is what the next call and save run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from zoo import VOCAB, ZOO, hf_available

import sparsec
from sparsec.errors import PreconditionError, RecoveryError


class Cnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU()
        )
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1)
        )
        self.drop = torch.nn.Dropout(0.1)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.body(self.stem(x)).flatten(1)))


class Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(16, 64), torch.nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _batches(count: int, shape: tuple[int, ...]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return [torch.randn(*shape, generator=generator) for _ in range(count)]


def _held_out_mse(student: torch.nn.Module, teacher: torch.nn.Module, x: torch.Tensor) -> float:
    student.eval()
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(student(x), teacher(x)))


def test_distillation_lowers_the_loss_and_the_next_call_runs_it(tmp_path: Path) -> None:
    teacher = Cnn().eval()
    batches = _batches(10, (8, 3, 8, 8))
    compiled = sparsec.compile(teacher, batches[0], pipeline="structured-50", backend="onnxruntime")
    before = compiled(batches[1])
    result = sparsec.recover(compiled, teacher=teacher, data=batches, steps=60, lr=3e-3)
    assert result.best_held_out < 0.7 * result.initial_held_out
    # restored to the best measurement: the held-out batch (the first) scores it
    assert _held_out_mse(compiled.module, teacher, batches[0]) == pytest.approx(
        result.best_held_out, rel=1e-4
    )
    after = compiled(batches[1])  # rebuilt from the trained weights
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, compiled.module(batches[1]), rtol=1e-4, atol=1e-5)
    loaded = sparsec.load(compiled.save(tmp_path / "recovered"))
    torch.testing.assert_close(loaded(batches[1]), after, rtol=1e-4, atol=1e-5)
    assert compiled.graph.module(batches[1]).shape == (8, 10)  # structure unchanged


def test_the_student_trains_in_training_mode_and_modes_are_restored() -> None:
    teacher = Cnn().eval()
    batches = _batches(4, (4, 3, 8, 8))
    compiled = sparsec.compile(teacher, batches[0], pipeline="structured-50", backend="torch")
    student = compiled.module
    seen: list[bool] = []
    student.drop.register_forward_hook(lambda module, args, out: seen.append(module.training))
    student.eval()
    sparsec.recover(compiled, teacher=teacher, data=batches, steps=3, eval_every=3)
    assert True in seen and False in seen  # steps in training mode, held-out loss in eval
    assert not student.training and not student.drop.training
    assert not teacher.training


def test_fine_grained_masks_are_kept() -> None:
    teacher = Mlp().eval()
    batches = _batches(6, (16, 16))
    compiled = sparsec.compile(
        teacher, batches[0], pipeline="sparsify{pattern=unstructured,sparsity=0.5}", backend="torch"
    )
    zero = compiled.module.fc1.weight.detach() == 0
    assert zero.float().mean() >= 0.5
    start = compiled.module.fc1.weight.detach().clone()
    sparsec.recover(compiled, teacher=teacher, data=batches, steps=10, lr=1e-2, eval_every=5)
    weight = compiled.module.fc1.weight.detach()
    assert bool((weight[zero] == 0).all())
    assert not torch.equal(weight, start)


def test_kl_loss_and_hidden_blocks() -> None:
    teacher = Mlp().eval()
    batches = _batches(6, (16, 16))
    compiled = sparsec.compile(
        teacher, batches[0], pipeline="sparsify{pattern=unstructured,sparsity=0.7}", backend="torch"
    )
    result = sparsec.recover(
        compiled, teacher=teacher, data=batches, steps=30, lr=1e-2, loss="kl", blocks=["fc1"]
    )
    assert result.best_held_out < result.initial_held_out


def test_early_stop_keeps_the_best_weights() -> None:
    teacher = Mlp().eval()
    batches = _batches(6, (16, 16))
    compiled = sparsec.compile(teacher, batches[0], pipeline="structured-50", backend="torch")
    result = sparsec.recover(
        compiled, teacher=teacher, data=batches, steps=200, lr=0.5, eval_every=1, patience=2
    )
    assert result.stopped_early and result.steps < 200
    assert _held_out_mse(compiled.module, teacher, batches[0]) == pytest.approx(
        result.best_held_out, rel=1e-4
    )


class TurnsNan(torch.nn.Module):
    """A teacher whose outputs turn NaN after `calls` calls: a loss that diverges on cue."""

    def __init__(self, model: torch.nn.Module, calls: int) -> None:
        super().__init__()
        self.model, self.calls = model, calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls -= 1
        out = self.model(x)
        return out if self.calls >= 0 else out * float("nan")


def test_a_diverging_loss_is_a_named_error_and_the_best_weights_stay() -> None:
    teacher = Mlp().eval()
    batches = _batches(4, (16, 16))
    compiled = sparsec.compile(teacher, batches[0], pipeline="structured-50", backend="torch")
    start = {k: v.clone() for k, v in compiled.module.state_dict().items()}
    with pytest.raises(RecoveryError, match="loss became nan at step 3.*weights of step 0"):
        sparsec.recover(compiled, teacher=TurnsNan(teacher, 3), data=batches, lr=1e-2)
    for name, value in compiled.module.state_dict().items():
        torch.testing.assert_close(value, start[name])
    with pytest.raises(RecoveryError, match="before training"):
        sparsec.recover(compiled, teacher=TurnsNan(teacher, 0), data=batches)


def test_bad_input_is_named() -> None:
    teacher = Mlp().eval()
    batches = _batches(3, (4, 16))
    compiled = sparsec.compile(teacher, batches[0], pipeline="structured-50", backend="torch")
    with pytest.raises(PreconditionError, match="at least 2 batches"):
        sparsec.recover(compiled, teacher=teacher, data=batches[:1])
    with pytest.raises(PreconditionError, match=r"blocks \['nope'\] are not submodules"):
        sparsec.recover(compiled, teacher=teacher, data=batches, blocks=["nope"])
    with pytest.raises(PreconditionError, match="block 'fc1' outputs"):
        sparsec.recover(compiled, teacher=teacher, data=batches, steps=2, blocks=["fc1"])


@pytest.mark.skipif(not hf_available("LlamaForCausalLM"), reason="transformers is not installed")
def test_a_causal_lm_distils_on_its_logits_with_kl() -> None:
    teacher, inputs = ZOO["llama-gqa"].build()
    compiled = sparsec.compile(teacher, inputs, pipeline="structured-50", backend="torch")
    generator = torch.Generator().manual_seed(3)
    ids = inputs["input_ids"]
    data = [
        {"input_ids": torch.randint(0, VOCAB, ids.shape, generator=generator)} for _ in range(6)
    ]
    result = sparsec.recover(
        compiled, teacher=teacher, data=data, steps=20, lr=3e-3, loss="kl", eval_every=5
    )
    assert result.best_held_out < result.initial_held_out
    assert type(compiled.module).__name__ == "LlamaForCausalLM"
    logits = compiled(**data[0]).logits  # the rebuilt program runs the distilled weights
    expected = compiled.module.eval()(**data[0]).logits
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
