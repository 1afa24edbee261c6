"""Confidence from a mirror: where the prediction of an image and that of its left-right mirror
(flipped back) disagree, the model is unsure (Depth-Anything-V2 issue #83's suggestion).

A scene and its mirror are equally plausible, so a model that has learnt depth predicts the
same depth for a pixel either way; where the two differ, the answer hinges on details that
flipping changes, and errors concentrate there (the figures are in README, "Confidence").

``confidence = exp(-r / CONFIDENCE_SCALE)`` with ``r = |a - b| / ((a + b) / 2)`` the relative
disagreement of the two depths: 1 where they agree, 0.37 at 10 % disagreement, toward 0 beyond.
Pixels where either depth is not a finite positive number get 0.

numpy only: the transformer image installs no torch.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

#: The relative disagreement at which confidence is 1/e.
CONFIDENCE_SCALE = 0.1


def mirror_input(chw: np.ndarray) -> np.ndarray:
    """A model input (3, H, W) flipped left-right (contiguous)."""
    return np.ascontiguousarray(chw[..., ::-1])


def confidence_from_mirror(depth: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    """Confidence in [0, 1] (float32, shape of ``depth``) from a depth map and the depth of the
    mirrored image **as predicted** (still mirrored: it is flipped back here)."""
    if depth.shape != mirrored.shape or depth.ndim != 2:
        raise ValueError(
            f"depth {depth.shape} and mirrored {mirrored.shape}: expected two (H, W) maps"
        )
    a = np.asarray(depth, dtype=np.float64)
    b = np.asarray(mirrored, dtype=np.float64)[:, ::-1]
    valid = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    mean = np.where(valid, (a + b) / 2, 1.0)
    r = np.where(valid, np.abs(a - b) / mean, np.inf)
    return np.exp(-r / CONFIDENCE_SCALE).astype(np.float32)


def encode_confidence_png(confidence: np.ndarray) -> bytes:
    """Confidence (H, W) in [0, 1] → 8-bit grayscale PNG, value = round(confidence x 255)."""
    values = np.clip(np.rint(np.nan_to_num(confidence, nan=0.0) * 255.0), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(values.astype(np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
