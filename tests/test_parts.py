"""Models that cannot be traced whole are compiled by parts (a detector-shaped model).

Rules checked: the backbone and head compile and shrink while the data-dependent
post-processing stays as it was; the composite runs, keeps its output structure and
reproduces the compiled parts; widths that cross part boundaries are unchanged; the report
lists each part; a named non-torch backend keeps the TraceError.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsec
from sparsec.errors import TraceError
from sparsec.parts import CompiledParts


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 24, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(24, 32, 3, padding=1)
        self.scores = nn.Conv2d(32, 1, 1)
        self.boxes = nn.Conv2d(32, 4, 1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.conv(features))
        return self.scores(h).flatten(1), self.boxes(h).flatten(2).transpose(1, 2)


class Detector(nn.Module):
    """Backbone → head → post-processing whose output size depends on the scores."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.head = Backbone(), Head()

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        scores, boxes = self.head(self.backbone(images))
        results = []
        for image_scores, image_boxes in zip(scores.sigmoid(), boxes, strict=True):
            keep = image_scores > 0.5
            if int(keep.sum()) == 0:  # data-dependent Python control flow: no whole trace
                keep = image_scores >= image_scores.max()
            results.append({"boxes": image_boxes[keep], "scores": image_scores[keep]})
        return results


def _detector() -> tuple[Detector, torch.Tensor]:
    torch.manual_seed(0)
    return Detector().eval(), torch.randn(2, 3, 16, 16)


def test_detector_compiles_by_parts() -> None:
    model, images = _detector()
    compiled = sparsec.compile(model, (images,), pipeline="structured-50")
    assert isinstance(compiled, CompiledParts)
    assert set(compiled.parts) == {"backbone", "head"}
    rows = {r.name: r for r in compiled.report.rows}
    assert all(rows[n].params_after < rows[n].params_before for n in ("backbone", "head"))
    module = compiled.module
    assert (
        module.backbone.body[6].out_channels == 24 and module.head.conv.in_channels == 24
    )  # boundary kept
    assert module.backbone.body[0].out_channels < 16
    out = compiled(images)
    assert isinstance(out, list) and len(out) == 2 and set(out[0]) == {"boxes", "scores"}
    with torch.no_grad():
        scores, boxes = compiled.parts["head"](compiled.parts["backbone"](images))
        expected = module.head(module.backbone(images))
    torch.testing.assert_close(scores, expected[0])
    markdown = compiled.report.to_markdown()
    assert "compiled by parts" in markdown and "| backbone |" in markdown
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in _detector()[0].parameters()
    )


def test_parts_save_as_artifacts(tmp_path) -> None:
    model, images = _detector()
    compiled = sparsec.compile(model, (images,), pipeline="structured-50")
    compiled.save(tmp_path / "det")
    loaded = sparsec.load(tmp_path / "det" / "backbone")
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), compiled.module.backbone(images))


def test_a_named_onnx_backend_keeps_the_trace_error() -> None:
    model, images = _detector()
    with pytest.raises(TraceError):
        sparsec.compile(model, (images,), pipeline="structured-50", backend="onnxruntime")
