"""Layout propagation: chains of sparse linears hand their activations over in panel layout.

Rules:
- a chain is `sparse linear → (relu | gelu)? → sparse linear` in an ATen graph where the
  first linear's output, and the activation's, have that one user, the second linear
  reads it as x (not as a weight or bias), and x, the intermediate and y are float32;
- its first kernel packs x once and writes the intermediate as the second kernel's panel,
  bias and activation applied as it stores; the second kernel reads that panel instead of
  packing and writes y token-major (`kernels.KernelLayout`). No panel reaches torch;
- a linear belongs to at most one chain, taken in graph order: a middle layer of
  up → down → head would read and write panels, which no kernel does (it would have no
  token-major side to take the token count from), so head stays unfused;
- `find_chains` is the analysis and never changes the graph; every near miss (a sparse
  linear whose output reaches another one directly or through one activation) comes back
  as a `Refusal` saying why it was not fused;
- `FuseSparseChains` ("fuse-sparse-chains") is a lowering pass (`backends/lowering.py`):
  it replaces each chain by one node calling a `ChainCall`, whose torch implementation runs
  the original ops, so the rewritten graph still runs and computes the same numbers; the
  `bind-tvm-kernels` pass (partitioned.py) then swaps that target for its kernels, as it
  does for single sparse calls. Its notes name the fused chains and every refusal.

Example:
    result = FuseSparseChains().run(graph, AnalysisManager(graph))   # graph: a lowering copy
    result.changed, result.notes
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.fx as fx

from sparsec.pipeline import PassResult, RewritePass, pass_dataclass, register

from .activations import Activation, activation_of, reference_activation
from .sparse_calls import SparseCall, is_sparse_call

if TYPE_CHECKING:
    from sparsec.ir import Graph
    from sparsec.pipeline import AnalysisManager

__all__ = [
    "ChainAnalysis",
    "ChainCall",
    "FuseSparseChains",
    "Refusal",
    "SparseChain",
    "find_chains",
]


@dataclass(frozen=True)
class SparseChain:
    """`second(activation(first(x)))`, fusable (module rules)."""

    first: fx.Node
    activation_node: fx.Node | None
    second: fx.Node
    activation: Activation

    @property
    def nodes(self) -> tuple[fx.Node, ...]:
        """The nodes the chain replaces, in graph order."""
        middle = (self.activation_node,) if self.activation_node is not None else ()
        return (self.first, *middle, self.second)

    def call(self) -> ChainCall:
        """The target of the node that replaces the chain."""
        return ChainCall(
            self.first.target,  # type: ignore[arg-type]
            SparseCall.of(self.first),
            self.activation,
            self.second.target,  # type: ignore[arg-type]
            SparseCall.of(self.second),
        )


@dataclass(frozen=True)
class Refusal:
    """A near miss: sparse linear `node` feeds another one but is not fused, and why."""

    node: fx.Node
    reason: str

    def __str__(self) -> str:
        return f"%{self.node.name}: {self.reason}"


@dataclass(frozen=True)
class ChainAnalysis:
    """The fusable chains of a graph, in graph order, and the refused near misses."""

    chains: tuple[SparseChain, ...]
    refusals: tuple[Refusal, ...]


@dataclass(frozen=True)
class ChainCall:
    """The target of a fused chain's node: `second(activation(first(x)))`.

    Its arguments are x, then the first op's arguments after x, then the second op's; as a
    Python callable it runs the original ops, so a rewritten graph still runs in torch.
    """

    first_op: Any
    first: SparseCall
    activation: Activation
    second_op: Any
    second: SparseCall

    @property
    def __name__(self) -> str:  # torch.fx names the generated code's global after it
        first, second = self.first.shape, self.second.shape
        return (
            f"sparse_chain_{first.in_features}x{first.out_features}x{second.out_features}"
            f"_{self.activation.value}"
        )

    def split(self, args: tuple[Any, ...]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """The first op's and the second op's arguments after x."""
        return args[: self.first.arity], args[self.first.arity :]

    def __call__(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        first_args, second_args = self.split(args)
        hidden = reference_activation(self.activation, self.first_op(x, *first_args))
        return self.second_op(hidden, *second_args)


def _dtype(node: Any) -> torch.dtype | None:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return value.dtype if isinstance(value, torch.Tensor) else None


def _float32(node: Any) -> bool:
    return _dtype(node) == torch.float32


def _users(node: fx.Node) -> str:
    return ", ".join(f"%{user.name}" for user in node.users)


def _chain_from(first: fx.Node) -> SparseChain | Refusal | None:
    """The chain that starts at sparse call `first`, a refusal, or None if no sparse call follows."""
    users = list(first.users)
    follows = [
        user
        for user in users
        if is_sparse_call(user)
        or (activation_of(user) is not None and any(is_sparse_call(u) for u in user.users))
    ]
    if not follows:
        return None
    if len(users) != 1:
        return Refusal(first, f"its output has {len(users)} users ({_users(first)}), not one")
    user = users[0]
    activation_node = None
    activation = Activation.NONE
    if not is_sparse_call(user):
        activation_node, activation = user, activation_of(user)  # type: ignore[assignment]
        if user.args[0] is not first:
            return Refusal(first, f"%{user.name} applies its activation to another tensor")
        if len(user.users) != 1:
            return Refusal(
                first,
                f"its activation %{user.name} has {len(user.users)} users ({_users(user)}), "
                "not one",
            )
        user = next(iter(user.users))
    intermediate = activation_node or first
    if user.args[0] is not intermediate or intermediate in (*user.args[1:], *user.kwargs.values()):
        return Refusal(first, f"%{user.name} takes %{intermediate.name} other than as its x")
    tensors = [first.args[0], first, *((activation_node,) if activation_node else ()), user]
    if not all(_float32(node) for node in tensors):
        dtypes = ", ".join(f"%{node}: {_dtype(node)}" for node in tensors)
        return Refusal(first, f"the TVM kernels take float32 activations, not ({dtypes})")
    return SparseChain(first, activation_node, user, activation)


def find_chains(module: fx.GraphModule) -> ChainAnalysis:
    """Every fusable chain of `module`'s graph, in graph order, and every refused near miss."""
    chains: list[SparseChain] = []
    refusals: list[Refusal] = []
    taken: dict[fx.Node, SparseChain] = {}
    for node in module.graph.nodes:
        if not is_sparse_call(node):
            continue
        found = _chain_from(node)
        if isinstance(found, Refusal):
            refusals.append(found)
        elif isinstance(found, SparseChain) and node in taken:
            refusals.append(
                Refusal(
                    node,
                    f"it already ends the chain from %{taken[node].first.name}; a middle layer "
                    "would read and write panels, which no kernel does",
                )
            )
        elif isinstance(found, SparseChain):
            chains.append(found)
            taken[found.second] = found
    return ChainAnalysis(tuple(chains), tuple(refusals))


def _fused_note(fused: list[ChainCall]) -> str:
    names = ", ".join(sorted({call.__name__ for call in fused}))
    count = len(fused)
    return (
        f"{count} chain{'s' * (count != 1)} of sparse linears fused, activations kept in "
        f"panel layout between their kernels: {names}"
    )


@register
@pass_dataclass
class FuseSparseChains(RewritePass):
    """Replace each chain of `find_chains` by one `ChainCall` node (module rules).

    A lowering pass of the TVM backend: its notes say what was fused and each near miss.
    """

    name: ClassVar[str] = "fuse-sparse-chains"
    preserves_numerics: ClassVar[bool] = True

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        analysis = find_chains(graph.module)
        fused: list[ChainCall] = []
        with graph.rewrite(self.name) as rw:
            for chain in analysis.chains:
                first, second = chain.first, chain.second
                call = chain.call()
                node = rw.insert_call(
                    call, (first.args[0], *first.args[1:], *second.args[1:]), before=second
                )
                rw.replace_uses(second, node)
                for old in reversed(chain.nodes):
                    rw.erase(old)
                fused.append(call)
        notes = ([_fused_note(fused)] if fused else []) + [
            f"not fused: {refusal}" for refusal in analysis.refusals
        ]
        return PassResult(bool(fused), changes=tuple(rw.changes), notes=tuple(notes))
