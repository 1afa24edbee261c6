"""Confidence from the agreement of an image's depth and its mirror's (flipped back)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from depth_common.serving.confidence import (
    confidence_from_mirror,
    encode_confidence_png,
    mirror_input,
)


def test_a_mirror_consistent_prediction_is_fully_confident() -> None:
    rng = np.random.default_rng(0)
    depth = rng.uniform(1, 50, (6, 9)).astype(np.float32)
    # the mirror's prediction of a perfectly consistent model is the depth, mirrored
    np.testing.assert_array_equal(confidence_from_mirror(depth, depth[:, ::-1]), 1.0)
    # the same map NOT flipped disagrees almost everywhere
    assert confidence_from_mirror(depth, depth).mean() < 0.5


def test_confidence_follows_the_relative_disagreement() -> None:
    a = np.array([[10.0, 10.0, 10.0, 5.0]], np.float32)
    b_unflipped = np.array([[10.0, 11.0, 20.0, 0.0]], np.float32)  # what the mirror says
    conf = confidence_from_mirror(a, b_unflipped[:, ::-1])
    r = np.array([0.0, 1 / 10.5, 10 / 15, np.inf])
    np.testing.assert_allclose(conf[0], np.exp(-r / 0.1), rtol=1e-6)
    assert conf.dtype == np.float32 and conf[0, 3] == 0  # no depth in the mirror: not sure
    assert math.isclose(float(conf[0, 1]), math.exp(-1 / 1.05), rel_tol=1e-6)


def test_mirror_input_flips_columns_only() -> None:
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    m = mirror_input(x)
    assert m.flags.c_contiguous
    np.testing.assert_array_equal(m[:, :, 0], x[:, :, 3])


def test_confidence_png_is_8_bit_and_rounds() -> None:
    conf = np.array([[0.0, 0.5, 1.0, np.nan]], np.float32)
    img = Image.open(io.BytesIO(encode_confidence_png(conf)))
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), [[0, 128, 255, 0]])
    with pytest.raises(ValueError, match="two"):
        confidence_from_mirror(conf, conf[:, :2])
