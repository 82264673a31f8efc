"""Pass base classes, results and the registry of passes by kebab-case name.

Rules:
- a pass is a frozen pydantic dataclass: its fields are its options, validated when it is
  constructed, and it keeps no state between runs;
- an `Analysis` computes a result and never edits the graph; a `RewritePass` edits through
  the Rewriter and returns `PassResult(changed, preserved)`; by default nothing is preserved;
- a rewrite that reports what it did returns it as `PassResult(summary=...)`: an instance of
  its own frozen `PassSummary` dataclass, defined next to the pass, read by attribute
  (`result.summary.groups`); the report stores `summary.to_dict()`;
- analyses that fill a role (e.g. "channel-importance") say so in `role`, so a pipeline can
  choose the criterion a later rewrite uses.

Example:
    @register
    @pass_dataclass
    class Fold(RewritePass):
        name: ClassVar[str] = "fold"
        def run(self, graph, am): ...

    @dataclass(frozen=True, kw_only=True)
    class FoldSummary(PassSummary):
        folded: int
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import pydantic

from sparsec.errors import PassOptionError

if TYPE_CHECKING:
    from sparsec.ir import Change, Graph
    from sparsec.pipeline.analysis_manager import AnalysisManager

__all__ = [
    "Analysis",
    "Pass",
    "PassResult",
    "PassSummary",
    "PRESERVE_ALL",
    "RewritePass",
    "pass_dataclass",
    "register",
    "registry",
    "format_pass",
]

T = TypeVar("T", bound=type)

_validated_dataclass = pydantic.dataclasses.dataclass(
    frozen=True, config=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True)
)


def pass_dataclass(cls: T) -> T:
    """Decorator for pass classes: frozen, typed, validated at construction.

    Invalid options raise PassOptionError (a ConfigError naming the pass and each option),
    not pydantic's ValidationError.
    """
    built = _validated_dataclass(cls)
    validate = built.__init__

    @functools.wraps(validate)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            validate(self, *args, **kwargs)
        except pydantic.ValidationError as exc:
            name = f"{getattr(built, 'name', '') or built.__name__} ({built.__name__})"
            raise PassOptionError(name, list(exc.errors(include_url=False))) from None  # type: ignore[arg-type]

    built.__init__ = __init__  # type: ignore[method-assign]
    return built  # type: ignore[return-value]


class Pass:
    """Common base: a kebab-case `name`, options as dataclass fields."""

    name: ClassVar[str] = ""

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def __str__(self) -> str:
        return format_pass(self)


class Analysis(Pass, abc.ABC):
    """Computes a result from the graph; must not edit it. Results are cached by the manager."""

    role: ClassVar[str | None] = None

    @abc.abstractmethod
    def run(self, graph: Graph, am: AnalysisManager) -> Any:
        """Compute the result; ask `am` for other analyses this one needs."""


class _PreserveAll:
    def __repr__(self) -> str:
        return "PRESERVE_ALL"


PRESERVE_ALL = _PreserveAll()
"""A `preserved` value meaning every cached analysis is still valid."""


@dataclass(frozen=True, kw_only=True)
class PassSummary:
    """What one rewrite reports: each pass that reports subclasses this next to the pass.

    Rules:
    - a subclass is a frozen, keyword-only dataclass; its fields are what the pass reports,
      in the order the report lists them;
    - a field the pass did not fill this run is `None` (e.g. sparsify's `stages` without
      SparseGPT) and is left out of `to_dict()`, the form the compile report stores.

    Example:
        SparsifySummary(pattern="nm", method="magnitude", layers=[...]).to_dict()
        # {"pattern": "nm", "method": "magnitude", "layers": [...]}
    """

    def to_dict(self) -> dict[str, Any]:
        """The fields in order, without those left `None` (nested values are not copied)."""
        values = ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))
        return {name: value for name, value in values if value is not None}


@dataclass(frozen=True)
class PassResult:
    """What a rewrite did: whether it changed the graph, which analyses survive, a summary,
    and notes for the user (e.g. a lowering pass saying which layers it left alone, and why)."""

    changed: bool
    preserved: frozenset[type[Analysis]] | _PreserveAll = frozenset()
    changes: tuple[Change, ...] = ()
    notes: tuple[str, ...] = ()
    summary: PassSummary | None = None


class RewritePass(Pass, abc.ABC):
    """Edits the graph through `graph.rewrite(self.name)`.

    `preserves_numerics` says the pass only restructures: the pass manager's numeric check
    then requires outputs to stay allclose to the input model.
    """

    preserves_numerics: ClassVar[bool] = False

    @abc.abstractmethod
    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        """Edit the graph through `graph.rewrite(self.name)` and say what changed."""


registry: dict[str, type[Pass]] = {}
"""Every registered pass class by its kebab-case name."""


def register(cls: T) -> T:
    """Class decorator: add a pass to `registry` under its `name`."""
    name = getattr(cls, "name", "")
    if not name or name != name.lower() or " " in name or "_" in name:
        raise ValueError(f"{cls.__name__}.name must be a kebab-case string, got {name!r}")
    if name in registry and registry[name] is not cls:
        raise ValueError(f"pass name {name!r} is registered twice ({registry[name].__name__}, {cls.__name__})")
    registry[name] = cls
    return cls


def _format_option(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_option(v) for v in value) + "]"
    if hasattr(value, "value"):  # enums
        return str(value.value)
    return repr(value)


def format_pass(p: Pass) -> str:
    """`prune-channels{ratio=0.5,min_channels=1}`: the textual form of one pass."""
    options = ",".join(f"{k}={_format_option(v)}" for k, v in p.options().items())
    return f"{p.name}{{{options}}}" if options else p.name
