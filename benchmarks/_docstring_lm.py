"""A small causal language model trained here on the standard library's docstrings.

Why: quality on trained weights needs a trained model, and nothing may be downloaded. Python
ships megabytes of English prose in its docstrings.

Rules:
- the corpus is the docstrings of the modules in `MODULES` (each module's, then each public
  class's and function's), deduplicated, UTF-8 bytes; the last 10% is held out;
- the model is a LLaMA with grouped-query attention (`transformers.LlamaForCausalLM`:
  hidden 128, 4 layers (`layers`), 4 query heads sharing 2 KV heads, FFN 384, byte vocabulary 256);
- it is trained with AdamW and a cosine schedule on random windows of `SEQUENCE` bytes;
- quality is perplexity per byte on held-out windows: lower is better.

Example:
    train, held = corpus_split()
    model = train_model(train, steps=400)
    print(perplexity(model, windows(held, count=8, batch=8)))
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "SEQUENCE",
    "add_run_options",
    "corpus_split",
    "new_model",
    "perplexity",
    "train_model",
    "trained",
    "windows",
]

SEQUENCE = 64
MODULES = (
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "cmd",
    "codecs",
    "collections",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "doctest",
    "email",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html.parser",
    "http.client",
    "imaplib",
    "importlib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "locale",
    "logging",
    "lzma",
    "mailbox",
    "mimetypes",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pdb",
    "pickle",
    "pkgutil",
    "platform",
    "plistlib",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "ssl",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "trace",
    "traceback",
    "types",
    "typing",
    "unittest",
    "urllib.parse",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "xml.dom.minidom",
    "zipfile",
)


def corpus_split() -> tuple[torch.Tensor, torch.Tensor]:
    """The docstring corpus as byte tensors: (train, held out)."""
    seen: set[str] = set()
    texts: list[str] = []
    for name in MODULES:
        module = importlib.import_module(name)
        objects: list[Any] = [module]
        objects += [
            value
            for key, value in sorted(vars(module).items())
            if not key.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
        ]
        for obj in objects:
            doc = inspect.getdoc(obj)
            if doc and doc not in seen:
                seen.add(doc)
                texts.append(doc)
    data = torch.frombuffer(bytearray("\n\n".join(texts).encode()), dtype=torch.uint8).long()
    cut = int(len(data) * 0.9)
    return data[:cut], data[cut:]


def new_model(layers: int = 4) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        vocab_size=256,
        max_position_embeddings=SEQUENCE,
        use_cache=False,
        attn_implementation="sdpa",
    )
    return transformers.LlamaForCausalLM(config)


def windows(data: torch.Tensor, *, count: int, batch: int, seed: int = 0) -> list[dict[str, Any]]:
    """`count` batches of `batch` random windows of SEQUENCE bytes, as model inputs."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - SEQUENCE, (count, batch), generator=generator)
    return [
        {"input_ids": torch.stack([data[s : s + SEQUENCE] for s in row.tolist()])} for row in starts
    ]


def _logits(outputs: Any) -> torch.Tensor:
    return outputs.logits if hasattr(outputs, "logits") else outputs[0]


def _loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(
        torch.as_tensor(logits)[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
    )


def next_token_loss(outputs: Any, batch: dict[str, Any]) -> torch.Tensor:
    """The training loss of `outputs` on `batch`: a `Calibration`'s `loss_fn`."""
    return _loss(_logits(outputs), batch["input_ids"])


def perplexity(model: Callable[..., Any], batches: list[dict[str, Any]]) -> float:
    """Perplexity per byte of `model` (a module or a compiled or loaded artifact)."""
    with torch.no_grad():
        losses = [float(_loss(_logits(model(**b)), b["input_ids"])) for b in batches]
    return math.exp(sum(losses) / len(losses))


def train_model(data: torch.Tensor, *, steps: int, batch: int = 32, layers: int = 4) -> torch.nn.Module:
    model = new_model(layers).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=steps)
    for inputs in windows(data, count=steps, batch=batch, seed=1):
        loss = _loss(model(**inputs).logits, inputs["input_ids"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark on this model takes: its size, training and timing."""
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)


def trained(args: argparse.Namespace) -> tuple[torch.nn.Module, float, torch.Tensor, torch.Tensor]:
    """The model trained as `args` say (`add_run_options`), its training seconds, and the
    corpus split (train, held out)."""
    train, held = corpus_split()
    started = time.perf_counter()
    model = train_model(train, steps=args.steps, layers=args.layers).eval()
    return model, time.perf_counter() - started, train, held
