"""sparsify_checkpoint: a tiny LLaMA sharded over two safetensors files, streamed block by
block, equals the whole-graph sparsify pass; the output loads in transformers and sparsec;
a missing shard and a too-short calibration stream are named errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sparsec.calibration import Calibration, token_windows
from sparsec.errors import CalibrationError, CheckpointError, PreconditionError
from sparsec.frontends import trace
from sparsec.ir import Graph
from sparsec.passes.rewrite import Sparsify
from sparsec.pipeline import AnalysisManager, PassManager
from sparsec.streaming import INDEX, REPORT, sparsify_checkpoint

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
        use_cache=False,
    )
    return transformers.LlamaForCausalLM(config).eval()


def _calibration() -> Calibration:
    stream = torch.randint(0, 96, (400,), generator=torch.Generator().manual_seed(1))
    return token_windows(stream, window=12, count=2, batch=2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model's checkpoint on disk, in two shards."""
    path = tmp_path_factory.mktemp("llama")
    _model().save_pretrained(path, max_shard_size="64KB")
    shards = set(json.loads((path / INDEX).read_text())["weight_map"].values())
    assert len(shards) == 2, shards
    return path


@pytest.fixture(scope="module")
def traced() -> Graph:
    """The same model's traced graph: the whole-graph (in-memory) reference."""
    return trace(_model(), _calibration().batches[0])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in path.glob("*.safetensors"):
        tensors.update(safetensors_torch.load_file(str(shard)))
    return tensors


@pytest.mark.parametrize(
    "spec",
    [
        Sparsify(method="wanda", sparsity=0.5, ignore=("lm_head",)),
        Sparsify(method="sparsegpt", pattern="nm", n=2, m=4, ignore=("lm_head",)),
    ],
    ids=["wanda-50", "sparsegpt-2:4"],
)
def test_streamed_equals_the_whole_graph_pass(
    checkpoint: Path, traced: Graph, tmp_path: Path, spec: Sparsify
) -> None:
    path = checkpoint
    calibration = _calibration()
    lines: list[str] = []
    result = sparsify_checkpoint(path, tmp_path / "out", calibration, spec, progress=lines.append)
    assert len(lines) == len(result.blocks) == 2
    streamed = _weights(tmp_path / "out")

    graph = traced.copy()
    PassManager([spec]).run(graph, AnalysisManager(graph, calibration))
    expected = graph.module.state_dict()
    assert set(streamed) == set(_weights(path))
    for name, tensor in streamed.items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    q = streamed["model.layers.1.self_attn.q_proj.weight"]
    assert float((q == 0).float().mean()) == pytest.approx(0.5)
    rows = {row["layer"]: row for row in result.layers}
    assert rows["model.layers.1.mlp.down_proj.weight"]["sparsity"] == pytest.approx(0.5)
    assert len(rows) == 2 * 7


def test_output_loads_in_transformers_and_sparsec(
    checkpoint: Path, tmp_path: Path
) -> None:
    from sparsec.hf import from_pretrained

    path = checkpoint
    out = tmp_path / "out"
    sparsify_checkpoint(path, out, _calibration(), Sparsify(method="wanda", pattern="nm"))
    ids = _calibration().batches[0]["input_ids"]
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    weight = loaded.model.layers[0].mlp.up_proj.weight
    assert weight.reshape(-1, 4).ne(0).sum(1).max() <= 2  # 2:4 kept through save and load
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, from_pretrained(out)(input_ids=ids).logits)
    report = json.loads((out / REPORT).read_text())
    assert report["pass"].startswith("sparsify{") and len(report["blocks"]) == 2
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_a_missing_shard_is_named_with_the_fix(
    checkpoint: Path, tmp_path: Path
) -> None:
    path = checkpoint
    broken = tmp_path / "broken"
    broken.mkdir()
    shards = sorted(set(json.loads((path / INDEX).read_text())["weight_map"].values()))
    for file in path.iterdir():
        if file.name != shards[-1]:
            (broken / file.name).write_bytes(file.read_bytes())
    with pytest.raises(CheckpointError, match=rf"shard .*{shards[-1]} is missing.*Fix: copy or download all {len(shards)} shards"):
        sparsify_checkpoint(broken, tmp_path / "out", _calibration())
    assert not (tmp_path / "out").exists()


def test_a_calibration_stream_shorter_than_the_window_is_refused() -> None:
    with pytest.raises(CalibrationError, match="has 10 tokens, fewer than one window of 16; fix"):
        token_windows(torch.arange(10), window=16, count=2)


def test_no_calibration_batches_and_no_calibration(
    checkpoint: Path, tmp_path: Path
) -> None:
    path = checkpoint
    with pytest.raises(CalibrationError, match="no batches"):
        sparsify_checkpoint(path, tmp_path / "a", Calibration([]))
    with pytest.raises(PreconditionError, match="needs calibration data"):
        sparsify_checkpoint(path, tmp_path / "b", None, Sparsify(method="sparsegpt"))
    # magnitude reads no data: the blocks stream without a forward pass
    result = sparsify_checkpoint(path, tmp_path / "c", None, Sparsify(method="magnitude"))
    assert all(row["sparsity"] == pytest.approx(0.5) for row in result.layers)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_block_tensor_that_no_shard_holds_is_named(
    checkpoint: Path, tmp_path: Path
) -> None:
    path = checkpoint
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in path.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    index = json.loads((path / INDEX).read_text())
    del index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    (broken / INDEX).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"no shard .* holds model.layers.1.mlp.up_proj.weight .*Fix"):
        sparsify_checkpoint(broken, tmp_path / "out", _calibration())
