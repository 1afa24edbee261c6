"""Masked SI log loss and gradient loss against direct formulas."""

from __future__ import annotations

import math

import pytest
import torch

from depth_common.training.losses import DepthLoss, gradient_loss, si_log_loss, valid_mask


def batch(seed: int = 0, n: int = 3, h: int = 6, w: int = 8):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(n, 1, h, w, generator=g) * 40 + 1
    gt[torch.rand(n, 1, h, w, generator=g) < 0.3] = 0.0
    pred = gt.clamp(min=1) * (torch.rand(n, 1, h, w, generator=g) + 0.5)
    return pred, gt


def test_si_log_loss_matches_formula_per_image() -> None:
    pred, gt = batch()
    mask = gt > 0
    lam = 0.85
    expected = []
    for i in range(len(gt)):
        d = (pred[i][mask[i]].log() - gt[i][mask[i]].log()).double()
        expected.append((d**2).mean() - lam * d.mean() ** 2)
    got = si_log_loss(pred, gt, mask, lam)
    assert got.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)


def test_si_log_loss_scale_invariance() -> None:
    pred, gt = batch(1)
    mask = gt > 0
    # with lambda = 1 a global scale factor on the prediction costs nothing
    a = si_log_loss(pred, gt, mask, lam=1.0)
    b = si_log_loss(pred * 3.7, gt, mask, lam=1.0)
    assert a.item() == pytest.approx(b.item(), abs=1e-5)
    assert si_log_loss(gt.clamp(min=1), gt, mask, 0.5).item() == pytest.approx(0, abs=1e-6)


def test_si_log_loss_clamps_prediction() -> None:
    gt = torch.full((1, 1, 2, 2), 2.0)
    pred = torch.zeros_like(gt, requires_grad=True)  # log(0) would be -inf
    loss = si_log_loss(pred, gt, gt > 0, lam=0.0, min_depth=1e-3)
    assert loss.item() == pytest.approx(math.log(2.0 / 1e-3) ** 2, rel=1e-5)


def test_gradient_loss_on_log_ratio() -> None:
    gt = torch.tensor([[[[1.0, 2.0, 4.0], [1.0, 2.0, 0.0]]]])
    pred = gt.clamp(min=1) * 2.0  # a global scale: zero log-ratio gradient
    mask = gt > 0
    assert gradient_loss(pred, gt, mask).item() == pytest.approx(0.0, abs=1e-6)
    pred2 = pred.clone()
    pred2[0, 0, 0, 1] *= math.e  # R jumps by +1 at one pixel
    # valid pairs: x: (0,0)-(0,1), (0,1)-(0,2), (1,0)-(1,1) ; y: col0, col1 (col2 has a 0)
    # |dR| = 1 for (0,0)-(0,1), (0,1)-(0,2) and y col1 → 3 / 5 pairs
    assert gradient_loss(pred2, gt, mask).item() == pytest.approx(3 / 5, rel=1e-5)


def test_empty_batch_is_zero_with_gradient() -> None:
    gt = torch.zeros(2, 1, 4, 4)
    pred = torch.rand(2, 1, 4, 4, requires_grad=True)
    loss = DepthLoss()(pred, gt)
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and torch.count_nonzero(pred.grad) == 0


def test_invalid_images_do_not_dilute_the_mean() -> None:
    pred, gt = batch(2, n=2)
    gt_empty = torch.cat([gt, torch.zeros_like(gt[:1])])
    pred_empty = torch.cat([pred, pred[:1]])
    crit = DepthLoss(1.0, 0.5, 0.85)
    assert crit(pred_empty, gt_empty).item() == pytest.approx(crit(pred, gt).item(), rel=1e-6)


def test_depth_loss_weights_and_mask() -> None:
    pred, gt = batch(3)
    gt[0, 0, 0, 0] = 120.0  # above max_depth: invalid
    crit = DepthLoss(si_weight=2.0, grad_weight=0.25, si_lambda=0.5, max_depth=80.0)
    t = crit.terms(pred, gt)
    mask = valid_mask(gt, 1e-3, 80.0)
    assert not mask[0, 0, 0, 0]
    assert t["si"].item() == pytest.approx(si_log_loss(pred, gt, mask, 0.5).item())
    assert t["grad"].item() == pytest.approx(gradient_loss(pred, gt, mask).item())
    assert t["loss"].item() == pytest.approx(2.0 * t["si"].item() + 0.25 * t["grad"].item())
    with pytest.raises(ValueError, match="shape"):
        crit(pred, gt[:, :, :-1])
