"""DepthClient.predict_image: depth, the focal, points and confidence from the real
transformer in front of the real local Triton, on a real photograph (binary v2 both ways)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import W

from depth_common.deploy.smoke import image_reference
from depth_common.errors import DepthServingError
from depth_common.serving.camera import CanonicalCamera, back_project
from depth_common.serving.client import DepthClient
from depth_common.serving.codec import load_rgb

pytestmark = pytest.mark.slow
skimage_data = pytest.importorskip("skimage.data")
PHOTO = Path(skimage_data.__file__).parent / "rocket.jpg"


@pytest.fixture(scope="module")
def client(stack):
    _, transformer = stack
    with DepthClient(transformer.url, mode="image") as depth_client:
        yield depth_client


def test_without_a_focal_the_depth_is_for_the_models_field_of_view(client, onnx_path) -> None:
    photo = PHOTO.read_bytes()
    h, w = load_rgb(photo).shape[:2]
    answer = client.predict_image(photo)
    assert answer.focal_px == pytest.approx(CanonicalCamera.cityscapes(W).default_focal(w))
    np.testing.assert_allclose(answer.depth, image_reference(onnx_path, photo), atol=1e-5)
    np.testing.assert_array_equal(answer.depth, client.predict(photo)[0])
    assert answer.depth.shape == (h, w) and answer.points is None and answer.confidence is None


def test_a_given_focal_scales_depth_exactly_and_points_and_confidence_come_back(client) -> None:
    photo = PHOTO.read_bytes()
    h, w = load_rgb(photo).shape[:2]
    near = client.predict_image(photo, focal_px=400.0, points=True, confidence=True)
    far = client.predict_image(photo, focal_px=800.0, points=True)
    assert (near.focal_px, far.focal_px) == (400.0, 800.0)
    np.testing.assert_array_equal(far.depth, 2 * near.depth)
    assert near.points is not None and near.points.shape == (h, w, 3)
    np.testing.assert_allclose(near.points, back_project(near.depth, 400.0), rtol=1e-6)
    assert near.confidence is not None and near.confidence.shape == (h, w)
    assert near.confidence.min() >= 0 and near.confidence.max() <= 1
    assert far.confidence is None


def test_a_focal_out_of_range_is_the_servers_400_naming_it(client) -> None:
    with pytest.raises(DepthServingError, match="focal_px") as refused:
        client.predict_image(PHOTO.read_bytes(), focal_px=0.5)
    assert refused.value.status == "400"


def test_one_focal_per_image_and_only_in_image_mode(client) -> None:
    with pytest.raises(ValueError, match="one focal per image"):
        client.infer_images([b"a", b"b"], ("depth",), focal_px=[500.0])
    with pytest.raises(ValueError, match="mode='image'"):
        DepthClient(client.url).predict_image(PHOTO.read_bytes())
