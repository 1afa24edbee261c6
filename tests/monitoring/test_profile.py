"""The reference profile: size-independent image statistics, the file, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from depth_common.cli.parser import main
from depth_common.data.scene import render_scene
from depth_common.data.synthetic import cityscapes_camera
from depth_common.errors import DataError
from depth_common.monitoring.drift import KSDriftDetector
from depth_common.monitoring.profile import (
    FEATURES,
    Profile,
    image_features,
    load_profile,
    profile_from_images,
    save_profile,
)


def street(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    rgb, _ = render_scene(np.random.default_rng(seed), size, cityscapes_camera(size), hood=True)
    return rgb


def col(name: str) -> int:
    return FEATURES.index(name)


def test_features_match_plain_numpy_at_the_working_size() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (128, 256, 3), dtype=np.uint8)
    row = image_features(rgb)
    x = rgb.astype(np.float64) / 255
    luma = x @ [0.299, 0.587, 0.114]
    np.testing.assert_allclose(row[:3], x.mean(axis=(0, 1)), atol=1e-5)
    np.testing.assert_allclose(row[3:6], x.std(axis=(0, 1)), atol=1e-5)
    assert row[col("contrast")] == pytest.approx(luma.std(), abs=1e-5)
    assert row[col("luma_p50")] == pytest.approx(np.median(luma), abs=1e-4)
    assert row[col("aspect_ratio")] == pytest.approx(np.log(2.0))
    assert row.shape == (len(FEATURES),)


def test_features_do_not_depend_on_image_size() -> None:
    big = street((256, 512))
    small = np.asarray(Image.fromarray(big).resize((256, 128), Image.Resampling.LANCZOS))
    a, b = image_features(big), image_features(small)
    # Sharpness is the feature a size change would move most (Laplacian energy per pixel grows
    # with resolution): 0.15 in log10 is a fifth of what a radius-3 blur does to it.
    assert abs(a[col("sharpness")] - b[col("sharpness")]) < 0.15
    np.testing.assert_allclose(a[:10], b[:10], atol=0.01)


def test_darkening_and_blurring_move_the_features_they_should() -> None:
    rgb = street((128, 256), seed=3)
    base = image_features(rgb)
    dark = image_features((rgb * 0.35).astype(np.uint8))
    blurred = image_features(np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(3))))
    assert dark[col("luma_p50")] == pytest.approx(0.35 * base[col("luma_p50")], rel=0.05)
    assert blurred[col("sharpness")] < base[col("sharpness")] - 0.5
    assert blurred[col("fine_to_coarse")] < base[col("fine_to_coarse")]


def test_profile_roundtrip(tmp_path) -> None:
    profile = profile_from_images([street((64, 128), seed=s) for s in range(4)], source="x")
    path = save_profile(profile, tmp_path / "p.json")
    back = load_profile(path)
    assert back.images == 4 and back.source == "x"
    # Exactly: the same images served later must give the very rows the file holds.
    assert np.array_equal(back.rows, profile.rows)
    assert KSDriftDetector(back).test(np.tile(profile.rows, (2, 1))).score == 1.0
    assert back.luminance_histogram.sum() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"format": "other"}, "'format'"),
        ({"format": "depth-image-profile/1", "features": ["a"], "rows": []}, "'features'"),
        ({"format": "depth-image-profile/1", "features": list(FEATURES)}, "missing key 'rows'"),
        (
            {"format": "depth-image-profile/1", "features": list(FEATURES), "rows": [[1.0, 2.0]]},
            "'rows' has shape",
        ),
    ],
)
def test_a_bad_profile_file_is_named(tmp_path, doc, message) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=message) as err:
        load_profile(path)
    assert str(path) in str(err.value)


def test_profile_of_nothing_is_refused() -> None:
    with pytest.raises(DataError, match="no images"):
        profile_from_images([])
    with pytest.raises(DataError, match="at least 8x8"):
        image_features(np.zeros((4, 4, 3), np.uint8))


def test_cli_profile_searches_recursively(tmp_path, capsys) -> None:
    images = tmp_path / "imgs"
    for k, rel in enumerate(["a/x.png", "a/b/y.jpg", "z.JPEG", ".hidden/w.png"]):
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(street((64, 128), seed=k)).save(images / rel)
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "profile.json"
    assert main(["profile", "--images", str(images), "--out", str(out)]) == 0
    assert "profile of 3 images" in capsys.readouterr().out
    profile: Profile = load_profile(out)
    assert profile.images == 3
    assert main(["profile", "--images", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "not a directory" in capsys.readouterr().err
