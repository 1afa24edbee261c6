"""Standard monocular depth metrics (Eigen et al. / KITTI protocol), per image then averaged.

Valid pixels: finite ground truth with ``min_depth < gt < max_depth`` (metres; the community
rule, e.g. manydepth's ``evaluate_depth.py``); predictions are clipped to
``[min_depth, max_depth]``. Each metric is computed per image over its valid pixels and
averaged over the images that have at least one; with none at all every value is NaN.
``delta_k`` are fractions in [0, 1] of pixels with ``max(pred/gt, gt/pred) < 1.25**k``.

``median_scaling=True`` gives the figures self-supervised papers publish: per image, the
(clipped) prediction is multiplied by ``median(gt) / median(pred)`` over the valid pixels and
clipped again, so only the shape of the depth map is scored, not its scale.

:class:`DepthMetricsAccumulator` keeps per-image metric *sums* plus an image count, so
streaming over a DataLoader gives exactly the batch-at-once numbers and a DDP job can
``all_reduce`` the state vector.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

METRIC_KEYS: tuple[str, ...] = (
    "abs_rel",
    "sq_rel",
    "rmse",
    "rmse_log",
    "delta_1",
    "delta_2",
    "delta_3",
)


def _as_nhw(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    t = t.detach().to("cpu", torch.float64)
    if t.dim() == 2:
        return t.unsqueeze(0)
    if t.dim() == 3:
        return t
    if t.dim() == 4 and t.shape[1] == 1:
        return t[:, 0]
    raise ValueError(
        f"{name}: got shape {tuple(t.shape)}, expected (H, W), (N, H, W) or (N, 1, H, W)"
    )


def valid_mask(gt: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    """Pixels whose ground truth is finite and strictly inside (min_depth, max_depth)."""
    return torch.isfinite(gt) & (gt > min_depth) & (gt < max_depth)


def _median_scaled(p: torch.Tensor, g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each image of ``p`` times median(gt) / median(pred) over its valid pixels."""
    ratios = []
    for p_img, g_img, m in zip(p, g, mask, strict=True):
        if m.any():  # the numpy median (mean of the two middle values), as the community uses
            ratios.append(torch.quantile(g_img[m], 0.5) / torch.quantile(p_img[m], 0.5))
        else:
            ratios.append(torch.ones((), dtype=p.dtype))
    return p * torch.stack(ratios)[:, None, None]


def per_image_metrics(
    pred: Any,
    gt: Any,
    min_depth: float = 1e-3,
    max_depth: float = 80.0,
    median_scaling: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Metric values per image → (values (N, 7) float64 in METRIC_KEYS order, has_valid (N,))."""
    p, g = _as_nhw(pred, "pred"), _as_nhw(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred shape {tuple(p.shape)} != gt shape {tuple(g.shape)}")
    mask = valid_mask(g, min_depth, max_depth)
    n = mask.sum(dim=(1, 2)).to(torch.float64)
    has_valid = n > 0
    p = p.clamp(min_depth, max_depth)
    if median_scaling:
        p = _median_scaled(p, g, mask).clamp(min_depth, max_depth)
    g = torch.where(mask, g, torch.ones_like(g))  # any positive value: masked out below

    def mean(v: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, v, torch.zeros_like(v)).sum(dim=(1, 2)) / n.clamp(min=1)

    err = p - g
    ratio = torch.maximum(p / g, g / p)
    values = torch.stack(
        [
            mean(err.abs() / g),
            mean(err * err / g),
            mean(err * err).sqrt(),
            mean((p.log() - g.log()) ** 2).sqrt(),
            mean((ratio < 1.25).double()),
            mean((ratio < 1.25**2).double()),
            mean((ratio < 1.25**3).double()),
        ],
        dim=1,
    )
    return values, has_valid


def compute_depth_metrics(
    pred: Any,
    gt: Any,
    min_depth: float = 1e-3,
    max_depth: float = 80.0,
    median_scaling: bool = False,
) -> dict[str, float]:
    """``{abs_rel, sq_rel, rmse, rmse_log, delta_1, delta_2, delta_3}`` for depths in metres.

    ``pred``/``gt``: numpy arrays or torch tensors shaped (H, W), (N, H, W) or (N, 1, H, W).
    ``rmse`` is in metres, ``sq_rel`` in metres, the others unitless.
    """
    acc = DepthMetricsAccumulator(min_depth, max_depth, median_scaling)
    acc.update(pred, gt)
    return acc.compute()


class DepthMetricsAccumulator:
    """Streaming :func:`compute_depth_metrics`: per-image sums + the number of valid images."""

    def __init__(
        self, min_depth: float = 1e-3, max_depth: float = 80.0, median_scaling: bool = False
    ) -> None:
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.median_scaling = median_scaling
        self._sums = torch.zeros(len(METRIC_KEYS), dtype=torch.float64)
        self._count = 0.0

    def update(self, pred: Any, gt: Any) -> None:
        """Add a batch (metres); images without a valid pixel are skipped."""
        values, has_valid = per_image_metrics(
            pred, gt, self.min_depth, self.max_depth, self.median_scaling
        )
        self._sums += values[has_valid].sum(dim=0)
        self._count += float(has_valid.sum())

    @property
    def count(self) -> int:
        """Images with at least one valid pixel seen so far."""
        return int(self._count)

    def compute(self) -> dict[str, float]:
        if self._count == 0:
            return {k: math.nan for k in METRIC_KEYS}
        return {k: float(v) for k, v in zip(METRIC_KEYS, self._sums / self._count, strict=True)}

    def state(self) -> torch.Tensor:
        """float64 vector ``[sum per metric (7) ..., image count]``: sum it across processes."""
        return torch.cat([self._sums, torch.tensor([self._count], dtype=torch.float64)])

    @classmethod
    def from_state(
        cls,
        state: torch.Tensor,
        min_depth: float = 1e-3,
        max_depth: float = 80.0,
        median_scaling: bool = False,
    ) -> DepthMetricsAccumulator:
        state = torch.as_tensor(state, dtype=torch.float64).detach().cpu()
        if state.shape != (len(METRIC_KEYS) + 1,):
            raise ValueError(
                f"accumulator state: got shape {tuple(state.shape)}, "
                f"expected ({len(METRIC_KEYS) + 1},)"
            )
        acc = cls(min_depth, max_depth, median_scaling)
        acc._sums = state[:-1].clone()
        acc._count = float(state[-1])
        return acc

    def merge(self, other: DepthMetricsAccumulator) -> DepthMetricsAccumulator:
        """Add ``other``'s images into this accumulator (returns self)."""
        self._sums += other._sums
        self._count += other._count
        return self
