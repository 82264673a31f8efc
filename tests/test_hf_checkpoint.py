"""Hugging Face checkpoints of pruned models: plain transformers loads uniform ones, sparsec any.

Rules checked:
- uniform widths (`structured-50`, local allocation): `save_pretrained` rewrites the config's
  standard fields and a process that never imports sparsec loads it with transformers alone,
  with outputs equal to compiled.module's (atol 1e-5);
- per-layer widths (global allocation): the config keeps the original fields plus the
  `sparsec` key, `sparsec.hf.from_pretrained` rebuilds it with equal outputs;
- greedy `generate()` with the KV cache gives the same tokens before saving and after
  loading, for LLaMA and Qwen2 with GQA, both kinds;
- tokenizer files are copied; bad input gets named errors and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from zoo import ZOO, hf_available

import sparsec
import sparsec.hf
from sparsec.errors import ArtifactError

FAMILIES = ["bert", "distilbert", "gpt2", "llama-gqa", "qwen2-gqa", "vit", "t5-encoder"]
GLOBAL = "magnitude-importance,prune-channels{ratio=0.5,allocation=global}"

_LOADER = """
import json, sys
import numpy as np, torch, transformers
plan = json.load(open(sys.argv[1]))
for entry in plan:
    config = transformers.AutoConfig.from_pretrained(entry["dir"], local_files_only=True)
    cls = getattr(transformers, config.architectures[0])
    model = cls.from_pretrained(entry["dir"], local_files_only=True).eval()
    inputs = {k: torch.from_numpy(np.load(v)) for k, v in entry["inputs"].items()}
    with torch.no_grad():
        out = model(**inputs)
    first = out.logits if hasattr(out, "logits") else out.last_hidden_state
    np.save(entry["out"], first.numpy())
assert "sparsec" not in sys.modules, "sparsec was imported"
print("loaded", len(plan))
"""


def _needs(name: str) -> None:
    if not hf_available(ZOO[name].needs or ""):
        pytest.skip(f"transformers.{ZOO[name].needs} is not available")


def _kwargs(inputs: Any) -> dict[str, torch.Tensor]:
    return dict(inputs) if isinstance(inputs, dict) else {"pixel_values": inputs[0]}


def _first(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _compile(name: str, pipeline: str) -> tuple[Any, dict[str, torch.Tensor]]:
    _needs(name)
    model, inputs = ZOO[name].build()
    return sparsec.compile(model, inputs, backend="torch", pipeline=pipeline), _kwargs(inputs)


def test_uniform_checkpoints_load_in_plain_transformers(tmp_path: Path) -> None:
    plan, expected = [], {}
    for name in FAMILIES:
        if not hf_available(ZOO[name].needs or ""):
            continue
        compiled, inputs = _compile(name, "structured-50")
        saved = compiled.save_pretrained(tmp_path / name)
        assert saved.loads_in_transformers, f"{name}: {saved.reason}"
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert sparsec.hf.CONFIG_KEY not in config
        files = {}
        for key, tensor in inputs.items():
            files[key] = str(tmp_path / f"{name}-{key}.npy")
            np.save(files[key], tensor.numpy())
        plan.append(
            {"dir": str(tmp_path / name), "inputs": files, "out": str(tmp_path / f"{name}-out.npy")}
        )
        with torch.no_grad():
            expected[name] = _first(compiled.module.eval()(**inputs)).numpy()
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", _LOADER, str(tmp_path / "plan.json")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "HF_HUB_OFFLINE": "1"},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name, value in expected.items():
        np.testing.assert_allclose(np.load(tmp_path / f"{name}-out.npy"), value, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["llama-gqa", "bert", "gpt2"])
def test_per_layer_widths_load_with_sparsec(name: str, tmp_path: Path) -> None:
    compiled, inputs = _compile(name, GLOBAL)
    saved = compiled.save_pretrained(tmp_path / "ck")
    assert not saved.loads_in_transformers and "differ between layers" in saved.reason
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config[sparsec.hf.CONFIG_KEY]["record"]["shapes"]
    reloaded = sparsec.hf.from_pretrained(tmp_path / "ck")
    with torch.no_grad():
        torch.testing.assert_close(
            _first(reloaded(**inputs)), _first(compiled.module.eval()(**inputs)), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("pipeline", ["structured-50", GLOBAL], ids=["uniform", "per-layer"])
@pytest.mark.parametrize("name", ["llama-gqa", "qwen2-gqa"])
def test_greedy_generate_is_unchanged_by_the_round_trip(
    name: str, pipeline: str, tmp_path: Path
) -> None:
    compiled, inputs = _compile(name, pipeline)
    module = compiled.module.eval()
    attention = module.model.layers[0].self_attn
    assert (
        attention.q_proj.out_features
        // attention.head_dim
        % (attention.k_proj.out_features // attention.head_dim)
        == 0
    )
    ids = inputs["input_ids"][:1]
    before = module.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True)
    compiled.save_pretrained(tmp_path / "ck")
    after = sparsec.hf.from_pretrained(tmp_path / "ck").generate(
        ids, max_new_tokens=8, do_sample=False, use_cache=True
    )
    assert before.shape[1] == ids.shape[1] + 8
    assert torch.equal(before, after)


def test_causal_lm_with_use_cache_compiles_and_keeps_its_config() -> None:
    _needs("llama-gqa")
    model, inputs = ZOO["llama-gqa"].build()
    model.config.use_cache = True
    compiled = sparsec.compile(model, inputs, backend="torch", pipeline="structured-30")
    assert model.config.use_cache is True
    assert any("use_cache=False" in note for note in compiled.report.notes)
    assert "use_cache=False" in compiled.report.to_markdown()


def test_tokenizer_files_are_copied(tmp_path: Path) -> None:
    compiled, _ = _compile("gpt2", "structured-50")
    source = tmp_path / "original"
    source.mkdir()
    (source / "tokenizer.json").write_text('{"version": "1.0"}')
    (source / "tokenizer_config.json").write_text("{}")
    (source / "pytorch_model.bin").write_text("not a tokenizer file")
    compiled.save_pretrained(tmp_path / "ck", tokenizer=source)
    assert (tmp_path / "ck" / "tokenizer.json").read_text() == '{"version": "1.0"}'
    assert (tmp_path / "ck" / "tokenizer_config.json").exists()
    assert not (tmp_path / "ck" / "pytorch_model.bin").exists()


def test_not_a_transformers_model_names_the_alternative(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    compiled = sparsec.compile(model, (torch.randn(2, 8),), backend="torch")
    with pytest.raises(ArtifactError, match=r"compiled\.save"):
        compiled.save_pretrained(tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_existing_directory_needs_overwrite_and_failures_leave_nothing(tmp_path: Path) -> None:
    compiled, _ = _compile("bert", "structured-50")
    target = tmp_path / "ck"
    compiled.save_pretrained(target)
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(ArtifactError, match="overwrite=True"):
        compiled.save_pretrained(target)
    with pytest.raises(ArtifactError, match="tokenizer directory"):
        compiled.save_pretrained(target, overwrite=True, tokenizer=tmp_path / "missing")
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp, (
        "the old checkpoint is intact"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"], "no temporaries left"
    compiled.save_pretrained(target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    sparsec.hf.from_pretrained(target)


def _more_families() -> dict[str, Any]:
    import transformers

    small = {
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 100,
        "max_position_embeddings": 64,
    }
    return {
        "opt": lambda: transformers.OPTForCausalLM(
            transformers.OPTConfig(hidden_size=64, ffn_dim=128, word_embed_proj_dim=64, **small)
        ),
        "gpt-neox": lambda: transformers.GPTNeoXForCausalLM(
            transformers.GPTNeoXConfig(hidden_size=64, intermediate_size=128, **small)
        ),
        "phi": lambda: transformers.PhiForCausalLM(
            transformers.PhiConfig(hidden_size=64, intermediate_size=128, **small)
        ),
    }


@pytest.mark.parametrize("name", ["opt", "gpt-neox", "phi"])
def test_more_causal_lm_families_round_trip(name: str, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = _more_families()[name]().eval()
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    compiled = sparsec.compile(model, {"input_ids": ids}, backend="torch", pipeline="structured-50")
    module = compiled.to_module().eval()
    assert type(module) is type(model)
    saved = compiled.save_pretrained(tmp_path / "ck")
    assert saved.loads_in_transformers, saved.reason
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ck").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, module(ids).logits, atol=1e-5, rtol=0)
    before = module.generate(ids[:1], max_new_tokens=4, do_sample=False)
    assert torch.equal(before, reloaded.generate(ids[:1], max_new_tokens=4, do_sample=False))
