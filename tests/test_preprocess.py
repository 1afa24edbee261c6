"""Preprocessing: values against the raw files, camera JSON override, manifest, idempotence,
failure leaves no manifest and no temp files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from depth_common.cli import main
from depth_common.config import load_params
from depth_common.data import discover, disparity_to_depth, read_camera, resize_depth_nearest
from depth_common.data.preprocess import MANIFEST, preprocess_dataset
from depth_common.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def _cfg(*overrides: str):
    return load_params(ROOT / "params.yaml", ("data.num_workers=0", *overrides)).data


def test_processed_fixture_matches_raw(synthetic_raw, processed_data):
    manifest = json.loads((processed_data / MANIFEST).read_text())
    assert manifest["counts"] == {"train": 8, "val": 8, "test": 8}
    assert manifest["layout"] == "cityscapes"
    assert manifest["params"]["img_size"] == [64, 128]
    s = discover(synthetic_raw, "val")[3]
    depth = np.load(processed_data / "val" / s.city / f"{s.frame_id}.npy")
    cam = read_camera(s.camera_path)
    raw = np.array(Image.open(s.disparity_path))
    assert depth.dtype == np.float32 and depth.shape == (64, 128)
    np.testing.assert_array_equal(
        depth, disparity_to_depth(raw, cam.baseline, cam.focal_length, 80.0)
    )
    rgb = np.array(Image.open(processed_data / "val" / s.city / f"{s.frame_id}.png"))
    np.testing.assert_array_equal(rgb, np.array(Image.open(s.rgb_path)))
    # Manifest statistics agree with the files.
    depths = np.stack(
        [np.load(processed_data / "val" / f"{f}.npy") for f in manifest["frames"]["val"]]
    )
    stats = manifest["stats"]["val"]
    assert stats["valid_fraction"] == pytest.approx((depths > 0).mean(), abs=1e-6)
    valid = depths[depths > 0]
    for q in (5, 50, 95):
        assert stats[f"depth_p{q}"] == pytest.approx(np.percentile(valid, q), abs=0.02)


def test_resize_bicubic_rgb_nearest_depth(synthetic_raw, tmp_path):
    manifest = preprocess_dataset(
        synthetic_raw, tmp_path, _cfg("data.img_size=[32,48]"), splits=("test",), progress=False
    )
    assert manifest["counts"] == {"test": 8}
    s = discover(synthetic_raw, "test")[0]
    cam = read_camera(s.camera_path)
    raw = np.array(Image.open(s.disparity_path))
    depth = np.load(tmp_path / "test" / s.city / f"{s.frame_id}.npy")
    # Resize-then-convert (what preprocessing does) equals convert-then-resize with nearest.
    expected = resize_depth_nearest(
        disparity_to_depth(raw, cam.baseline, cam.focal_length), (32, 48)
    )
    np.testing.assert_array_equal(depth, expected)
    rgb = np.array(Image.open(tmp_path / "test" / s.city / f"{s.frame_id}.png"))
    ref = np.array(Image.open(s.rgb_path).resize((48, 32), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(rgb, ref)


def _raw_pair(root: Path, split: str, fid: str, p: int, camera: dict | None) -> None:
    city = fid.split("_")[0]
    for folder, name, arr in (
        ("leftImg8bit", f"{fid}_leftImg8bit.png", np.full((4, 6, 3), 90, np.uint8)),
        ("disparity", f"{fid}_disparity.png", np.full((4, 6), p, np.uint16)),
    ):
        (root / folder / split / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / folder / split / city / name)
    if camera is not None:
        (root / "camera" / split / city).mkdir(parents=True, exist_ok=True)
        (root / "camera" / split / city / f"{fid}_camera.json").write_text(json.dumps(camera))


def test_camera_json_overrides_defaults(tmp_path):
    raw = tmp_path / "raw"
    cam = {"extrinsic": {"baseline": 0.5}, "intrinsic": {"fx": 100.0}}
    _raw_pair(raw, "train", "a_000000_000019", 257, cam)  # d = 1 px -> 0.5 * 100 = 50 m
    _raw_pair(raw, "train", "a_000001_000019", 257, None)  # defaults: 0.2 * 1000 = 200 m
    cfg = _cfg(
        "data.img_size=[4,6]", "data.baseline=0.2", "data.focal_length=1000", "data.max_depth=300"
    )
    preprocess_dataset(raw, tmp_path / "out", cfg, splits=("train",), progress=False)
    with_cam = np.load(tmp_path / "out/train/a/a_000000_000019.npy")
    without = np.load(tmp_path / "out/train/a/a_000001_000019.npy")
    np.testing.assert_allclose(with_cam, 50.0)
    np.testing.assert_allclose(without, 200.0)


def _mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.suffix in (".png", ".npy")}


def test_idempotent_skips_and_reruns_on_change(synthetic_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(synthetic_raw, raw)
    out = tmp_path / "out"
    cfg = _cfg("data.img_size=[64,128]", "data.num_workers=2")  # the process-pool path
    first = preprocess_dataset(raw, out, cfg, progress=False)
    assert first["run"] == {"converted": 24, "skipped": 0}
    before = _mtimes(out)
    second = preprocess_dataset(raw, out, _cfg("data.img_size=[64,128]"), progress=False)
    assert second["run"] == {"converted": 0, "skipped": 24}
    assert _mtimes(out) == before
    assert second["stats"] == first["stats"] and second["frames"] == first["frames"]

    # A newer input redoes only its pair.
    s = discover(raw, "train")[2]
    future = max(before.values()) + 10**9
    os.utime(s.disparity_path, ns=(future, future))
    third = preprocess_dataset(raw, out, _cfg("data.img_size=[64,128]"), progress=False)
    assert third["run"] == {"converted": 1, "skipped": 23}

    # A changed relevant param redoes everything, with the new value applied.
    fourth = preprocess_dataset(
        raw, out, _cfg("data.img_size=[64,128]", "data.max_depth=20"), progress=False
    )
    assert fourth["run"] == {"converted": 24, "skipped": 0}
    assert np.load(out / "train" / s.city / f"{s.frame_id}.npy").max() == pytest.approx(20.0)
    assert json.loads((out / MANIFEST).read_text())["params"]["max_depth"] == 20.0
    assert fourth["stats"]["train"]["depth_p95"] == 20.0  # clamped depths report max_depth


@pytest.mark.parametrize("workers", [0, 2])
def test_failure_mid_run_leaves_no_manifest_or_temp_files(synthetic_raw, tmp_path, workers):
    raw = tmp_path / "raw"
    shutil.copytree(synthetic_raw, raw)
    out = tmp_path / "out"
    preprocess_dataset(raw, out, _cfg("data.img_size=[64,128]"), progress=False)
    assert (out / MANIFEST).is_file()
    # A disparity PNG whose header is fine (discovery passes) but whose pixels are cut off.
    bad = discover(raw, "val")[1].disparity_path
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    os.utime(bad)
    cfg = _cfg("data.img_size=[64,128]", "data.max_depth=50", f"data.num_workers={workers}")
    with pytest.raises(DataError, match=f"{bad.name}.*unreadable"):
        preprocess_dataset(raw, out, cfg, progress=False)
    assert not (out / MANIFEST).exists()
    assert list(out.rglob("*.tmp")) == []


def test_missing_split_names_the_directory(tmp_path):
    raw = tmp_path / "raw"
    _raw_pair(raw, "train", "a_000000_000019", 300, None)
    with pytest.raises(DataError, match=r"leftImg8bit/val.*not found"):
        preprocess_dataset(raw, tmp_path / "out", _cfg("data.img_size=[4,6]"), progress=False)
    assert not (tmp_path / "out").exists()  # nothing written before discovery succeeded


def test_num_cities_and_cli(synthetic_raw, tmp_path, capsys):
    rc = main(
        [
            "preprocess",
            "--raw",
            str(synthetic_raw),
            "--out",
            str(tmp_path / "out"),
            "--set",
            "data.img_size=[32,64]",
            "--set",
            "data.num_workers=0",
            "--set",
            "data.num_cities=1",
        ]
    )
    assert rc == 0
    assert json.loads(capsys.readouterr().out) == {"train": 4, "val": 4, "test": 4}
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert len({f.split("/")[0] for f in manifest["frames"]["train"]}) == 1
