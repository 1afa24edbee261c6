"""Training losses on metric depth (metres), masked to valid ground-truth pixels.

Every term is computed per image and then averaged over the images of the batch that have at
least one valid pixel, so an image with few valid pixels (lots of sky) weighs as much as any
other. A batch with no valid pixel at all gives a zero loss that is still connected to the
graph (``backward()`` works and yields zero gradients), so a rare empty crop never crashes or
skews a training step.
"""

from __future__ import annotations

import torch
from torch import nn

from depth_common.config import Params


def _per_image_mean(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked mean over all but the batch dim → (means (B,), has_valid (B,) bool)."""
    dims = tuple(range(1, values.dim()))
    count = mask.sum(dim=dims)
    total = torch.where(mask, values, torch.zeros_like(values)).sum(dim=dims)
    return total / count.clamp(min=1), count > 0


def _batch_mean(
    per_image: torch.Tensor, has_valid: torch.Tensor, like: torch.Tensor
) -> torch.Tensor:
    if not bool(has_valid.any()):
        return like.sum() * 0.0  # zero, but still attached to the graph
    return per_image[has_valid].mean()


def _log_ratio(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, min_depth: float):
    # float32 even under autocast: log of bfloat16/fp16 depths loses too much precision.
    pred = pred.float().clamp(min=min_depth)
    gt = torch.where(mask, gt.float(), torch.ones_like(gt, dtype=torch.float32))
    return torch.log(pred) - torch.log(gt)


def si_log_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor,
    lam: float = 0.85,
    min_depth: float = 1e-3,
) -> torch.Tensor:
    """Scale-invariant log loss (Eigen et al., 2014): ``mean(d²) − λ·mean(d)²``.

    ``d = log(pred) − log(gt)`` on the pixels where ``mask`` is true; ``pred`` (metres) is
    clamped to ``min_depth`` before the log. ``λ = 0`` is a plain log-MSE, ``λ = 1`` fully
    scale invariant. Shapes (B, 1, H, W) or (B, H, W); ``mask`` boolean of the same shape.
    """
    d = _log_ratio(pred, gt, mask, min_depth)
    mean_d, has_valid = _per_image_mean(d, mask)
    mean_d2, _ = _per_image_mean(d * d, mask)
    return _batch_mean(mean_d2 - lam * mean_d * mean_d, has_valid, pred)


def gradient_loss(
    pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, min_depth: float = 1e-3
) -> torch.Tensor:
    """Masked gradient-matching loss on the log-depth ratio (MegaDepth / MiDaS style).

    With ``R = log(pred) − log(gt)``, the mean of ``|∂x R| + |∂y R|`` over neighbour pairs
    whose both pixels are valid. On *log* depth rather than depth because an edge then costs
    the same at 5 m as at 50 m (in metres, far-away discontinuities would dominate), and a
    global scale error has zero gradient here, so this term only sharpens edges and leaves
    scale to the SI term.
    """
    r = _log_ratio(pred, gt, mask, min_depth)
    if r.dim() == 3:
        r, mask = r.unsqueeze(1), mask.unsqueeze(1)
    gx = (r[..., :, 1:] - r[..., :, :-1]).abs()
    mx = mask[..., :, 1:] & mask[..., :, :-1]
    gy = (r[..., 1:, :] - r[..., :-1, :]).abs()
    my = mask[..., 1:, :] & mask[..., :-1, :]
    dims = (1, 2, 3)
    total = torch.where(mx, gx, torch.zeros_like(gx)).sum(dims) + torch.where(
        my, gy, torch.zeros_like(gy)
    ).sum(dims)
    count = mx.sum(dims) + my.sum(dims)
    return _batch_mean(total / count.clamp(min=1), count > 0, pred)


def valid_mask(gt: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    """Pixels with finite ground truth in ``(min_depth, max_depth]`` metres (0 marks invalid)."""
    return torch.isfinite(gt) & (gt > min_depth) & (gt <= max_depth)


class DepthLoss(nn.Module):
    """``si_weight · si_log_loss + grad_weight · gradient_loss`` on valid pixels."""

    def __init__(
        self,
        si_weight: float = 1.0,
        grad_weight: float = 0.5,
        si_lambda: float = 0.85,
        min_depth: float = 1e-3,
        max_depth: float = 80.0,
    ) -> None:
        super().__init__()
        self.si_weight = si_weight
        self.grad_weight = grad_weight
        self.si_lambda = si_lambda
        self.min_depth = min_depth
        self.max_depth = max_depth

    @classmethod
    def from_params(cls, params: Params) -> DepthLoss:
        t = params.training
        return cls(
            t.si_weight, t.grad_weight, t.si_lambda, params.data.min_depth, params.data.max_depth
        )

    def terms(self, pred: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"loss", "si", "grad"}`` for prediction and ground truth in metres."""
        if pred.shape != gt.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != gt shape {tuple(gt.shape)}")
        mask = valid_mask(gt, self.min_depth, self.max_depth)
        si = si_log_loss(pred, gt, mask, self.si_lambda, self.min_depth)
        grad = gradient_loss(pred, gt, mask, self.min_depth)
        return {"loss": self.si_weight * si + self.grad_weight * grad, "si": si, "grad": grad}

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return self.terms(pred, gt)["loss"]
