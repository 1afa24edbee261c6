"""Cityscapes layer: disparity → depth against hand-computed values, camera JSONs, discovery of
both layouts, and a clear DataError for each bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from depth_common.data import discover, disparity_to_depth, prepare_image, read_camera
from depth_common.data.cityscapes import CameraIntrinsics, frame_id
from depth_common.data.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_depth_nearest
from depth_common.errors import DataError

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


def test_disparity_to_depth_clamps_and_keeps_invalid_zero():
    p = np.array([[0, 1, 2, 257, 513, 1025]], dtype=np.uint16)
    depth = disparity_to_depth(p, 0.25, 800.0, max_depth=80.0)
    np.testing.assert_allclose(depth, [[0.0, 0.0, 80.0, 80.0, 80.0, 50.0]])


def test_disparity_to_depth_is_official_not_seed_formula():
    p = np.array([[257]], dtype=np.uint16)
    official = disparity_to_depth(p, 0.209313, 2262.52, max_depth=1e6)[0, 0]
    seed = 0.209313 * 2262.52 / (257 / 256)
    assert official == pytest.approx(0.209313 * 2262.52, rel=1e-6)
    assert abs(official - seed) > 1.0


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
    samples = discover(tmp_path, "train")
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
    # num_cities keeps the first N cities in sorted order, as the seed does.
    assert {s.city for s in discover(tmp_path, "train", num_cities=1)} == {"aachen"}


def test_discover_seed_layout_matches_by_frame_id(tmp_path):
    for name in ("ulm_1.png", "ulm_0.png"):
        _png(tmp_path / "depth_X" / "val" / "ulm" / name, RGB)
        _png(tmp_path / "depth_y" / "val" / "ulm" / name, DISP)
    # Cityscapes-named files in the seed folders pair by frame id too.
    _png(tmp_path / "depth_X" / "val" / "zurich" / "zurich_000001_000019_leftImg8bit.png", RGB)
    _png(tmp_path / "depth_y" / "val" / "zurich" / "zurich_000001_000019_disparity.png", DISP)
    samples = discover(tmp_path, "val")  # auto-detects the seed layout
    assert [s.frame_id for s in samples] == ["ulm_0", "ulm_1", "zurich_000001_000019"]
    assert samples[2].disparity_path.parent.parts[-3:] == ("depth_y", "val", "zurich")
    assert all(s.camera_path is None for s in samples)
    assert discover(tmp_path, "val", layout="seed", num_cities=1)[-1].frame_id == "ulm_1"


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
