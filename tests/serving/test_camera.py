"""Focal length resolution, exact depth scaling, back-projection and PLY: the pure functions of
:mod:`depth_common.serving.camera`, then the same rules through :class:`DepthTransformer`'s
preprocess/postprocess (Triton replaced by fixed depth maps; the real stack is in
test_transformer.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import math

import numpy as np
import pytest
from PIL import Image

from depth_common.serving.camera import (
    CITYSCAPES_FOCAL_PX,
    CanonicalCamera,
    FocalError,
    back_project,
    check_focal,
    decode_ply,
    encode_ply,
    exif_focal_35mm,
    focal_from_35mm,
    resolve_focal,
    scale_depth,
)
from depth_common.serving.kserve_import import (
    InferInput,
    InferRequest,
    InvalidInput,
    RequestedOutput,
)
from depth_common.serving.transformer import DepthTransformer, Prediction, PredictorGeometry

CAMERA = CanonicalCamera(100.0, 64)  # 100 px at the 64 px model input


def _jpeg(
    size: tuple[int, int] = (80, 60), f35: float | None = None, orientation: int = 1
) -> bytes:
    """A W x H JPEG whose EXIF says FocalLengthIn35mmFilm = ``f35`` and ``orientation``."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    if f35 is not None:
        exif.get_ifd(0x8769)[0xA405] = int(f35)
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


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
    assert exif_focal_35mm(_jpeg(f35=28)) == 28.0
    assert exif_focal_35mm(_jpeg()) is None
    assert exif_focal_35mm(_jpeg(f35=0)) is None  # EXIF: 0 means unknown
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


# -- through the transformer (Triton replaced by fixed depth maps) ----------------------------


def _transformer(canonical: float | None = 100.0) -> DepthTransformer:
    t = DepthTransformer()
    t.geometry = PredictorGeometry("image", "depth", 32, 64, True, canonical)
    return t


def _run(t: DepthTransformer, payload, depth_value: float = 10.0):
    batch = asyncio.run(t.preprocess(payload))
    depths = [np.full((32, 64), depth_value, np.float32) for _ in batch.tensors]
    return batch, asyncio.run(t.postprocess(Prediction(batch, depths)))


def _v1(*instances: dict) -> dict:
    return {"instances": list(instances)}


def _inst(data: bytes, **extra) -> dict:
    return {"image_bytes": {"b64": base64.b64encode(data).decode()}, **extra}


def test_v1_reports_focal_and_source_in_the_documented_order() -> None:
    exif_photo, plain = _jpeg((80, 60), f35=28), _jpeg((80, 60))
    _, body = _run(
        _transformer(),
        _v1(_inst(exif_photo, focal_px=250.0), _inst(exif_photo), _inst(plain)),
    )
    preds = body["predictions"]
    assert [p["focal_source"] for p in preds] == ["request", "exif", "default"]
    assert preds[0]["focal_px"] == 250.0
    assert preds[1]["focal_px"] == pytest.approx(28 * 100 / math.hypot(36, 24))
    assert preds[2]["focal_px"] == pytest.approx(100.0 * 80 / 64)
    # default focal → the model's depth as is; 250 px is 2x the 125 px default → 2x depth
    assert preds[2]["median_m"] == pytest.approx(10.0)
    assert preds[0]["median_m"] == pytest.approx(20.0)


def test_exif_focal_uses_the_displayed_size_after_orientation() -> None:
    turned = _jpeg((80, 60), f35=28, orientation=6)  # stored 80 x 60, shown 60 x 80
    batch, body = _run(_transformer(), _v1(_inst(turned)))
    assert batch.sizes == [(80, 60)]
    assert body["predictions"][0]["focal_px"] == pytest.approx(28 * 100 / math.hypot(36, 24))
    assert body["predictions"][0]["width"] == 60


@pytest.mark.parametrize("bad", [0.5, -1, 1e6, "wide", None, [300]])
def test_v1_bad_focal_is_a_400_naming_focal_px(bad) -> None:
    payload = _v1(_inst(_jpeg()), {**_inst(_jpeg()), "focal_px": bad})
    if bad is None:  # JSON null: no focal given, the next source applies
        _run(_transformer(), payload)
        return
    with pytest.raises(InvalidInput, match=r"instances\[1\]\.focal_px"):
        _run(_transformer(), payload)


def test_v1_images_only_response_is_unchanged_for_a_model_without_a_canonical_focal() -> None:
    _, body = _run(_transformer(canonical=None), _v1(_inst(_jpeg())))
    (pred,) = body["predictions"]
    assert pred["median_m"] == pytest.approx(10.0)  # no scaling at the default focal
    assert pred["focal_source"] == "default"
    assert pred["focal_px"] == pytest.approx(CITYSCAPES_FOCAL_PX * 80 / 2048)
    assert {"depth_png_b64", "height", "width", "min_m", "median_m", "max_m"} <= set(pred)
    assert "ply_b64" not in pred


def test_v1_ply_extra_has_one_coloured_point_per_pixel() -> None:
    data = _jpeg((80, 60))
    _, body = _run(_transformer(), _v1(_inst(data, focal_px=125.0, outputs=["ply"])))
    xyz, rgb = decode_ply(base64.b64decode(body["predictions"][0]["ply_b64"]))
    assert xyz.shape == (80 * 60, 3)
    np.testing.assert_allclose(xyz[:, 2], 10.0, rtol=1e-6)
    want_rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).reshape(-1, 3)
    np.testing.assert_array_equal(rgb, want_rgb)
    with pytest.raises(InvalidInput, match=r"instances\[0\]\.outputs"):
        _run(_transformer(), _v1(_inst(data, outputs=["mesh"])))


def _v2(images: list[bytes], focals: list[float] | None, outputs: list[str]) -> InferRequest:
    inputs = [InferInput("image_bytes", [len(images)], "BYTES")]
    inputs[0]._raw_data = b"".join(len(i).to_bytes(4, "little") + i for i in images)
    if focals is not None:
        inputs.append(InferInput("focal_px", [len(focals)], "FP32", data=focals))
    return InferRequest(
        "depth",
        inputs,
        request_outputs=[RequestedOutput(n, {"binary_data": False}) for n in outputs],
    )


def test_v2_points_and_focal_follow_the_requested_focal() -> None:
    images = [_jpeg((80, 60)), _jpeg((80, 60))]
    _, resp = _run(_transformer(), _v2(images, [125.0, 250.0], ["depth", "focal_px", "points"]))
    out = {o.name: o.as_numpy() for o in resp.outputs}
    np.testing.assert_array_equal(out["focal_px"], np.float32([125.0, 250.0]))
    np.testing.assert_array_equal(out["depth"][1], 2 * out["depth"][0])
    assert out["points"].shape == (2, 60, 80, 3) and out["points"].dtype == np.float32
    for k, f in enumerate([125.0, 250.0]):
        np.testing.assert_allclose(out["points"][k], back_project(out["depth"][k], f))


@pytest.mark.parametrize(
    ("focals", "match"),
    [
        ([0.0, 100.0], r"focal_px'\[0\]"),
        ([100.0, math.nan], r"focal_px'\[1\]"),
        ([100.0], r"shape"),
    ],
)
def test_v2_bad_focal_input_is_a_400_naming_focal_px(focals, match) -> None:
    with pytest.raises(InvalidInput, match=match):
        _run(_transformer(), _v2([_jpeg(), _jpeg()], focals, ["depth"]))


def test_v2_without_focal_or_new_outputs_answers_as_before() -> None:
    batch, resp = _run(_transformer(), _v2([_jpeg()], None, []))
    assert [o.name for o in resp.outputs] == ["depth", "depth_png"]
    assert batch.focal_sources == ["default"]
