"""Focal length resolution, exact depth scaling, back-projection and PLY: the pure functions of
:mod:`depth_common.serving.camera`, then the same rules through :class:`DepthTransformer`'s
preprocess/postprocess (camera_transformer_cases.py, run in a process of its own; the real
stack is in test_transformer.py)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import jpeg_with_exif

from depth_common.errors import FocalError
from depth_common.serving.camera import (
    CITYSCAPES_FOCAL_PX,
    CanonicalCamera,
    back_project,
    check_focal,
    decode_ply,
    encode_ply,
    exif_focal_35mm,
    focal_from_35mm,
    resolve_focal,
    scale_depth,
)

ROOT = Path(__file__).resolve().parents[2]
CAMERA = CanonicalCamera(100.0, 64)  # 100 px at the 64 px model input


# -- pure functions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [0.5, 1.0, 0.0, -3.0, 100_000.5, math.inf, math.nan, "500", True, None]
)
def test_a_focal_outside_1_to_100000_px_is_refused_naming_focal_px(bad) -> None:
    with pytest.raises(FocalError, match="focal_px"):
        check_focal(bad)


def test_focal_bounds_are_open_below_and_closed_above() -> None:
    assert check_focal(100_000) == 100_000.0
    assert check_focal(1.0001) == pytest.approx(1.0001)


def test_35mm_equivalent_converts_through_the_diagonal() -> None:
    # A 36 x 24 mm frame at 36 px x 24 px: one pixel per millimetre, so f_px == f35.
    assert focal_from_35mm(50.0, 36, 24) == pytest.approx(50.0)
    # 4000 x 3000 phone photo, 26 mm equivalent: 26 * 5000 / 43.2666 = 3004.6 px.
    assert focal_from_35mm(26.0, 4000, 3000) == pytest.approx(26 * 5000 / math.hypot(36, 24))


def test_exif_focal_is_read_from_the_exif_ifd_and_absent_or_zero_is_none() -> None:
    assert exif_focal_35mm(jpeg_with_exif(f35=28)) == 28.0
    assert exif_focal_35mm(jpeg_with_exif()) is None
    assert exif_focal_35mm(jpeg_with_exif(f35=0)) is None  # EXIF: 0 means unknown
    assert exif_focal_35mm(b"not an image") is None


def test_resolve_focal_order_request_then_exif_then_default() -> None:
    size = (300, 400)  # H, W
    assert resolve_focal(500.0, 28.0, size, CAMERA) == (500.0, "request")
    f, source = resolve_focal(None, 28.0, size, CAMERA)
    assert source == "exif" and f == pytest.approx(28 * 500 / math.hypot(36, 24))
    assert resolve_focal(None, None, size, CAMERA) == (pytest.approx(100.0 * 400 / 64), "default")
    with pytest.raises(FocalError, match="focal_px"):
        resolve_focal(math.nan, 28.0, size, CAMERA)


def test_default_focal_keeps_the_canonical_field_of_view_and_scales_depth_by_one() -> None:
    for width in (64, 333, 4032):
        f = CAMERA.default_focal(width)
        assert 2 * math.atan(width / 2 / f) == pytest.approx(2 * math.atan(32 / 100.0))
        assert CAMERA.depth_scale(f, width) == pytest.approx(1.0)
    cityscapes = CanonicalCamera.cityscapes(2048)
    assert cityscapes.default_focal(2048) == CITYSCAPES_FOCAL_PX


def test_doubling_the_focal_doubles_depth_exactly() -> None:
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.5, 80, (37, 53)).astype(np.float32)
    f = 417.3
    one = scale_depth(depth, CAMERA.depth_scale(f, 53))
    two = scale_depth(depth, CAMERA.depth_scale(2 * f, 53))
    assert one.dtype == np.float32
    np.testing.assert_array_equal(two, 2 * one)  # bit-exact, not approximately


def test_back_projection_matches_the_pinhole_formula() -> None:
    h, w, f = 5, 7, 3.5
    depth = np.arange(1, h * w + 1, dtype=np.float32).reshape(h, w)
    pts = back_project(depth, f)
    assert pts.shape == (h, w, 3) and pts.dtype == np.float32
    for v, u in [(0, 0), (4, 6), (2, 3), (1, 5)]:
        z = float(depth[v, u])
        want = [(u - (w - 1) / 2) * z / f, (v - (h - 1) / 2) * z / f, z]
        np.testing.assert_allclose(pts[v, u], want, rtol=1e-6)
    assert pts[2, 3, 0] == 0 and pts[2, 3, 1] == 0  # the centre pixel is on the optical axis


def test_ply_round_trip_keeps_valid_points_and_their_colours() -> None:
    depth = np.array([[1.0, 0.0], [2.0, np.nan]], np.float32)
    colors = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [9, 9, 9]]], np.uint8)
    data = encode_ply(back_project(depth, 10.0), colors)
    assert data.startswith(b"ply\nformat binary_little_endian 1.0\nelement vertex 2\n")
    xyz, rgb = decode_ply(data)
    np.testing.assert_allclose(xyz[:, 2], [1.0, 2.0])
    np.testing.assert_array_equal(rgb, [[255, 0, 0], [0, 0, 255]])


def test_the_transformer_applies_the_same_rules() -> None:
    """camera_transformer_cases.py in a process without tritonclient (see its docstring)."""
    cases = Path(__file__).with_name("camera_transformer_cases.py")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout
