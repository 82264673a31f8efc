"""The report's pictures: drawn where pruning or sparsity changed layers, linked from report.md,
listed in the manifest; none (with the reason) where nothing changed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import sparsec
from sparsec.artifact import verify_artifact

pytest.importorskip("matplotlib")


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 4),
    ).eval()


@pytest.mark.parametrize(
    ("pipeline", "pictures"),
    [
        ("structured-50", {"widths.png"}),
        ("sparsify{pattern=unstructured,sparsity=0.5}", {"sparsity.png"}),
        ("none", set()),
    ],
)
def test_pictures_are_drawn_linked_and_listed(
    tmp_path: Path, pipeline: str, pictures: set[str]
) -> None:
    compiled = sparsec.compile(_mlp(), torch.randn(2, 16), pipeline=pipeline, backend="torch")
    saved = compiled.save(tmp_path / "model")
    manifest = verify_artifact(saved)
    drawn = {name for name in manifest["files"] if name.endswith(".png")}
    assert drawn == pictures
    report = (saved / "report.md").read_text()
    for name in pictures:
        assert (saved / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in report
    assert ("## Pictures" in report) == bool(pictures)
