"""The evaluation protocol: where predictions are scored, on which pixels, with which scaling.

``evaluation.resolution: full`` (default) scores as the community Cityscapes protocol
(nianticlabs/manydepth ``evaluate_depth.py``) does: the prediction is upsampled (bilinear,
half-pixel centres like ``cv2.resize``) to the full-resolution ground truth that
preprocessing kept (after the hood crop). ``model`` scores at ``data.img_size`` against the
nearest-resized ground truth (what validation during training does). ``evaluation.centre_crop``
adds manydepth's centre crop: rows from a third of the (hood-cropped) frame's height down,
columns 9.375 %–90.625 % (``[256:, 192:1856]`` of a 768x2048 frame). Metric figures and, with
``evaluation.median_scaling``, median-scaled ones are accumulated side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from depth_common.config import EvaluationConfig
from depth_common.evaluation.metrics import DepthMetricsAccumulator

MEDIAN_SCALED = "median_scaled"
#: manydepth's centre crop of the 768x2048 hood-cropped Cityscapes frame: [256:, 192:1856].
_CROP_TOP, _CROP_LEFT, _CROP_RIGHT = 256 / 768, 192 / 2048, 1856 / 2048


def centre_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the manydepth centre crop of a ``height`` x ``width`` frame."""
    return (
        int(round(height * _CROP_TOP)),
        height,
        int(round(width * _CROP_LEFT)),
        int(round(width * _CROP_RIGHT)),
    )


def upsample(pred: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 1, h, w) → (N, 1, H, W), bilinear with half-pixel centres (``align_corners=False``)."""
    if tuple(pred.shape[-2:]) == tuple(size):
        return pred
    return F.interpolate(pred.double(), size=size, mode="bilinear", align_corners=False)


@dataclass
class Scorer:
    """Metric (and median-scaled) accumulators fed one batch or one image at a time."""

    cfg: EvaluationConfig
    min_depth: float
    max_depth: float
    metric: DepthMetricsAccumulator = field(init=False)
    scaled: DepthMetricsAccumulator | None = field(init=False)

    def __post_init__(self) -> None:
        self.metric = DepthMetricsAccumulator(self.min_depth, self.max_depth)
        self.scaled = (
            DepthMetricsAccumulator(self.min_depth, self.max_depth, median_scaling=True)
            if self.cfg.median_scaling
            else None
        )

    def _crop(self, pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.cfg.centre_crop:
            return pred, gt
        top, bottom, left, right = centre_crop_box(*gt.shape[-2:])
        return pred[..., top:bottom, left:right], gt[..., top:bottom, left:right]

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """``pred`` (N, 1, h, w) metres, upsampled to ``gt`` (N, 1, H, W) when sizes differ."""
        gt = torch.as_tensor(gt)
        pred, gt = self._crop(upsample(pred, tuple(gt.shape[-2:])), gt)
        self.metric.update(pred, gt)
        if self.scaled is not None:
            self.scaled.update(pred, gt)

    def update_full(self, pred: torch.Tensor, gts: Sequence[np.ndarray]) -> None:
        """One model-resolution prediction per full-resolution ground truth (sizes may vary)."""
        for p, g in zip(pred, gts, strict=True):
            self.update(p[None], torch.from_numpy(np.asarray(g))[None, None])

    @property
    def count(self) -> int:
        return self.metric.count

    def compute(self, split: str) -> dict[str, float]:
        """``{split}_{metric}`` then ``{split}_median_scaled_{metric}``."""
        out = {f"{split}_{k}": v for k, v in self.metric.compute().items()}
        if self.scaled is not None:
            out |= {f"{split}_{MEDIAN_SCALED}_{k}": v for k, v in self.scaled.compute().items()}
        return out


def describe(
    cfg: EvaluationConfig,
    min_depth: float,
    max_depth: float,
    crop_bottom: float,
    gt_size: tuple[int, int] | None,
) -> str:
    """The protocol in one line, as the report and the CLI state it."""
    where = (
        f"full resolution (prediction upsampled bilinear to the {gt_size[0]}x{gt_size[1]} "
        "ground truth)"
        if cfg.resolution == "full" and gt_size
        else "model resolution (ground truth resized nearest to data.img_size)"
    )
    parts = [
        where,
        f"bottom {crop_bottom:.0%} (ego car) cropped" if crop_bottom else "no hood crop",
        "manydepth centre crop (rows 1/3..1, columns 9.375%..90.625%)"
        if cfg.centre_crop
        else "no centre crop",
        f"valid {min_depth:g} < gt < {max_depth:g} m on unclamped depth",
        "per image, then mean over images",
        f"metric: prediction clipped to [{min_depth:g}, {max_depth:g}] m, no scaling",
    ]
    if cfg.median_scaling:
        parts.append(f"{MEDIAN_SCALED}_*: prediction x median(gt)/median(pred) per image")
    return "; ".join(parts)
