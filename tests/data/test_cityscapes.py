"""Cityscapes layer: disparity → depth against hand-computed values, camera JSONs, discovery of
both layouts (per-package extraction folders, hidden files, camera policies), and a clear
DataError for each bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from depth_common.config import params_from_dict
from depth_common.data import discover, disparity_to_depth, prepare_image, read_camera
from depth_common.data.cityscapes import CameraIntrinsics, frame_id
from depth_common.data.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_depth_nearest
from depth_common.errors import ConfigError, DataError

# --- disparity → depth ------------------------------------------------------------------------


def test_disparity_to_depth_hand_computed_values():
    # baseline * fx = 0.25 m * 800 px = 200 m*px
    p = np.array([[0, 1, 257, 513], [1025, 65535, 129, 2]], dtype=np.uint16)
    depth = disparity_to_depth(p, 0.25, 800.0, max_depth=1e9)
    expected = np.array(
        [
            [0.0, 0.0, 200.0, 100.0],  # p=0 invalid; p=1 -> d=0 invalid; d=1 px; d=2 px
            [50.0, 200 * 256 / 65534, 400.0, 200 * 256],  # d=4; d=255.99..; d=0.5; d=1/256
        ]
    )
    assert depth.dtype == np.float32 and depth.shape == (2, 4)
    np.testing.assert_allclose(depth, expected, rtol=1e-6)


def test_disparity_to_depth_far_pixels_are_invalid_not_clamped():
    # baseline * fx = 200 m*px. p=2 -> d = 1/256 px -> 51,200 m; p=257 -> 200 m; p=513 -> 100 m;
    # p=641 -> 80 m exactly (at the cap: invalid, the community keeps gt < 80 only);
    # p=642 -> 79.875 m; p=1025 -> 50 m.
    p = np.array([[0, 1, 2, 257, 513, 641, 642, 1025]], dtype=np.uint16)
    depth = disparity_to_depth(p, 0.25, 800.0, max_depth=80.0)
    d = (p.astype(np.float64) - 1) / 256
    with np.errstate(divide="ignore"):
        unclamped = np.where(d > 0, 200.0 / d, 0.0)
    reference = np.where(unclamped < 80.0, unclamped, 0.0)  # independent statement of the rule
    np.testing.assert_allclose(depth, reference, rtol=1e-6)
    np.testing.assert_allclose(depth, [[0, 0, 0, 0, 0, 0, 200 * 256 / 641, 50.0]], rtol=1e-6)


def test_disparity_to_depth_uses_the_official_minus_one():
    p = np.array([[257]], dtype=np.uint16)
    official = disparity_to_depth(p, 0.209313, 2262.52, max_depth=1e6)[0, 0]
    without_minus_one = 0.209313 * 2262.52 / (257 / 256)
    assert official == pytest.approx(0.209313 * 2262.52, rel=1e-6)
    assert abs(official - without_minus_one) > 1.0


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.float32), np.zeros((4, 4, 3), np.uint16)],
)
def test_disparity_to_depth_rejects_wrong_input(bad):
    with pytest.raises(DataError, match="uint16|2-D"):
        disparity_to_depth(bad, 0.2, 2000.0)


# --- camera JSON --------------------------------------------------------------------------------


def _write_camera(path: Path, baseline=0.5, fx=100.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "extrinsic": {"baseline": baseline, "pitch": 0.0, "roll": 0.0, "x": 1.7},
                "intrinsic": {"fx": fx, "fy": fx, "u0": 10.0, "v0": 5.0},
            }
        )
    )
    return path


def test_read_camera(tmp_path):
    cam = read_camera(_write_camera(tmp_path / "c_camera.json", 0.3, 1234.5))
    assert cam == CameraIntrinsics(baseline=0.3, focal_length=1234.5)


def test_read_camera_errors_name_file_and_key(tmp_path):
    path = tmp_path / "bad_camera.json"
    path.write_text(json.dumps({"extrinsic": {"baseline": 0.2}, "intrinsic": {"fy": 1.0}}))
    with pytest.raises(DataError, match=r"bad_camera\.json.*intrinsic\.fx"):
        read_camera(path)
    path.write_text(json.dumps({"intrinsic": {"fx": 1.0}}))
    with pytest.raises(DataError, match=r"bad_camera\.json.*extrinsic"):
        read_camera(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"bad_camera\.json.*not valid JSON"):
        read_camera(path)
    _write_camera(path, baseline=-1.0)
    with pytest.raises(DataError, match=r"extrinsic\.baseline.*> 0"):
        read_camera(path)
    with pytest.raises(DataError, match="missing_camera.json"):
        read_camera(tmp_path / "missing_camera.json")


# --- transforms ---------------------------------------------------------------------------------


def test_prepare_image_matches_reference_normalisation():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    out = prepare_image(rgb, (32, 48))
    ref = ((rgb / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    assert out.dtype == np.float32 and out.shape == (3, 32, 48)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # PIL input and resizing: bicubic, then the same normalisation.
    img = Image.fromarray(rgb)
    resized = np.asarray(img.resize((24, 16), Image.Resampling.BICUBIC))
    np.testing.assert_allclose(prepare_image(img, (16, 24)), prepare_image(resized, (16, 24)))
    with pytest.raises(ValueError, match="uint8"):
        prepare_image(rgb.astype(np.float32), (32, 48))


def test_resize_depth_nearest_copies_values():
    depth = np.arange(12, dtype=np.float32).reshape(3, 4)
    up = resize_depth_nearest(depth, (6, 8))
    np.testing.assert_array_equal(up, depth.repeat(2, 0).repeat(2, 1))
    down = resize_depth_nearest(up, (3, 4))
    np.testing.assert_array_equal(down, depth)
    # Same rule as PIL's NEAREST on a float image.
    big = np.random.default_rng(1).random((37, 53)).astype(np.float32)
    pil = np.asarray(Image.fromarray(big).resize((20, 11), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(resize_depth_nearest(big, (11, 20)), pil)


# --- discovery ----------------------------------------------------------------------------------

RGB = np.full((6, 8, 3), 120, np.uint8)
DISP = np.full((6, 8), 300, np.uint16)


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _official(root: Path, split: str, city: str, n: int, camera: bool = True) -> None:
    for i in range(n):
        fid = f"{city}_{i:06d}_000019"
        _png(root / "leftImg8bit" / split / city / f"{fid}_leftImg8bit.png", RGB)
        _png(root / "disparity" / split / city / f"{fid}_disparity.png", DISP)
        if camera:
            _write_camera(root / "camera" / split / city / f"{fid}_camera.json")


def test_discover_official_layout(tmp_path):
    _official(tmp_path, "train", "bochum", 2)
    _official(tmp_path, "train", "aachen", 3, camera=False)
    samples = discover(tmp_path, "train", camera="default")  # aachen has no camera JSONs
    assert [(s.city, s.frame_id) for s in samples] == [
        ("aachen", "aachen_000000_000019"),
        ("aachen", "aachen_000001_000019"),
        ("aachen", "aachen_000002_000019"),
        ("bochum", "bochum_000000_000019"),
        ("bochum", "bochum_000001_000019"),
    ]
    assert all(s.camera_path is None for s in samples[:3])
    assert samples[3].camera_path.name == "bochum_000000_000019_camera.json"
    assert samples[4].disparity_path.name == "bochum_000001_000019_disparity.png"
    # num_cities keeps the first N cities in sorted order.
    first = discover(tmp_path, "train", num_cities=1, camera="default")
    assert {s.city for s in first} == {"aachen"}


def test_discover_depth_xy_layout_matches_by_frame_id(tmp_path):
    for name in ("ulm_1.png", "ulm_0.png"):
        _png(tmp_path / "depth_X" / "val" / "ulm" / name, RGB)
        _png(tmp_path / "depth_y" / "val" / "ulm" / name, DISP)
    # Cityscapes-named files in the depth_X/depth_y folders pair by frame id too.
    _png(tmp_path / "depth_X" / "val" / "zurich" / "zurich_000001_000019_leftImg8bit.png", RGB)
    _png(tmp_path / "depth_y" / "val" / "zurich" / "zurich_000001_000019_disparity.png", DISP)
    samples = discover(tmp_path, "val")  # auto-detects the depth_xy layout
    assert [s.frame_id for s in samples] == ["ulm_0", "ulm_1", "zurich_000001_000019"]
    assert samples[2].disparity_path.parent.parts[-3:] == ("depth_y", "val", "zurich")
    assert all(s.camera_path is None for s in samples)
    assert discover(tmp_path, "val", layout="depth_xy", num_cities=1)[-1].frame_id == "ulm_1"
    # A layout name outside the list is refused, naming what is accepted.
    with pytest.raises(DataError, match="expected one of auto, cityscapes, depth_xy"):
        discover(tmp_path, "val", layout="seed")
    with pytest.raises(ConfigError, match="data.layout"):
        params_from_dict({"data": {"layout": "seed"}})


def test_hidden_files_are_ignored(tmp_path):
    _official(tmp_path, "train", "aachen", 2)
    # macOS copies: AppleDouble "._" twins of real files, .DS_Store, a hidden city folder.
    for folder, suffix in (("leftImg8bit", "leftImg8bit"), ("disparity", "disparity")):
        city = tmp_path / folder / "train" / "aachen"
        (city / f"._aachen_000000_000019_{suffix}.png").write_bytes(b"\x00\x05\x16\x07 junk")
        (city / ".DS_Store").write_bytes(b"Bud1 junk")
    _official(tmp_path, "train", ".hidden", 1)
    samples = discover(tmp_path, "train")
    assert [s.frame_id for s in samples] == ["aachen_000000_000019", "aachen_000001_000019"]


def test_per_package_extraction_folders(tmp_path):
    # Each package unzipped into a folder named after it, as `unzip -d <package>` gives.
    _official(tmp_path / "flat", "val", "lindau", 1)
    for kind in ("leftImg8bit", "disparity", "camera"):
        dst = tmp_path / "pkg" / f"{kind}_trainvaltest" / kind
        dst.parent.mkdir(parents=True)
        (tmp_path / "flat" / kind).rename(dst)
    (tmp_path / "pkg" / "leftImg8bit_trainvaltest" / "README").write_text("package readme")
    samples = discover(tmp_path / "pkg", "val")
    assert len(samples) == 1 and samples[0].camera_path is not None
    assert samples[0].rgb_path.parts[-5:-3] == ("leftImg8bit_trainvaltest", "leftImg8bit")
    assert samples[0].camera_path.parts[-5:-3] == ("camera_trainvaltest", "camera")
    # The same split twice (flat and in a package) is ambiguous: an error naming both.
    _official(tmp_path / "pkg", "val", "lindau", 1)
    with pytest.raises(DataError, match=r"leftImg8bit/val and .*leftImg8bit_trainvaltest.*twice"):
        discover(tmp_path / "pkg", "val")


def test_missing_camera_json_is_an_error_unless_default(tmp_path):
    _official(tmp_path, "train", "aachen", 2)
    missing = tmp_path / "camera/train/aachen/aachen_000001_000019_camera.json"
    missing.unlink()
    with pytest.raises(DataError) as err:
        discover(tmp_path, "train")
    assert "aachen_000001_000019_leftImg8bit.png" in str(err.value)
    assert str(missing) in str(err.value) and "data.camera: default" in str(err.value)
    samples = discover(tmp_path, "train", camera="default")
    assert samples[0].camera_path is not None and samples[1].camera_path is None
    # A split whose camera folder is absent while the tree exists: the same rule, saying so.
    _official(tmp_path, "val", "lindau", 1, camera=False)
    with pytest.raises(DataError, match=r"camera/val does not exist"):
        discover(tmp_path, "val")
    # No camera tree at all: the configured default camera, no error.
    _official(tmp_path / "nocam", "val", "lindau", 1, camera=False)
    assert discover(tmp_path / "nocam", "val")[0].camera_path is None


def test_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    _official(tmp_path, "train", "aachen", 1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 6x8 = 48 px > 2 x 10: Pillow refuses
    with pytest.raises(DataError, match=r"000019_leftImg8bit.png: RGB image has more pixels"):
        discover(tmp_path, "train")


def test_frame_id():
    assert frame_id(Path("a_000001_000019_leftImg8bit.png")) == "a_000001_000019"
    assert frame_id(Path("a_000001_000019_disparity.png")) == "a_000001_000019"
    assert frame_id(Path("x.png")) == "x"


def test_rgb_without_disparity(tmp_path):
    _official(tmp_path, "train", "aachen", 2)
    (tmp_path / "disparity/train/aachen/aachen_000001_000019_disparity.png").unlink()
    with pytest.raises(DataError) as err:
        discover(tmp_path, "train")
    msg = str(err.value)
    assert "aachen_000001_000019_leftImg8bit.png" in msg
    assert "expected" in msg and "aachen_000001_000019_disparity.png" in msg


@pytest.mark.parametrize(
    "bad, what",
    [(np.full((6, 8), 7, np.uint8), "mode L"), (np.full((6, 8, 3), 7, np.uint8), "mode RGB")],
)
def test_8bit_or_rgb_disparity(tmp_path, bad, what):
    _official(tmp_path, "train", "aachen", 1)
    path = tmp_path / "disparity/train/aachen/aachen_000000_000019_disparity.png"
    _png(path, bad)
    with pytest.raises(DataError, match=f"aachen_000000_000019_disparity.png.*16-bit.*{what}"):
        discover(tmp_path, "train")


@pytest.mark.parametrize("folder", ["leftImg8bit", "disparity"])
def test_unreadable_file(tmp_path, folder):
    _official(tmp_path, "train", "aachen", 1)
    suffix = "leftImg8bit" if folder == "leftImg8bit" else "disparity"
    path = tmp_path / folder / "train/aachen" / f"aachen_000000_000019_{suffix}.png"
    path.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=f"{path.name}.*unreadable"):
        discover(tmp_path, "train")


def test_empty_split_and_missing_dirs(tmp_path):
    (tmp_path / "leftImg8bit/val/aachen").mkdir(parents=True)
    with pytest.raises(DataError, match=r"leftImg8bit/val.*empty"):
        discover(tmp_path, "val")
    with pytest.raises(DataError, match=r"leftImg8bit/test.*not found"):
        discover(tmp_path, "test")
    with pytest.raises(DataError, match=r"nowhere.*does not exist"):
        discover(tmp_path / "nowhere", "train")
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match=r"other.*leftImg8bit.*depth_X"):
        discover(tmp_path / "other", "train")
