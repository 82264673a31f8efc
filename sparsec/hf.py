"""Hugging Face checkpoints of pruned models: `save_pretrained` and `from_pretrained`.

Rules:
- a checkpoint is transformers' own: `config.json` + `model.safetensors` (+ the generation
  config), written by the model's `save_pretrained`, so every tool that reads Hugging Face
  checkpoints reads it;
- when every attention, MLP and mixture-of-experts block has the same widths, the config's
  standard fields (`hidden_size`, `num_attention_heads`, `num_key_value_heads`, `head_dim`,
  `intermediate_size`, the expert count `num_local_experts`/`num_experts` and width
  `moe_intermediate_size` (Mixtral: `intermediate_size`), under each family's own names)
  are rewritten, and the result is checked by building the architecture from that config
  on the meta device: if its tensor shapes equal the pruned model's, plain
  `transformers.AutoModel*.from_pretrained` loads it;
- otherwise (per-layer widths or expert counts, or a family whose config cannot say the
  widths, e.g. BERT with fewer heads of the same size) the standard fields keep the
  original architecture and the config's `sparsec` key holds what pruning changed
  (`Record`: tensor shapes and module attributes by name); `from_pretrained` here builds the original and applies it. Vanilla
  transformers refuses such a checkpoint with a size-mismatch error, never loads it wrong;
- a save writes a temporary sibling and renames it into place: an existing directory is
  replaced only with `overwrite=True`, and a failed save leaves nothing behind.

Example:
    compiled.save_pretrained("pruned-llama", tokenizer="path/to/original")
    model = transformers.AutoModelForCausalLM.from_pretrained("pruned-llama")   # uniform
    model = sparsec.hf.from_pretrained("pruned-llama")                         # any
"""

from __future__ import annotations

import copy
import inspect
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsec.errors import ArtifactError
from sparsec.materialize import Record, apply_record, block_widths

__all__ = [
    "CONFIG_KEY",
    "SavedCheckpoint",
    "adopt_standard_config",
    "from_pretrained",
    "is_transformers_model",
    "save_pretrained",
    "standard_config",
    "uniform_widths",
]

CONFIG_KEY = "sparsec"
_FORMAT = 1
# config fields that carry each width, tried in order (families name them differently)
_FIELDS: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size",),
    "num_attention_heads": ("num_attention_heads",),
    "num_key_value_heads": ("num_key_value_heads",),
    "head_dim": ("head_dim",),
    "intermediate_size": ("intermediate_size", "n_inner", "hidden_dim", "d_ff", "ffn_dim"),
    "num_experts": ("num_local_experts", "num_experts"),
    "expert_intermediate_size": ("moe_intermediate_size", "intermediate_size"),
}
# fields that repeat the model width in some families; they follow it when they equalled it
_HIDDEN_COPIES = ("word_embed_proj_dim", "embedding_size")
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "added_tokens.json", "chat_template.jinja", "chat_template.json",
)


@dataclass(frozen=True)
class SavedCheckpoint:
    """Where a checkpoint went and whether plain transformers can load it."""

    path: Path
    loads_in_transformers: bool
    reason: str  # why not, when it cannot


def is_transformers_model(module: nn.Module) -> bool:
    return any(c.__module__.startswith("transformers.") and c.__name__ == "PreTrainedModel" for c in type(module).__mro__)


def uniform_widths(model: nn.Module) -> dict[str, int] | None:
    """The one value of each width over all blocks, or None if any width differs per layer."""
    values: dict[str, set[int]] = {}
    for module in model.modules():
        for key, value in (block_widths(module) or {}).items():
            values.setdefault(key, set()).add(value)
    if not values or any(len(v) != 1 for v in values.values()):
        return None
    return {key: next(iter(v)) for key, v in values.items()}


def _set_field(config: Any, width: str, value: int) -> None:
    if width == "hidden_size":
        for copy_name in _HIDDEN_COPIES:
            if getattr(config, copy_name, None) == config.hidden_size:
                setattr(config, copy_name, value)
    for name in _FIELDS[width]:
        if name in config.attribute_map or hasattr(config, name):
            setattr(config, name, value)
            return
    if width == "head_dim":  # families that read getattr(config, "head_dim", ...)
        config.head_dim = value


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def standard_config(model: nn.Module) -> tuple[Any, str]:
    """A config with the pruned widths in its standard fields, or (None, why it cannot be)."""
    widths = uniform_widths(model)
    if widths is None:
        return None, "widths differ between layers, which a transformers config cannot say"
    config = copy.deepcopy(model.config)  # type: ignore[union-attr]
    for width, value in widths.items():
        _set_field(config, width, value)
    with torch.device("meta"):
        fresh = type(model)(config)
    expected, built = _shapes(model), _shapes(fresh)
    wrong = [n for n in expected if built.get(n) != expected[n]]
    if wrong:
        return None, (
            f"{type(config).__name__} derives {wrong[0]} as {built.get(wrong[0])} from its "
            f"fields, but the pruned model has {expected[wrong[0]]}"
        )
    return config, ""


def adopt_standard_config(model: nn.Module) -> str:
    """Write the pruned widths into the model's own config where it can say them.

    Returns '' when adopted, else why not (the config then keeps the original widths).
    The config object is shared by the model's blocks, so it is updated in place.
    """
    config, reason = standard_config(model)
    if config is not None:
        model.config.__dict__.update(config.__dict__)  # type: ignore[union-attr]
    return reason


def _copy_tokenizer(source: Path, target: Path) -> None:
    if not source.is_dir():
        raise ArtifactError(f"tokenizer directory {source} does not exist; pass the directory the model was loaded from")
    for name in _TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)


def save_pretrained(
    model: nn.Module, record: Record, directory: str | Path, *,
    tokenizer: str | Path | None = None, overwrite: bool = False,
) -> SavedCheckpoint:
    """Write `model` (a pruned transformers model) as a Hugging Face checkpoint."""
    if not is_transformers_model(model):
        raise ArtifactError(
            f"save_pretrained needs a Hugging Face transformers model, not {type(model).__name__}. "
            "Fix: compiled.save(directory) writes a deployable artifact for any model; "
            "compiled.module.state_dict() with safetensors saves the weights"
        )
    target = Path(directory)
    if target.exists() and not overwrite:
        raise ArtifactError(f"{target} exists; pass overwrite=True to replace it")
    if target.exists() and not target.is_dir():
        raise ArtifactError(f"{target} exists and is not a directory; choose another path")
    config, reason = standard_config(model)
    if config is None:
        config = copy.deepcopy(model.config)  # type: ignore[union-attr]
        setattr(config, CONFIG_KEY, {"format": _FORMAT, "record": record.to_dict()})
    temporary = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    own_config = model.config  # type: ignore[union-attr]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        model.config = config  # type: ignore[union-attr]
        model.save_pretrained(temporary, safe_serialization=True, **_own_names(model, reason))  # type: ignore[operator]
        if tokenizer is not None:
            _copy_tokenizer(Path(tokenizer), temporary)
        _replace(temporary, target)
    except ArtifactError:
        raise
    except OSError as exc:
        raise ArtifactError(f"could not write {target}: {exc}") from exc
    finally:
        model.config = own_config  # type: ignore[union-attr]
        shutil.rmtree(temporary, ignore_errors=True)
    return SavedCheckpoint(target, not reason, reason)


def _own_names(model: nn.Module, reason: str) -> dict[str, Any]:
    """save_pretrained's options for a recorded checkpoint: tensors under the module's own
    names, which `from_pretrained` here loads (transformers would otherwise write some
    families' legacy layout, e.g. Mixtral's experts one tensor per expert)."""
    accepts = "save_original_format" in inspect.signature(model.save_pretrained).parameters  # type: ignore[arg-type]
    return {"save_original_format": False} if reason and accepts else {}


def _replace(source: Path, target: Path) -> None:
    """Move `source` to `target`, replacing it; the old one is removed only after the move."""
    if not target.exists():
        source.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    target.rename(old)
    try:
        source.rename(target)
    except OSError:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def from_pretrained(directory: str | Path, *, model_class: Any = None) -> nn.Module:
    """Load a checkpoint that `save_pretrained` wrote (either kind), in eval mode, offline."""
    import transformers
    from safetensors.torch import load_file

    path = Path(directory)
    if not (path / "config.json").is_file():
        raise ArtifactError(f"{path} has no config.json: not a Hugging Face checkpoint")
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    cls = model_class or _architecture(config, path)
    saved = getattr(config, CONFIG_KEY, None)
    if saved is None:
        model: nn.Module = cls.from_pretrained(path, local_files_only=True)
        return model.eval()
    if saved.get("format") != _FORMAT:
        raise ArtifactError(f"{path}: sparsec checkpoint format {saved.get('format')} is not {_FORMAT}; upgrade sparsec")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ArtifactError(f"{path} has no model.safetensors")
    model = apply_record(cls(config), Record.from_dict(saved["record"]))
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded = {id(t) for n, t in model.state_dict(keep_vars=True).items() if n in state}
    untied = [n for n in missing if id(model.state_dict(keep_vars=True)[n]) not in loaded]
    if untied or unexpected:
        raise ArtifactError(
            f"{weights} does not fit the recorded architecture (missing {untied[:3]}, "
            f"unexpected {unexpected[:3]}): the checkpoint is damaged or from another model"
        )
    return model.eval()


def _architecture(config: Any, path: Path) -> Any:
    import transformers

    names = getattr(config, "architectures", None) or []
    for name in names:
        if hasattr(transformers, name):
            return getattr(transformers, name)
    raise ArtifactError(f"{path}/config.json names no transformers architecture ({names}); pass model_class=")
