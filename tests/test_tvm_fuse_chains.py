"""Chains of sparse linears that keep activations in panel layout (backends/tvm/fuse_chains.py).

- kernels: the first kernel writes the second's panel with bias and activation fused, the
  second reads it; the panel and y equal torch (fp32, atol 1e-4) for FEATURE and TOKEN
  schedules on either side, sparsities 0/50/90/100%, token counts 1, 7, 17 and 130 (tails
  and whole tiles), every activation, and a narrow vector; the panel's padding is NaN
  first, so a padding slot reaching y would show;
- the rewrite: fires on an FFN chain (graph text, changed flag, numbers), refuses with a
  reason when the intermediate has another user, fuses up → down → head once, and leaves
  a linear followed by a non-activation alone;
- builds: a small block-sparse BERT matches its pruned torch program end to end with its
  FFN chains fused (partitioned); Relax with `fuse_chains` calls the panel kernels and
  matches torch; a library built without chain kernels runs unfused and says so.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("tvm")

import tvm  # noqa: E402

import sparsec  # noqa: E402
from sparsec.backends.tvm.activations import Activation, reference_activation  # noqa: E402
from sparsec.backends.tvm.fuse_chains import ChainCall, FuseSparseChains, find_chains  # noqa: E402
from sparsec.backends.tvm.importer import chain_layouts, import_graph, kernel_for  # noqa: E402
from sparsec.backends.tvm.isa import AVX2, AVX512, isa_of  # noqa: E402
from sparsec.backends.tvm.kernels import (  # noqa: E402
    SLAB_FEATURES,
    BsrShape,
    KernelLayout,
    Schedule,
    bsr_kernel,
    choose_schedule,
    compile_config,
    panel_tile,
)
from sparsec.backends.tvm.partitioned import (  # noqa: E402
    BindTvmKernels,
    PartitionedExecutable,
    build_kernels,
    kernel_arrays,
)
from sparsec.backends.tvm.relax_executable import RelaxExecutable  # noqa: E402
from sparsec.backends.tvm.slabs import slab_major  # noqa: E402
from sparsec.backends.tvm.target import build_target, host_target  # noqa: E402
from sparsec.errors import ArtifactError, BackendError  # noqa: E402
from sparsec.frontends import trace  # noqa: E402
from sparsec.ir import Graph  # noqa: E402
from sparsec.ops import to_bsr  # noqa: E402
from sparsec.pipeline import AnalysisManager, PassResult  # noqa: E402

ATOL = 1e-4
IN, HIDDEN, OUT = 48, 320, 32  # HIDDEN: two slabs of the down kernel when TOKEN
TOKENS = (1, 7, 17, 130, 300)  # 130: two 64-token TOKEN tiles and eight 16-token FEATURE tiles + 2;
# 300: several 128-token passes and a tail
HOST_ISA = isa_of(host_target())
F, T = Schedule.FEATURE, Schedule.TOKEN
# (first block, second block, activation, ISA, schedules): chains get TOKEN → TOKEN
# (choose_schedule); the kernels take panels under FEATURE too, tested here as well
CHAINS = [
    *[((16, 1), (16, 1), act, HOST_ISA, (T, T)) for act in Activation],
    ((16, 1), (16, 1), Activation.GELU, HOST_ISA, (F, F)),
    ((4, 1), (1, 1), Activation.GELU_TANH, HOST_ISA, (T, T)),
    ((16, 1), (4, 2), Activation.RELU, HOST_ISA, (F, T)),
    ((1, 4), (16, 1), Activation.GELU, HOST_ISA, (T, F)),
    ((16, 1), (2, 4), Activation.NONE, AVX2, (F, T)),  # 8 lanes: 2 vectors per FEATURE tile
]


def _chain_kernels(case: tuple[Any, ...]) -> tuple[tuple[str, BsrShape, KernelLayout], ...]:
    """(name, shape, layout) of a CHAINS case's first and second kernel."""
    first, second, act, isa, (first_schedule, second_schedule) = case
    up, down = BsrShape(HIDDEN, IN, *first), BsrShape(OUT, HIDDEN, *second)
    tile = panel_tile(down, second_schedule, isa)
    tag = f"{first_schedule.value}_{second_schedule.value}_{isa.name}"
    return (
        (
            f"up_{first[0]}x{first[1]}_to{tile}_{act.value}_{tag}",
            up,
            KernelLayout(output_tile=tile, activation=act),
        ),
        (f"down_{second[0]}x{second[1]}_{tag}", down, KernelLayout(panel_input=True)),
    )


def _case_id(case: tuple[Any, ...]) -> str:
    (r1, c1), (r2, c2), act, isa, (s1, s2) = case
    return f"{r1}x{c1}-{r2}x{c2}-{act.value}-{s1.value}-{s2.value}-{isa.name}"


@pytest.fixture(scope="module")
def library() -> tvm.runtime.Executable:
    """Every chain's two kernels in one library (one compile for the whole module)."""
    functions = {}
    for case in CHAINS:
        for (name, shape, layout), schedule in zip(_chain_kernels(case), case[4], strict=True):
            func = bsr_kernel(shape, schedule, case[3], layout)
            functions[name] = func.with_attr("global_symbol", name)
    with tvm.transform.PassContext(config=compile_config()):
        return tvm.compile(tvm.IRModule(functions), target=host_target(2))


def _random_bsr(
    shape: BsrShape, sparsity: float, seed: int, schedule: Schedule | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Arrays (values, cols, crow) of a random block-sparse W ~ N(0, 1/in), and W: CSR
    order, or the order of the kernel under `schedule` (slab-major for TOKEN)."""
    rng = np.random.default_rng(seed)
    keep = rng.random((shape.out_features // shape.r, shape.in_features // shape.c)) >= sparsity
    dense = rng.standard_normal((shape.out_features, shape.in_features)).astype(np.float32)
    dense *= np.kron(keep, np.ones((shape.r, shape.c), np.float32)) / np.sqrt(shape.in_features)
    weight = torch.from_numpy(dense)
    values, cols, crow = to_bsr(weight, (shape.r, shape.c))
    values, cols = kernel_arrays(values, cols, shape)
    if schedule is Schedule.TOKEN:
        values, cols, crow = slab_major(shape, values, cols, crow)
    return values, cols, crow, weight


@pytest.mark.parametrize("case", CHAINS, ids=_case_id)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
def test_chain_kernels_match_torch(library, case: tuple[Any, ...], sparsity: float) -> None:  # type: ignore[no-untyped-def]
    (first_name, up, first_layout), (second_name, down, _) = _chain_kernels(case)
    act, tile = case[2], first_layout.output_tile
    up_arrays = _random_bsr(up, sparsity, 1, case[4][0])
    down_arrays = _random_bsr(down, sparsity, 2, case[4][1])
    b1, b2 = torch.randn(HIDDEN), torch.randn(OUT)
    for tokens in TOKENS:
        x = torch.randn(tokens, IN)
        panel = torch.full(((tokens + tile - 1) // tile, HIDDEN, tile), float("nan"))
        y = torch.empty(tokens, OUT)
        library[first_name](x, *up_arrays[:3], b1, panel)
        library[second_name](panel, *down_arrays[:3], b2, y)
        hidden = reference_activation(act, nn.functional.linear(x, up_arrays[3], b1))
        written = panel.permute(0, 2, 1).reshape(-1, HIDDEN)[:tokens]
        assert torch.allclose(written, hidden, atol=ATOL), (tokens, (written - hidden).abs().max())
        expected = nn.functional.linear(hidden, down_arrays[3], b2)
        assert torch.allclose(y, expected, atol=ATOL), (tokens, (y - expected).abs().max())


def test_layout_refuses_what_no_kernel_does() -> None:
    with pytest.raises(BackendError, match="no token-major buffer"):
        KernelLayout(panel_input=True, output_tile=16)
    with pytest.raises(BackendError, match="whole vectors"):
        bsr_kernel(BsrShape(64, 48, 16, 1), F, AVX512, KernelLayout(output_tile=24))
    assert KernelLayout(output_tile=16, activation=Activation.GELU).suffix == "_pout16_gelu"


def test_chains_get_the_token_schedule() -> None:
    shape = BsrShape(64, 64, 16, 1)
    assert choose_schedule(shape, AVX512) is F  # alone, token-major: FEATURE (AVX-512)
    assert choose_schedule(shape, AVX512, KernelLayout(panel_input=True)) is T
    assert choose_schedule(shape, AVX512, KernelLayout(output_tile=64)) is T
    first, second = chain_layouts(shape, Activation.RELU, build_target("cpu", 1))
    assert first.output_tile == panel_tile(shape, T, HOST_ISA) and second.panel_input


# ------------------------------------------------------------------ the FX rewrite
class SparseLinear(nn.Module):
    """A linear with 16×1 blocks, half of them kept, as sparsec's bsr_linear op."""

    def __init__(self, in_features: int, out_features: int, seed: int) -> None:
        super().__init__()
        values, cols, crow, weight = _random_bsr(
            BsrShape(out_features, in_features, 16, 1), 0.5, seed
        )
        self.register_buffer("values", values)
        self.register_buffer("cols", cols)
        self.register_buffer("crow", crow)
        self.bias = nn.Parameter(torch.randn(out_features) * 0.1)
        self.features = (out_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.sparsec.bsr_linear(
            x, self.values, self.cols, self.crow, self.bias, *self.features
        )


class Ffn(nn.Module):
    """up → act → down, and variants that must not (all) fuse."""

    def __init__(self, variant: str = "gelu") -> None:
        super().__init__()
        self.variant = variant
        self.up, self.down, self.head = (
            SparseLinear(IN, HIDDEN, 1),
            SparseLinear(HIDDEN, IN, 2),
            SparseLinear(IN, OUT, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.variant == "gelu":
            return self.down(nn.functional.gelu(h)) + x
        if self.variant == "gelu_tanh":
            return self.down(nn.functional.gelu(h, approximate="tanh"))
        if self.variant == "relu":
            return self.down(torch.relu(h))
        if self.variant == "none":
            return self.down(h)
        if self.variant == "shared":  # the intermediate also feeds a sum
            return self.down(nn.functional.gelu(h)) + h.sum(-1, keepdim=True)
        if self.variant == "shared_act":  # the activation's output feeds a second op
            g = nn.functional.gelu(h)
            return self.down(g) + g[..., :IN]
        if self.variant == "three":  # up → down → head: one chain, head stays alone
            return self.head(torch.relu(self.down(nn.functional.gelu(h))))
        return self.down(h * 2.0)  # "scaled": not an activation


def _graph(variant: str):  # type: ignore[no-untyped-def]
    return trace(Ffn(variant).eval(), (torch.randn(2, 16, IN),))


def _fuse(graph: Graph) -> tuple[PassResult, list[torch.fx.Node], list[str]]:
    """The pass's result, the fused nodes and the refusal texts."""
    result = FuseSparseChains().run(graph, AnalysisManager(graph))
    fused = [node for node in graph.module.graph.nodes if isinstance(node.target, ChainCall)]
    refusals = [note.removeprefix("not fused: ") for note in result.notes if note.startswith("not fused: ")]
    return result, fused, refusals


@pytest.mark.parametrize(
    ("variant", "activation"),
    [
        ("gelu", Activation.GELU),
        ("gelu_tanh", Activation.GELU_TANH),
        ("relu", Activation.RELU),
        ("none", Activation.NONE),
    ],
)
def test_rewrite_fuses_an_ffn_chain(variant: str, activation: Activation) -> None:
    graph = _graph(variant)
    module = graph.module
    x = torch.randn(3, 16, IN)
    with torch.no_grad():
        expected = module(x)
    result, fused, refusals = _fuse(graph)
    assert result.changed and not refusals and len(fused) == 1
    assert result.notes[0].startswith("1 chain of sparse linears fused")
    call = fused[0].target
    assert isinstance(call, ChainCall) and call.activation is activation
    assert f"sparse_chain_{IN}x{HIDDEN}x{IN}_{activation.value}(" in module.code
    targets = {node.target for node in module.graph.nodes}
    assert not targets & {
        torch.ops.sparsec.bsr_linear.default,
        torch.ops.aten.gelu.default,
        torch.ops.aten.relu.default,
    }
    with torch.no_grad():
        assert torch.allclose(module(x), expected, atol=ATOL)


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        ("shared", r"%bsr_linear: its output has 2 users \(%gelu, %sum_1\), not one"),
        ("shared_act", r"%bsr_linear: its activation %gelu has 2 users"),
        ("scaled", None),
    ],
)
def test_rewrite_does_not_fire_when_the_intermediate_is_used_elsewhere(
    variant: str, reason: str | None
) -> None:
    graph = _graph(variant)
    before = graph.module.code
    result, _, refusals = _fuse(graph)
    assert not result.changed and graph.module.code == before
    if reason is None:
        assert not refusals
    else:
        assert len(refusals) == 1 and re.match(reason, refusals[0])


_FFN_TENSORS = """\
@up.bias: f32[320]
@down.bias: f32[48]
@head.bias: f32[32]
@up.values: f32[474, 16, 1]
@up.cols: i64[474]
@up.crow: i64[21]
@down.values: f32[478, 16, 1]
@down.cols: i64[478]
@down.crow: i64[4]
@head.values: f32[52, 16, 1]
@head.cols: i64[52]
@head.crow: i64[3]
%x: f32[batch, 16, 48] = input
"""
_UP = "%x, @up.values, @up.cols, @up.crow, @up.bias, 320, 48"
_DOWN = "@down.values, @down.cols, @down.crow, @down.bias, 48, 320"


# ---------------------------------------------------------------- Before / Expected IR
def test_fuse_and_bind_ir() -> None:
    graph = _graph("relu")
    x = torch.randn(3, 16, IN)
    with torch.no_grad():
        reference = graph(x)
    before = _FFN_TENSORS + f"""\
%bsr_linear: f32[batch, 16, 320] = bsr_linear({_UP})
%relu: f32[batch, 16, 320] = relu(%bsr_linear)
%bsr_linear_1: f32[batch, 16, 48] = bsr_linear(%relu, {_DOWN})
return [%bsr_linear_1]
"""
    fused = _FFN_TENSORS + f"""\
%sparse_chain_48x320x48_relu: f32[batch, 16, 48] = sparse_chain_48x320x48_relu({_UP}, {_DOWN})
return [%sparse_chain_48x320x48_relu]
"""
    assert str(graph) == before
    assert _fuse(graph)[0].changed
    assert str(graph) == fused
    with torch.no_grad():
        torch.testing.assert_close(graph(x), reference, atol=ATOL, rtol=0)
    target = build_target("cpu", 1)
    result = BindTvmKernels(library=build_kernels(graph.module, target), target=target).run(
        graph, AnalysisManager(graph)
    )
    assert result.changed
    assert str(graph) == fused.replace("= sparse_chain_", "= tvm_sparse_chain_")
    with torch.no_grad():
        torch.testing.assert_close(graph(x), reference, atol=ATOL, rtol=0)


def test_a_linear_is_in_one_chain_only() -> None:
    analysis = find_chains(_graph("three").module)
    assert [(c.first.name, c.second.name) for c in analysis.chains] == [
        ("bsr_linear", "bsr_linear_1")
    ]
    assert len(analysis.refusals) == 1 and "already ends the chain from %bsr_linear" in str(
        analysis.refusals[0]
    )


# ------------------------------------------------------------------ builds
class Encoder(nn.Module):
    """A 2-layer BERT (hidden 64, FFN 128) returning its last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        import transformers

        torch.manual_seed(0)
        config = transformers.BertConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            vocab_size=100,
            max_position_embeddings=32,
            attn_implementation="sdpa",
        )
        self.bert = transformers.BertModel(config, add_pooling_layer=False).eval()

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.bert(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids
        ).last_hidden_state


def _bert_inputs(batch: int, seq: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 100, (batch, seq), generator=torch.Generator().manual_seed(batch * seq))
    positions = torch.arange(seq).expand(batch, seq).contiguous()
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "position_ids": positions}


def test_block_sparse_bert_matches_torch_with_fused_chains(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    compiled = sparsec.compile(
        Encoder(),
        _bert_inputs(2, 8),
        pipeline="sparsify{pattern=block,block=[16,1],sparsity=0.9},lower-sparse-weights{format=bsr,gate=off}",
        backend="tvm",
        threads=1,
        dump_ir=tmp_path,
    )
    assert compiled.executable.notes[0].startswith("2 chains of sparse linears fused")
    assert "sparse_chain_64x128x64_gelu" in compiled.executable.notes[0]
    # the lowering passes ran under compile()'s instruments, on a copy of the graph
    assert [name for name, _ in compiled.report.pass_times][-2:] == [
        "fuse-sparse-chains",
        "bind-tvm-kernels",
    ]
    fused = (tmp_path / "03-fuse-sparse-chains.after.txt").read_text()
    bound = (tmp_path / "04-bind-tvm-kernels.after.txt").read_text()
    assert fused.count("= sparse_chain_64x128x64_gelu(") == 2
    assert bound.count("= tvm_sparse_chain_64x128x64_gelu(") == 2
    assert "sparse_chain" not in str(compiled.graph)
    assert "| `bind-tvm-kernels` |" in compiled.report.to_markdown()  # no params row: "-"
    for batch, seq in [(2, 8), (3, 7), (1, 1), (5, 26)]:  # 130 tokens: eight tiles and a tail
        inputs = _bert_inputs(batch, seq)
        with torch.no_grad():
            expected = compiled.module(**inputs)
        actual = compiled(**inputs)
        assert torch.allclose(actual, expected, atol=ATOL), (
            batch,
            seq,
            (actual - expected).abs().max(),
        )


@pytest.fixture(scope="module")
def ffn_graph():  # type: ignore[no-untyped-def]
    return trace(Ffn("gelu").eval(), (torch.randn(16, IN),))


def test_relax_import_hands_panels_over(ffn_graph) -> None:  # type: ignore[no-untyped-def]
    target = build_target("cpu", 1)
    program = ffn_graph.export_program()
    imported = import_graph(program, target, fuse_chains=True)
    names = {gv.name_hint for gv in imported.module.get_global_vars()} - {"main"}
    first, second = chain_layouts(BsrShape(IN, HIDDEN, 16, 1), Activation.GELU, target)
    assert names == {
        f"sparse_linear_{HIDDEN}x{IN}_b16x1_token_{HOST_ISA.name}{first.suffix}_slab{SLAB_FEATURES}",
        f"sparse_linear_{IN}x{HIDDEN}_b16x1_token_{HOST_ISA.name}{second.suffix}_slab{SLAB_FEATURES}",
    }
    assert "R.nn.gelu" not in imported.module["main"].script()
    executable = RelaxExecutable.build(
        imported, target, "cpu", program.call_spec.in_spec, program.call_spec.out_spec, 1
    )
    for tokens in (7, 130):
        x = torch.randn(tokens, IN)
        with torch.no_grad():
            expected = ffn_graph.module(x)
        assert torch.allclose(executable(x), expected, atol=ATOL)


def test_library_without_chain_kernels_runs_unfused(ffn_graph) -> None:  # type: ignore[no-untyped-def]
    target = build_target("cpu", 1)
    library = build_kernels(ffn_graph.module, target)  # unfused: no chain kernels
    executable = PartitionedExecutable.with_library(
        ffn_graph, library, ffn_graph.export_program, {"tvm_target": str(target)}, 1
    )
    assert executable.notes == [
        "sparse chains not fused: the kernel library was built without chain kernels"
    ]
    x = torch.randn(17, IN)
    with torch.no_grad():
        assert torch.allclose(executable(x), ffn_graph.module(x), atol=ATOL)


def test_library_of_an_older_sparsec_is_refused(ffn_graph) -> None:  # type: ignore[no-untyped-def]
    """Kernels named as before slab-major order (read CSR order) must not get reordered arrays."""
    target = build_target("cpu", 1)
    functions = {}
    for chain in find_chains(ffn_graph.module).chains:
        call = chain.call()
        first, second = chain_layouts(call.second.shape, call.activation, target)
        for shape, layout in ((call.first.shape, first), (call.second.shape, second)):
            name, func = kernel_for(shape, target, layout)
            old_name = name.removesuffix(f"_slab{SLAB_FEATURES}")
            functions[old_name] = func.with_attr("global_symbol", old_name)
    assert len(functions) == 2
    with tvm.transform.PassContext(config=compile_config()):
        library = tvm.compile(tvm.IRModule(functions), target=target)
    with pytest.raises(ArtifactError, match="another version of sparsec.*rebuild the artifact"):
        PartitionedExecutable.with_library(
            ffn_graph, library, ffn_graph.export_program, {"tvm_target": str(target)}, 1
        )
