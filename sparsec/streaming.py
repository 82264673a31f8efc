"""Sparsify a Hugging Face checkpoint on disk one decoder block at a time, in bounded memory.

Rules:
- the model is built from the checkpoint's config on the meta device (structure, no
  weights); the tensors outside the decoder blocks (embedding, final norm, head) are loaded
  only to run the calibration batches up to the first block, then dropped again;
- then each block in turn: its tensors are read from the safetensors shards (the index json
  says which shard holds each), in `dtype` (float32 by default: CPU half-precision matmuls
  are slow); the calibration hidden states go through it while hooks on its `nn.Linear`
  layers sum their input statistics (`InputStats`: ‖X_j‖² for Wanda, XᵀX for SparseGPT);
  every linear is pruned by `Sparsify.prune_weight`, the code of the whole-graph `sparsify`
  pass, so the weights equal the in-memory run's; the block is written as its own shard in
  the checkpoint's dtype and dropped;
- `sequential` (default: yes for SparseGPT, no for Wanda and magnitude, as in the
  `sparsify` pass): each layer's statistics come from what the already pruned layers before
  it produce (layers reading the same input, q/k/v or gate/up, are pruned together), and the
  next block reads the pruned block's outputs; otherwise every statistic is the dense model's;
- memory: one block's weights (in `dtype`) + the calibration hidden states (one block's
  inputs and outputs) + one block's statistics, whatever the depth;
- the options are `Sparsify`'s (pattern, sparsity, n:m, method, ignore and overrides globs
  over the full tensor names, blocksize, damp); linear layers of the blocks are sparsified,
  the embedding, norms and head are copied unchanged;
- the output is a transformers checkpoint (config and generation/tokenizer files copied, one
  shard per block plus one for the rest, `model.safetensors.index.json`) plus
  `sparsec_sparsify.json` (options, a row per layer, timings per block); it is written to a
  temporary sibling directory and renamed into place, so a failed run leaves nothing;
- a shard the index lists but the directory lacks, or a block tensor no shard holds, raises
  CheckpointError before any work; an empty calibration raises CalibrationError.

Example:
    calibration = token_windows(ids, window=128, count=4)
    sparsify_checkpoint("llama-7b", "llama-7b-wanda", calibration, Sparsify(method="wanda"))
    model = transformers.AutoModelForCausalLM.from_pretrained("llama-7b-wanda")
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsec.calibration import Calibration, require_calibration
from sparsec.errors import ArtifactError, CalibrationError, CheckpointError, PreconditionError
from sparsec.hf import _TOKENIZER_FILES, _architecture, _replace
from sparsec.ops.masks import SparsityPattern
from sparsec.passes.analysis.layer_input_stats import InputStats, linear_rows
from sparsec.passes.rewrite.sparsify import Sparsify, layer_row
from sparsec.pipeline.base import format_pass

__all__ = ["BlockTiming", "SparsifiedCheckpoint", "sparsify_checkpoint"]

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
REPORT = "sparsec_sparsify.json"
_COPIED = ("config.json", "generation_config.json", *_TOKENIZER_FILES)

Progress = Callable[[str], None]
Hidden = list[torch.Tensor]
Calls = list[tuple[tuple[Any, ...], dict[str, Any]]]  # per batch: a block's other arguments


@dataclass(frozen=True)
class BlockTiming:
    """Seconds one block spent reading, calibrating (forward passes and statistics), pruning
    and writing."""

    block: int
    load_s: float
    calibrate_s: float
    prune_s: float
    write_s: float

    @property
    def total_s(self) -> float:
        return self.load_s + self.calibrate_s + self.prune_s + self.write_s


@dataclass(frozen=True)
class SparsifiedCheckpoint:
    """Where the sparsified checkpoint went, a row per layer, and what the run held and took."""

    path: Path
    layers: tuple[dict[str, Any], ...]
    blocks: tuple[BlockTiming, ...]
    block_weight_bytes: int  # the largest block's tensors, in the checkpoint's dtype
    activation_bytes: int  # calibration hidden states and block arguments held at once
    seconds: float


@dataclass(frozen=True)
class _Shards:
    """The tensors of a safetensors checkpoint: which file holds each name."""

    directory: Path
    files: dict[str, str]

    @classmethod
    def read(cls, directory: Path) -> _Shards:
        from safetensors import safe_open

        if (directory / INDEX).is_file():
            files: dict[str, str] = json.loads((directory / INDEX).read_text())["weight_map"]
        elif (directory / SINGLE).is_file():
            with safe_open(str(directory / SINGLE), framework="pt") as handle:
                files = dict.fromkeys(handle.keys(), SINGLE)
        else:
            raise CheckpointError(
                f"{directory} has neither {INDEX} nor {SINGLE}: not a safetensors checkpoint. "
                "Fix: save it with save_pretrained(directory, safe_serialization=True) "
                "(pytorch_model.bin files are not read)"
            )
        missing = sorted({f for f in files.values() if not (directory / f).is_file()})
        if missing:
            held = [name for name, f in files.items() if f == missing[0]]
            more = f" (and {len(missing) - 1} more: {', '.join(missing[1:4])})" if missing[1:] else ""
            raise CheckpointError(
                f"shard {directory / missing[0]} is missing{more}: {INDEX} places "
                f"{len(held)} tensors there, {held[0]} first. Fix: copy or download all "
                f"{len(set(files.values()))} shards the index lists into {directory} (an "
                "interrupted download or copy leaves some out)"
            )
        return cls(directory, files)

    def bytes_on_disk(self) -> int:
        return sum((self.directory / f).stat().st_size for f in set(self.files.values()))

    def load(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """The named tensors, as stored; each shard is opened (memory-mapped) once."""
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        tensors: dict[str, torch.Tensor] = {}
        for file, group in by_file.items():
            with safe_open(str(self.directory / file), framework="pt") as handle:
                held = set(handle.keys())
                for name in group:
                    if name not in held:
                        raise CheckpointError(
                            f"{self.directory / file} does not hold {name}, which {INDEX} "
                            "places there: the shard is damaged or from another checkpoint. "
                            "Fix: download that shard again"
                        )
                    tensors[name] = handle.get_tensor(name)
        return tensors


class _Captured(Exception):
    """Raised by the last block's stand-in once every block's arguments are recorded."""


class _Stop(Exception):
    """Raised by a hook once the layers that read one input have all seen it."""


def _blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The module list of decoder blocks (`num_hidden_layers` modules of one class)."""
    count = model.config.get_text_config().num_hidden_layers  # type: ignore[operator, union-attr]
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) == count > 0
            and len({type(block) for block in module}) == 1
        ):
            return name, module
    raise PreconditionError(
        f"{type(model).__name__} has no list of {count} decoder blocks of one class; "
        "sparsify_checkpoint streams decoder-only transformers block by block. Fix: prune "
        "it in memory with sparsec.compile(..., pipeline='sparsify{...}')"
    )


def _fill_buffers(model: nn.Module, part: nn.Module) -> None:
    """Give `part`'s non-persistent buffers (rotary frequencies) their values on the CPU:
    they are computed, not stored, so the checkpoint does not hold them."""
    for owner in part.modules():
        for name in owner._non_persistent_buffers_set:
            buffer = getattr(owner, name)
            if isinstance(buffer, torch.Tensor) and buffer.is_meta:
                setattr(owner, name, torch.empty_like(buffer, device="cpu"))
                model._init_weights(owner)  # type: ignore[operator]


def _load_into(module: nn.Module, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Assign `tensors` (names local to `module`) in place of its meta tensors, floating
    point ones converted to `dtype` one at a time."""
    for name in list(tensors):
        tensor = tensors.pop(name)
        if tensor.is_floating_point():
            tensor = tensor.to(dtype)
        module.load_state_dict({name: tensor}, strict=False, assign=True)


def _capture(
    model: nn.Module, blocks: nn.ModuleList, calibration: Calibration
) -> tuple[Hidden, list[Calls]]:
    """Run every batch up to the first block: its hidden states, and each block's other
    arguments per batch (attention mask, position embeddings: computed once per batch)."""
    hidden: Hidden = []
    calls: list[Calls] = [[] for _ in blocks]

    def stand_in(index: int) -> Callable[..., torch.Tensor]:
        def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if index == 0:
                hidden.append(hidden_states.detach())
            calls[index].append((args, kwargs))
            if index == len(blocks) - 1:
                raise _Captured
            return hidden_states

        return forward

    for index, block in enumerate(blocks):
        block.forward = stand_in(index)
    try:
        with torch.no_grad():
            for args, kwargs in calibration:
                try:
                    model(*args, **kwargs)
                except _Captured:
                    continue
                raise PreconditionError(
                    f"{type(model).__name__} returned without calling its last decoder block"
                )
    finally:
        for block in blocks:
            del block.forward
    if not hidden:
        raise CalibrationError(
            "the calibration has no batches; fix: pass Calibration(batches) or "
            "token_windows(tokens, window=..., count=...) with at least one"
        )
    return hidden, calls


def _run(block: nn.Module, hidden: Hidden, calls: Calls) -> Hidden:
    outputs = []
    with torch.no_grad():
        for x, (args, kwargs) in zip(hidden, calls, strict=True):
            out = block(x, *args, **kwargs)
            outputs.append(out[0] if isinstance(out, tuple) else out)
    return outputs


def _statistics(
    block: nn.Module,
    linears: dict[str, nn.Linear],
    hidden: Hidden,
    calls: Calls,
    *,
    gram: bool,
    first_input_only: bool,
) -> tuple[dict[str, InputStats], Hidden]:
    """Input statistics of `linears` over the batches, and the block's outputs; layers fed
    the same tensor (q/k/v) share one. With `first_input_only` each batch stops once the
    layers that read the first input seen have run: only those are returned, and no outputs
    (the sequential order)."""
    stats: dict[str, InputStats] = {}
    owners: set[str] = set()
    last: list[tuple[str, torch.Tensor]] = []  # the previous hooked layer and its input
    first_batch = [True]

    def pre_hook(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if first_batch[0]:  # who shares whose input is decided on the first batch
                if last and x is last[-1][1]:
                    stats[name] = stats[last[-1][0]]
                elif first_input_only and stats:
                    raise _Stop
                else:
                    stats[name] = InputStats()
                    owners.add(name)
                last[:] = [(name, x)]
            elif name not in stats:
                raise _Stop
            if name in owners:
                stats[name].add(linear_rows(x), gram)

        return hook

    outputs: Hidden = []
    handles = [m.register_forward_pre_hook(pre_hook(n)) for n, m in linears.items()]
    try:
        with torch.no_grad():
            for x, (args, kwargs) in zip(hidden, calls, strict=True):
                with contextlib.suppress(_Stop):
                    out = block(x, *args, **kwargs)
                    if not first_input_only:
                        outputs.append(out[0] if isinstance(out, tuple) else out)
                first_batch[0] = False
                last.clear()
    finally:
        for handle in handles:
            handle.remove()
    return stats, outputs


def _sparsify_block(
    spec: Sparsify,
    block: nn.Module,
    local: str,
    hidden: Hidden | None,
    calls: Calls,
    sequential: bool,
) -> tuple[Hidden, list[dict[str, Any]], float]:
    """Prune `block`'s linears in place (see module rules): the block's outputs for the next
    one (none without calibration), a row per layer, and the seconds spent pruning."""
    rows: list[dict[str, Any]] = []
    plan: dict[str, SparsityPattern] = {}
    pending: dict[str, nn.Linear] = {}
    for name, module in block.named_modules():
        if isinstance(module, nn.Linear):
            outcome = spec.weight_pattern(f"{local}{name}.weight", tuple(module.weight.shape))
            if isinstance(outcome, str):
                rows.append(layer_row(f"{local}{name}.weight", tuple(module.weight.shape), outcome))
            else:
                plan[name], pending[name] = outcome, module
    outputs: Hidden = []
    prune_s = 0.0
    while pending:
        stats: dict[str, InputStats | None] = dict.fromkeys(pending)
        if hidden is not None:
            found, outputs = _statistics(
                block, pending, hidden, calls,
                gram=spec.method == "sparsegpt", first_input_only=sequential,
            )
            if not found:
                raise PreconditionError(
                    f"{local}{next(iter(pending))} never ran on the calibration batches, so "
                    "it has no statistics. Fix: sparsify{ignore=[...]} the layers the block "
                    "does not call"
                )
            stats = dict(found)
        started = time.perf_counter()
        for name in [n for n in pending if n in stats]:
            module = pending.pop(name)
            weight, mask = spec.prune_weight(
                f"{local}{name}.weight", module.weight.detach(), plan[name], stats[name]
            )
            with torch.no_grad():
                module.weight.copy_(weight)
            rows.append(
                layer_row(f"{local}{name}.weight", tuple(weight.shape), plan[name], mask, spec.method)
            )
        prune_s += time.perf_counter() - started
    if hidden is not None and not outputs:  # sequential: the pruned block's outputs
        outputs = _run(block, hidden, calls)
    return outputs, rows, prune_s


@contextlib.contextmanager
def _reporter(progress: Progress | None, blocks: int) -> Iterator[Progress]:
    """A line per block to `progress`; by default a progress bar when stderr is a terminal."""
    if progress is not None:
        yield progress
    elif not sys.stderr.isatty():
        yield lambda message: None
    else:
        from rich.console import Console
        from rich.progress import Progress as Bar

        with Bar(console=Console(stderr=True)) as bar:
            task = bar.add_task("sparsifying blocks", total=blocks)
            yield lambda message: bar.update(task, advance=1, description=message)


def _tensor_bytes(values: Iterable[Any]) -> int:
    seen: dict[int, int] = {}
    for value in values:
        for leaf in torch.utils._pytree.tree_leaves(value):
            if isinstance(leaf, torch.Tensor):
                seen[id(leaf)] = leaf.numel() * leaf.element_size()
    return sum(seen.values())


def _check_space(target: Path, needed: int) -> None:
    """Refuse before any work when the disk that will hold `target` has too little room."""
    existing = target.resolve().parent
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise ArtifactError(
            f"writing the sparsified checkpoint needs about {needed / 1e9:.1f} GB at "
            f"{existing}, which has {free / 1e9:.1f} GB free; fix: free space or choose "
            "another out"
        )


@dataclass(frozen=True)
class _Source:
    """The checkpoint being read: its shards, the model on the meta device, its blocks and
    which stored tensors belong to each block (the rest: embedding, final norm, head)."""

    directory: Path
    shards: _Shards
    model: nn.Module
    prefix: str
    blocks: nn.ModuleList
    block_tensors: list[list[str]]
    rest: list[str]

    @classmethod
    def open(cls, directory: Path) -> _Source:
        import transformers

        if not (directory / "config.json").is_file():
            raise CheckpointError(f"{directory} has no config.json: not a Hugging Face checkpoint")
        shards = _Shards.read(directory)
        config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
        config.use_cache = False
        with torch.device("meta"):
            model = _architecture(config, directory)(config).eval()
        prefix, blocks = _blocks(model)
        needed = [f"{prefix}.{i}.{name}" for i, b in enumerate(blocks) for name in b.state_dict()]
        absent = [name for name in needed if name not in shards.files]
        if absent:
            raise CheckpointError(
                f"no shard of {directory} holds {absent[0]} ({len(absent)} block tensors "
                f"missing), which {type(model).__name__} needs: the checkpoint is incomplete or "
                "from another model. Fix: download the complete checkpoint again"
            )
        # stored tensors under a block's prefix that the model does not name are copied as
        # they are, into that block's shard
        block_tensors = [
            [name for name in shards.files if name.startswith(f"{prefix}.{i}.")]
            for i in range(len(blocks))
        ]
        taken = {name for names in block_tensors for name in names}
        rest = [name for name in shards.files if name not in taken]
        return cls(directory, shards, model, prefix, blocks, block_tensors, rest)

    def capture(self, calibration: Calibration, dtype: torch.dtype) -> tuple[Hidden, list[Calls]]:
        """The first block's inputs and every block's other arguments, per batch; only the
        tensors outside the blocks are loaded for it, and dropped again."""
        _load_into(self.model, self.shards.load(self.rest), dtype)
        _fill_buffers(self.model, self.model)
        try:
            return _capture(self.model, self.blocks, calibration)
        finally:
            self.model.to("meta")


class _Writer:
    """Writes shard k of n, the index, the copied config/tokenizer files, into `directory`."""

    def __init__(self, directory: Path, shards: int) -> None:
        self.directory, self.shards = directory, shards
        self.weight_map: dict[str, str] = {}
        self.total = 0
        self.written = 0

    def shard(self, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        self.written += 1
        file = f"model-{self.written:05d}-of-{self.shards:05d}.safetensors"
        save_file(tensors, str(self.directory / file), metadata={"format": "pt"})
        self.weight_map.update(dict.fromkeys(tensors, file))
        self.total += sum(t.numel() * t.element_size() for t in tensors.values())

    def finish(self, source: Path) -> None:
        index = {"metadata": {"total_size": self.total}, "weight_map": self.weight_map}
        (self.directory / INDEX).write_text(json.dumps(index, indent=2))
        for name in _COPIED:
            if (source / name).is_file():
                shutil.copy2(source / name, self.directory / name)


def _stream_block(
    spec: Sparsify,
    source: _Source,
    index: int,
    hidden: Hidden | None,
    calls: Calls,
    sequential: bool,
    dtype: torch.dtype,
    writer: _Writer,
) -> tuple[Hidden, list[dict[str, Any]], BlockTiming, int]:
    """Load block `index`, sparsify it, write its shard, drop it: the next block's inputs,
    a row per layer, the timing and the block's stored bytes."""
    t0 = time.perf_counter()
    block, local = source.blocks[index], f"{source.prefix}.{index}."
    stored = source.shards.load(source.block_tensors[index])
    stored_bytes = sum(t.numel() * t.element_size() for t in stored.values())
    own = block.state_dict()
    dtypes = {name: t.dtype for name, t in stored.items()}
    extra = [name for name in stored if name[len(local) :] not in own]
    _load_into(block, {n[len(local) :]: stored.pop(n) for n in list(stored) if n not in extra}, dtype)
    _fill_buffers(source.model, block)
    t1 = time.perf_counter()
    outputs, rows, prune_s = _sparsify_block(spec, block, local, hidden, calls, sequential)
    t2 = time.perf_counter()
    tensors = {
        f"{local}{name}": value.detach().to(dtypes[f"{local}{name}"]).contiguous()
        for name, value in block.state_dict().items()
        if f"{local}{name}" in dtypes
    }
    writer.shard(tensors | stored)
    block.to("meta")
    timing = BlockTiming(index, t1 - t0, t2 - t1 - prune_s, prune_s, time.perf_counter() - t2)
    return outputs, rows, timing, stored_bytes


def sparsify_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    calibration: Calibration | Iterable[Any] | None,
    sparsify: Sparsify | None = None,
    *,
    sequential: bool | None = None,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> SparsifiedCheckpoint:
    """Sparsify the decoder blocks of the checkpoint at `checkpoint` into `out`, one block in
    memory at a time (see module rules); `sparsify` defaults to Wanda, 50% unstructured."""
    started = time.perf_counter()
    spec = sparsify or Sparsify(method="wanda")
    if spec.layers != ("linear",):
        raise PreconditionError(
            f"sparsify_checkpoint sparsifies the nn.Linear layers of decoder blocks; "
            f"{format_pass(spec)} asks for {list(spec.layers)}. Fix: leave layers= out"
        )
    sequential = spec.method == "sparsegpt" if sequential is None else sequential
    target = Path(out)
    if target.resolve() == Path(checkpoint).resolve():
        raise ArtifactError(f"{target} is the checkpoint being read; choose another out")
    if target.exists() and not overwrite:
        raise ArtifactError(f"{target} exists; pass overwrite=True to replace it")
    source = _Source.open(Path(checkpoint))
    _check_space(target, source.shards.bytes_on_disk())
    data = None
    if spec.method != "magnitude":
        given = calibration
        if not isinstance(given, Calibration) and given is not None:
            given = Calibration(given)
        data = require_calibration(given, f"sparsify_checkpoint with {format_pass(spec)}")
    hidden, calls = (
        source.capture(data, dtype) if data is not None else ([], [[] for _ in source.blocks])
    )
    activation_bytes = 2 * _tensor_bytes(hidden) + _tensor_bytes(calls)

    temporary = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    rows: list[dict[str, Any]] = []
    timings: list[BlockTiming] = []
    block_bytes = 0
    try:
        temporary.mkdir(parents=True)
        writer = _Writer(temporary, len(source.blocks) + 1)
        with _reporter(progress, len(source.blocks)) as report:
            for index in range(len(source.blocks)):
                outputs, block_rows, timing, stored_bytes = _stream_block(
                    spec, source, index, hidden if data is not None else None, calls[index],
                    sequential, dtype, writer,
                )
                hidden, rows, block_bytes = outputs, rows + block_rows, max(block_bytes, stored_bytes)
                timings.append(timing)
                report(f"block {index + 1}/{len(source.blocks)} in {timing.total_s:.1f} s")
        writer.shard(source.shards.load(source.rest))
        writer.finish(source.directory)
        result = SparsifiedCheckpoint(
            target, tuple(rows), tuple(timings), block_bytes, activation_bytes,
            time.perf_counter() - started,
        )
        report_data = {
            "pass": format_pass(spec),
            "sequential": sequential,
            "dtype": str(dtype).removeprefix("torch."),
            "calibration_batches": len(hidden),
            "block_weight_bytes": block_bytes,
            "activation_bytes": activation_bytes,
            "seconds": round(result.seconds, 3),
            "blocks": [asdict(t) | {"total_s": t.total_s} for t in timings],
            "layers": rows,
        }
        (temporary / REPORT).write_text(json.dumps(report_data, indent=2))
        _replace(temporary, target)
    except OSError as exc:
        raise ArtifactError(f"could not write {target}: {exc}") from exc
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return result
