"""Focal, points and the PLY extra through :class:`DepthTransformer`'s preprocess/postprocess,
with Triton replaced by fixed depth maps.

Run by ``test_camera.py`` in a process of its own: kserve and ``tritonclient.grpc`` register
the same protobuf messages, so kserve cannot be imported in the test session (the real
serving stack is in test_transformer.py).
"""

from __future__ import annotations

import asyncio
import base64
import io
import math

import numpy as np
import pytest
from helpers import jpeg_with_exif
from PIL import Image

from depth_common.serving.camera import (
    CITYSCAPES_FOCAL_PX,
    CanonicalCamera,
    back_project,
    decode_ply,
)
from depth_common.serving.kserve_import import (
    InferInput,
    InferRequest,
    InvalidInput,
    RequestedOutput,
)
from depth_common.serving.predictor import PredictorGeometry
from depth_common.serving.transformer import DepthTransformer, Prediction

CAMERA = CanonicalCamera(100.0, 64)  # 100 px at the 64 px model input


def _transformer(canonical: float | None = CAMERA.focal_px) -> DepthTransformer:
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
    exif_photo, plain = jpeg_with_exif((80, 60), f35=28), jpeg_with_exif((80, 60))
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
    turned = jpeg_with_exif((80, 60), f35=28, orientation=6)  # stored 80 x 60, shown 60 x 80
    batch, body = _run(_transformer(), _v1(_inst(turned)))
    assert batch.sizes == [(80, 60)]
    assert body["predictions"][0]["focal_px"] == pytest.approx(28 * 100 / math.hypot(36, 24))
    assert body["predictions"][0]["width"] == 60


@pytest.mark.parametrize("bad", [0.5, -1, 1e6, "wide", None, [300]])
def test_v1_bad_focal_is_a_400_naming_focal_px(bad) -> None:
    payload = _v1(_inst(jpeg_with_exif()), {**_inst(jpeg_with_exif()), "focal_px": bad})
    if bad is None:  # JSON null: no focal given, the next source applies
        _run(_transformer(), payload)
        return
    with pytest.raises(InvalidInput, match=r"instances\[1\]\.focal_px"):
        _run(_transformer(), payload)


def test_v1_images_only_response_is_unchanged_for_a_model_without_a_canonical_focal() -> None:
    _, body = _run(_transformer(canonical=None), _v1(_inst(jpeg_with_exif())))
    (pred,) = body["predictions"]
    assert pred["median_m"] == pytest.approx(10.0)  # no scaling at the default focal
    assert pred["focal_source"] == "default"
    assert pred["focal_px"] == pytest.approx(CITYSCAPES_FOCAL_PX * 80 / 2048)
    assert {"depth_png_b64", "height", "width", "min_m", "median_m", "max_m"} <= set(pred)
    assert "ply_b64" not in pred


def test_v1_ply_extra_has_one_coloured_point_per_pixel() -> None:
    data = jpeg_with_exif((80, 60))
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
    images = [jpeg_with_exif((80, 60)), jpeg_with_exif((80, 60))]
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
        _run(_transformer(), _v2([jpeg_with_exif(), jpeg_with_exif()], focals, ["depth"]))


def test_v2_without_focal_or_new_outputs_answers_as_before() -> None:
    batch, resp = _run(_transformer(), _v2([jpeg_with_exif()], None, []))
    assert [o.name for o in resp.outputs] == ["depth", "depth_png"]
    assert batch.focal_sources == ["default"]


def _through_predict(t: DepthTransformer, payload, mirrored_offset: float = 1.0):
    """preprocess → predict → postprocess with Triton replaced: the image's depth is 10 m plus
    its column index; the mirror's prediction is the same scene flipped, plus an offset."""
    seen: list[tuple[int, ...]] = []

    async def fake_raw(request, metadata):
        (inp,) = request.inputs
        x = inp.as_numpy()
        seen.append(tuple(x.shape))
        base = 10.0 + np.arange(64, dtype=np.float32)[None, :].repeat(32, 0)
        if x.shape[0] == 2:  # image + mirror, one request
            np.testing.assert_array_equal(x[1], x[0][..., ::-1])
            return np.stack([base, base[:, ::-1] + mirrored_offset])[:, None]
        return base[None, None]

    t._infer_raw = fake_raw

    async def run():
        batch = await t.preprocess(payload)
        return batch, await t.postprocess(await t.predict(batch))

    batch, response = asyncio.run(run())
    return seen, batch, response


def test_v2_confidence_comes_from_one_request_with_the_mirror() -> None:
    from depth_common.serving.confidence import confidence_from_mirror

    t = _transformer()
    request = _v2([jpeg_with_exif((64, 32))], None, ["depth", "confidence"])
    seen, _, resp = _through_predict(t, request)
    assert seen == [(2, 3, 32, 64)]  # one call, batch of two
    out = {o.name: o.as_numpy() for o in resp.outputs}
    base = 10.0 + np.arange(64, dtype=np.float32)[None, :].repeat(32, 0)
    np.testing.assert_allclose(out["depth"][0], base)  # the image's own depth, not an average
    want = confidence_from_mirror(base, base[:, ::-1] + 1.0)
    np.testing.assert_allclose(out["confidence"][0], want, rtol=1e-6)
    assert out["confidence"].shape == (1, 32, 64) and 0 < out["confidence"].min() < 1


def test_without_confidence_each_image_goes_alone_and_v1_can_ask_per_instance() -> None:
    t = _transformer()
    seen, _, _ = _through_predict(t, _v2([jpeg_with_exif((64, 32))] * 2, None, ["depth"]))
    assert seen == [(1, 3, 32, 64)] * 2
    payload = _v1(_inst(jpeg_with_exif((64, 32)), outputs=["confidence_png"]),
                  _inst(jpeg_with_exif((64, 32))))  # fmt: skip
    seen, _, body = _through_predict(t, payload, mirrored_offset=0.0)
    assert sorted(seen) == [(1, 3, 32, 64), (2, 3, 32, 64)]
    first, second = body["predictions"]
    png = Image.open(io.BytesIO(base64.b64decode(first["confidence_png_b64"])))
    assert png.mode == "L" and png.size == (64, 32)
    np.testing.assert_array_equal(np.asarray(png), 255)  # mirror-consistent: fully confident
    assert "confidence_png_b64" not in second


def test_confidence_needs_a_batched_predictor() -> None:
    t = DepthTransformer()
    t.geometry = PredictorGeometry("image", "depth", 32, 64, False, 100.0)
    with pytest.raises(InvalidInput, match="mirror in one batch"):
        asyncio.run(t.preprocess(_v2([jpeg_with_exif()], None, ["confidence"])))
