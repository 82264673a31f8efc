"""Pass infrastructure: the analysis cache, the pass manager, instruments, pipeline text."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
import torch
from models import make_mlp
from torch import nn

from sparsec.errors import NumericMismatchError, PassError, SparsecError, VerificationError
from sparsec.frontends import trace
from sparsec.ir import Graph
from sparsec.passes.analysis import DependencyGroups, MagnitudeImportance
from sparsec.passes.rewrite import PruneChannels
from sparsec.pipeline import (
    PRESERVE_ALL,
    Analysis,
    AnalysisManager,
    IRDump,
    NumericCheck,
    PassFilter,
    PassManager,
    PassResult,
    PassSummary,
    Pipeline,
    RewritePass,
    Statistics,
    Timing,
    VerifyEach,
    pass_dataclass,
    register,
    registry,
)


# ---------------------------------------------------------------- dummy passes
@register
@pass_dataclass
class CountNodes(Analysis):
    """Number of call_function nodes."""

    name: ClassVar[str] = "test-count-nodes"

    def run(self, graph: Graph, am: AnalysisManager) -> int:
        return graph.num_nodes()


@register
@pass_dataclass
class NodesPlusOne(Analysis):
    """Depends on CountNodes through the analysis manager."""

    name: ClassVar[str] = "test-nodes-plus-one"

    def run(self, graph: Graph, am: AnalysisManager) -> int:
        return am.get(CountNodes()) + 1


@register
@pass_dataclass
class EditingAnalysis(Analysis):
    """Breaks the rule that analyses never edit."""

    name: ClassVar[str] = "test-editing-analysis"

    def run(self, graph: Graph, am: AnalysisManager) -> None:
        with graph.rewrite(self.name) as rw:
            rw.replace_tensor("fc.bias", graph.tensor("fc.bias").detach().clone())


@register
@pass_dataclass
class ScaleBias(RewritePass):
    """Multiply the classifier bias by `factor`; `preserve` picks what it claims survives."""

    name: ClassVar[str] = "test-scale-bias"
    factor: float = 2.0
    preserve: Literal["none", "count-nodes", "nodes-plus-one", "all"] = "none"

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        with graph.rewrite(self.name) as rw:
            rw.replace_tensor("fc.bias", graph.tensor("fc.bias").detach() * self.factor)
        preserved: Any = {
            "none": frozenset(),
            "count-nodes": frozenset({CountNodes}),
            "nodes-plus-one": frozenset({NodesPlusOne}),
            "all": PRESERVE_ALL,
        }[self.preserve]
        return PassResult(changed=True, preserved=preserved, changes=tuple(rw.changes))


@register
@pass_dataclass
class FakeIdentity(ScaleBias):
    """Claims to keep outputs; scales the bias anyway unless factor is 1."""

    name: ClassVar[str] = "test-fake-identity"
    preserves_numerics: ClassVar[bool] = True


@register
@pass_dataclass
class Boom(RewritePass):
    name: ClassVar[str] = "test-boom"

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        raise ValueError("boom")


@register
@pass_dataclass
class EraseUsed(RewritePass):
    """Makes an invalid edit: the Rewriter raises RewriteError."""

    name: ClassVar[str] = "test-erase-used"

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        with graph.rewrite(self.name) as rw:
            rw.erase(graph.node("relu"))
        return PassResult(changed=True)


@register
@pass_dataclass
class Liar(RewritePass):
    """Edits the graph but reports `changed` as `claim`."""

    name: ClassVar[str] = "test-liar"
    edit: bool = True

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        if self.edit:
            with graph.rewrite(self.name) as rw:
                rw.replace_tensor("fc.bias", graph.tensor("fc.bias").detach() + 1)
        return PassResult(changed=not self.edit)


@register
@pass_dataclass
class NotAResult(RewritePass):
    name: ClassVar[str] = "test-not-a-result"

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        return True  # type: ignore[return-value]


@register
@pass_dataclass
class DictSummary(RewritePass):
    """Reports its summary as a plain dict, as passes did before summaries were typed."""

    name: ClassVar[str] = "test-dict-summary"

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        return PassResult(changed=False, summary={"converted": 0})  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Counted(PassSummary):
    kept: list[str]
    skipped: int | None = None
    removed: int


@register
@pass_dataclass
class BreakBehindBack(RewritePass):
    """A valid rewrite, then an edit that bypasses the Rewriter and breaks the graph."""

    name: ClassVar[str] = "test-break-behind-back"

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        with graph.rewrite(self.name) as rw:
            rw.replace_tensor("fc.bias", graph.tensor("fc.bias").detach().clone())
        graph.module.fc.weight = nn.Parameter(torch.zeros(10, 5))
        return PassResult(changed=True)


@pytest.fixture
def graph() -> Graph:
    model, x = make_mlp()
    return trace(model, (x,))


def _reference(graph: Graph) -> torch.Tensor:
    # NumericCheck runs the graph on its (possibly widened) example inputs, so compare to those
    with torch.no_grad():
        return graph(*graph.example_args)


def _count(am: AnalysisManager, analysis: Analysis) -> int:
    return sum(1 for a in am.computed if a == analysis)


# ---------------------------------------------------------------- analysis manager
def test_analysis_computed_once_when_asked_twice(graph: Graph) -> None:
    am = AnalysisManager(graph)
    assert am.get(CountNodes()) == 5
    assert am.get(CountNodes()) == 5  # an equal instance hits the same cache entry
    assert _count(am, CountNodes()) == 1
    assert am.is_cached(CountNodes())


def test_analysis_recomputed_after_version_bump(graph: Graph) -> None:
    am = AnalysisManager(graph)
    am.get(CountNodes())
    with graph.rewrite("test-direct") as rw:
        rw.replace_tensor("fc.bias", torch.zeros(10))
    assert not am.is_cached(CountNodes())
    am.get(CountNodes())
    assert _count(am, CountNodes()) == 2


def test_rewrite_preserving_nothing_invalidates(graph: Graph) -> None:
    am = AnalysisManager(graph)
    PassManager([CountNodes(), ScaleBias()]).run(graph, am)
    assert not am.is_cached(CountNodes())
    am.get(CountNodes())
    assert _count(am, CountNodes()) == 2


def test_rewrite_preserving_an_analysis_keeps_it(graph: Graph) -> None:
    am = AnalysisManager(graph)
    PassManager([CountNodes(), ScaleBias(preserve="count-nodes")]).run(graph, am)
    assert graph.version == 1
    assert am.is_cached(CountNodes())
    am.get(CountNodes())
    assert _count(am, CountNodes()) == 1


def test_dependents_of_an_invalidated_analysis_are_dropped(graph: Graph) -> None:
    am = AnalysisManager(graph)
    # NodesPlusOne is preserved by type but depends on CountNodes, which is not
    PassManager([NodesPlusOne(), ScaleBias(preserve="nodes-plus-one")]).run(graph, am)
    assert not am.is_cached(CountNodes())
    assert not am.is_cached(NodesPlusOne())
    assert am.get(NodesPlusOne()) == 6
    assert _count(am, NodesPlusOne()) == 2
    assert _count(am, CountNodes()) == 2


def test_preserving_a_dependency_drops_only_the_dependent(graph: Graph) -> None:
    am = AnalysisManager(graph)
    PassManager([NodesPlusOne(), ScaleBias(preserve="count-nodes")]).run(graph, am)
    assert am.is_cached(CountNodes())
    assert not am.is_cached(NodesPlusOne())


def test_preserve_all_keeps_everything(graph: Graph) -> None:
    am = AnalysisManager(graph)
    PassManager([NodesPlusOne(), ScaleBias(preserve="all")]).run(graph, am)
    assert graph.version == 1
    assert am.is_cached(CountNodes()) and am.is_cached(NodesPlusOne())
    am.get(NodesPlusOne())
    assert _count(am, NodesPlusOne()) == 1 and _count(am, CountNodes()) == 1


def test_pipeline_analysis_is_chosen_for_its_role(graph: Graph) -> None:
    am = AnalysisManager(graph)
    chosen = MagnitudeImportance(norm=1)
    PassManager([chosen]).run(graph, am)
    assert am.provider("channel-importance", MagnitudeImportance()) == chosen
    assert am.is_cached(DependencyGroups())  # asked for by magnitude-importance


def test_analysis_that_edits_is_a_pass_error(graph: Graph) -> None:
    with pytest.raises(PassError, match="test-editing-analysis.*analyses must not"):
        PassManager([EditingAnalysis()]).run(graph)


# ---------------------------------------------------------------- pass manager errors
def test_failing_pass_names_itself_and_the_passes_before(graph: Graph) -> None:
    pipeline = [CountNodes(), ScaleBias(factor=3.0), Boom()]
    with pytest.raises(PassError) as info:
        PassManager(pipeline).run(graph)
    message = str(info.value)
    assert "pass test-boom failed" in message
    assert "test-count-nodes" in message and "test-scale-bias{factor=3.0,preserve=none}" in message
    assert "ValueError: boom" in message
    assert isinstance(info.value.__cause__, ValueError)


def test_failing_first_pass_says_none_before(graph: Graph) -> None:
    with pytest.raises(PassError, match=r"passes before it: none"):
        PassManager([Boom()]).run(graph)


def test_sparsec_error_in_a_pass_names_the_passes_before(graph: Graph) -> None:
    with pytest.raises(SparsecError, match=r"passes before it: \['test-count-nodes'\]"):
        PassManager([CountNodes(), EraseUsed()]).run(graph)


def test_pass_that_edits_but_reports_unchanged_is_caught(graph: Graph) -> None:
    with pytest.raises(PassError, match=r"test-liar.*reported changed=False"):
        PassManager([Liar()]).run(graph)


def test_pass_that_reports_changed_without_editing_is_caught(graph: Graph) -> None:
    with pytest.raises(PassError, match=r"reported changed=True"):
        PassManager([Liar(edit=False)]).run(graph)


def test_pass_must_return_a_pass_result(graph: Graph) -> None:
    with pytest.raises(PassError, match="returned bool, not a PassResult"):
        PassManager([NotAResult()]).run(graph)


def test_pass_summary_must_be_a_pass_summary(graph: Graph) -> None:
    with pytest.raises(PassError, match="returned a dict as its summary; return an instance"):
        PassManager([DictSummary()]).run(graph)


def test_pass_summary_to_dict_keeps_field_order_and_leaves_out_none() -> None:
    summary = _Counted(kept=["fc"], removed=2)
    assert summary.removed == 2 and summary.skipped is None
    assert list(summary.to_dict().items()) == [("kept", ["fc"]), ("removed", 2)]
    assert _Counted(kept=[], skipped=0, removed=0).to_dict() == {"kept": [], "skipped": 0, "removed": 0}


def test_run_records_results_in_order(graph: Graph) -> None:
    run = PassManager([CountNodes(), ScaleBias()]).run(graph)
    assert [p.name for p, _ in run.results] == ["test-count-nodes", "test-scale-bias"]
    assert run.results[0][1] is None
    result = run.results[1][1]
    assert result is not None and result.changed and run.changed
    assert [c.target for c in result.changes] == ["fc.bias"]


# ---------------------------------------------------------------- instruments
def test_timing_records_each_pass(graph: Graph) -> None:
    timing = Timing()
    PassManager([CountNodes(), ScaleBias()], instruments=[timing]).run(graph)
    assert [name for name, _ in timing.records] == [
        "test-count-nodes",
        "test-scale-bias{factor=2.0,preserve=none}",
    ]
    assert all(seconds >= 0 for _, seconds in timing.records)


def test_statistics_counts_nodes_and_parameters(graph: Graph) -> None:
    stats = Statistics()
    PassManager([DependencyGroups(), PruneChannels(ratio=0.5)], instruments=[stats]).run(graph)
    analysis, prune = stats.records
    assert analysis["pass"] == "dependency-groups" and not analysis["changed"]
    assert (
        analysis["params_before"]
        == analysis["params_after"]
        == 16 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    )
    assert prune["changed"]
    assert prune["nodes_before"] == prune["nodes_after"] == 5
    assert prune["params_after"] == 16 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10
    assert prune["params_after"] == graph.num_parameters()


def test_ir_dump_writes_numbered_files(graph: Graph, tmp_path: Path) -> None:
    dump = IRDump(tmp_path / "dumps", before_too=True)
    PassManager([CountNodes(), PruneChannels(ratio=0.5)], instruments=[dump]).run(graph)
    names = sorted(p.name for p in (tmp_path / "dumps").iterdir())
    assert names == [
        "01-test-count-nodes.after.txt",
        "01-test-count-nodes.before.txt",
        "02-prune-channels.after.txt",
        "02-prune-channels.before.txt",
    ]
    assert (tmp_path / "dumps" / "02-prune-channels.after.txt").read_text() == str(graph)
    before = (tmp_path / "dumps" / "02-prune-channels.before.txt").read_text()
    assert "@fc1.weight: f32[32, 16]" in before
    assert "@fc1.weight: f32[16, 16]" in str(graph)


def test_verify_each_catches_a_broken_rewrite(graph: Graph) -> None:
    PassManager([BreakBehindBack()]).run(graph)  # unnoticed without the instrument
    model, x = make_mlp()
    fresh = trace(model, (x,))
    with pytest.raises(VerificationError, match=r"in pass test-break-behind-back.*%linear_2"):
        PassManager([CountNodes(), BreakBehindBack()], instruments=[VerifyEach()]).run(fresh)


def test_numeric_check_raises_for_a_pass_that_promised_numerics(graph: Graph) -> None:
    reference = _reference(graph)
    check = NumericCheck(reference)
    with pytest.raises(NumericMismatchError, match=r"test-fake-identity"):
        PassManager([FakeIdentity(factor=3.0)], instruments=[check]).run(graph)


def test_numeric_check_accepts_a_pass_that_keeps_numerics(graph: Graph) -> None:
    reference = _reference(graph)
    check = NumericCheck(reference)
    PassManager([FakeIdentity(factor=1.0)], instruments=[check]).run(graph)
    assert check.records == [("test-fake-identity{factor=1.0,preserve=none}", 0.0)]


def test_numeric_check_only_records_for_other_passes(graph: Graph) -> None:
    reference = _reference(graph)
    check = NumericCheck(reference)
    PassManager([CountNodes(), ScaleBias(factor=3.0)], instruments=[check]).run(graph)
    assert len(check.records) == 1  # analyses are not measured
    name, err = check.records[0]
    expected = float((2 * graph.tensor("fc.bias").detach() / 3).abs().max())
    assert name == "test-scale-bias{factor=3.0,preserve=none}"
    assert err == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------- pipeline and pass objects
def test_pass_filter_skips_by_name_and_stops_after_one(graph: Graph) -> None:
    pipeline = Pipeline([CountNodes(), ScaleBias(factor=2.0), ScaleBias(factor=3.0), NodesPlusOne()])
    bias = graph.tensor("fc.bias").detach().clone()
    stop, timing = PassFilter(stop_after="test-scale-bias"), Timing()
    run = PassManager(pipeline, [stop, timing]).run(graph)
    assert [str(p) for p, _ in run.results] == [str(CountNodes()), str(ScaleBias(factor=2.0))]
    assert run.skipped == [str(ScaleBias(factor=3.0)), str(NodesPlusOne())]
    assert [entry for entry, _ in timing.records] == [str(p) for p, _ in run.results]
    torch.testing.assert_close(graph.tensor("fc.bias"), bias * 2)
    assert stop.records[0] == (str(ScaleBias(factor=3.0)), "stopped after test-scale-bias")

    skip = PassFilter(skip=frozenset({"test-scale-bias"}))
    run = PassManager(pipeline, [skip]).run(graph)
    assert run.skipped == [str(ScaleBias(factor=2.0)), str(ScaleBias(factor=3.0))]
    assert not run.changed
    torch.testing.assert_close(graph.tensor("fc.bias"), bias * 2)  # unchanged by this run
    assert dataclasses.replace(skip).records == []  # a fresh filter, same settings


def test_pipeline_text_form() -> None:
    pipeline = Pipeline([MagnitudeImportance(norm=1), PruneChannels(ratio=0.25, ignore=("fc.*",))])
    assert str(pipeline) == (
        "pipeline(magnitude-importance{norm=1,aggregate=sum,normalize=none,scope=producers},"
        "prune-channels{ratio=0.25,target=channels,allocation=local,max_ratio=0.9,"
        "min_channels=1,round_to=1,overrides=[],ignore=[fc.*],reconstruct=False,ridge=0.001})"
    )
    assert str(Pipeline([DependencyGroups()])) == "pipeline(dependency-groups)"
    assert Pipeline([PruneChannels(overrides=(("c1", 0.25),))]).to_dict()["passes"] == [
        {
            "name": "prune-channels",
            "ratio": 0.5,
            "target": "channels",
            "allocation": "local",
            "max_ratio": 0.9,
            "min_channels": 1,
            "round_to": 1,
            "overrides": [("c1", 0.25)],
            "ignore": [],
            "reconstruct": False,
            "ridge": 0.001,
        }
    ]


def test_registry_maps_names_to_classes() -> None:
    assert registry["prune-channels"] is PruneChannels
    assert registry["dependency-groups"] is DependencyGroups
    assert registry["magnitude-importance"] is MagnitudeImportance
    assert registry["test-count-nodes"] is CountNodes


def test_register_rejects_bad_names() -> None:
    with pytest.raises(ValueError, match="kebab-case"):

        @register
        @pass_dataclass
        class Bad(Analysis):
            name: ClassVar[str] = "Bad_Name"

            def run(self, graph: Graph, am: AnalysisManager) -> None:
                return None


def test_passes_are_frozen() -> None:
    prune = PruneChannels(ratio=0.3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        prune.ratio = 0.4  # type: ignore[misc]
    assert prune == PruneChannels(ratio=0.3)
    assert hash(prune) == hash(PruneChannels(ratio=0.3))


@pytest.mark.parametrize(
    "options",
    [{"ratio": 1.0}, {"ratio": -0.1}, {"ratio": "half"}, {"min_channels": 0}, {"bogus": 1}],
    ids=["ratio-1", "ratio-negative", "ratio-string", "min-channels-0", "unknown-option"],
)
def test_options_validated_at_construction(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="PruneChannels"):
        PruneChannels(**options)
