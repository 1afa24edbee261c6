"""Preprocessing: values against numpy references on the raw files (hood crop, far pixels,
full-resolution ground truth), camera JSON override and sources, manifest, idempotence, and
faults: a failure leaves no manifest and no temp files, a run killed with SIGKILL leaves
nothing that a later run keeps."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from depth_common.atomic import mark_managed, parse_temp_name
from depth_common.cli.parser import main
from depth_common.config import load_params
from depth_common.data import discover, disparity_to_depth, read_camera, resize_depth_nearest
from depth_common.data.convert import GT_SUFFIX, load_depth_png
from depth_common.data.preprocess import MANIFEST, preprocess_dataset
from depth_common.errors import DataError, UnmanagedDirectoryError

ROOT = Path(__file__).resolve().parents[2]


def _cfg(*overrides: str):
    return load_params(ROOT / "params.yaml", ("data.num_workers=0", *overrides)).data


def _crop_ref(arr: np.ndarray, fraction: float = 0.25) -> np.ndarray:
    """Independent statement of the hood crop: keep the top round(H * (1 - f)) rows."""
    return arr[: int(round(arr.shape[0] * (1 - fraction)))]


def test_processed_fixture_matches_raw(synthetic_raw, processed_data):
    manifest = json.loads((processed_data / MANIFEST).read_text())
    assert manifest["counts"] == {"train": 8, "val": 8, "test": 8}
    assert manifest["layout"] == "cityscapes"
    assert manifest["params"]["img_size"] == [64, 128]
    assert manifest["params"]["crop_bottom"] == 0.25  # the Cityscapes layout's default
    s = discover(synthetic_raw, "val")[3]
    depth = np.load(processed_data / "val" / s.city / f"{s.frame_id}.npy")
    cam = read_camera(s.camera_path)
    raw = np.array(Image.open(s.disparity_path))  # 64 x 128, hood in the bottom rows
    assert depth.dtype == np.float32 and depth.shape == (64, 128)
    cropped = _crop_ref(raw)
    assert cropped.shape == (48, 128)
    rows = np.floor((np.arange(64) + 0.5) * 48 / 64).astype(int)  # nearest, pixel centres
    expected = disparity_to_depth(cropped[rows], cam.baseline, cam.focal_length, 80.0)
    np.testing.assert_array_equal(depth, expected)
    assert depth[depth > 0].min() > 2.0  # no hood pixel (1-2 m) survives the crop
    rgb = np.array(Image.open(processed_data / "val" / s.city / f"{s.frame_id}.png"))
    ref = Image.fromarray(_crop_ref(np.array(Image.open(s.rgb_path))))
    np.testing.assert_array_equal(rgb, np.array(ref.resize((128, 64), Image.Resampling.BICUBIC)))
    # Manifest statistics agree with the files.
    depths = np.stack(
        [np.load(processed_data / "val" / f"{f}.npy") for f in manifest["frames"]["val"]]
    )
    stats = manifest["stats"]["val"]
    assert stats["valid_fraction"] == pytest.approx((depths > 0).mean(), abs=1e-6)
    valid = depths[depths > 0]
    for q in (5, 50, 95):
        assert stats[f"depth_p{q}"] == pytest.approx(np.percentile(valid, q), abs=0.02)
    assert manifest["camera_summary"]["val"] == {"camera_json": 8}


def test_full_resolution_ground_truth(synthetic_raw, processed_data):
    manifest = json.loads((processed_data / MANIFEST).read_text())
    assert manifest["full_resolution_gt"]["splits"] == ["val", "test"]
    for split in ("val", "test"):
        s = discover(synthetic_raw, split)[1]
        png = processed_data / split / s.city / f"{s.frame_id}{GT_SUFFIX}"
        stored = np.array(Image.open(png))
        cam = read_camera(s.camera_path)
        full = disparity_to_depth(
            _crop_ref(np.array(Image.open(s.disparity_path))), cam.baseline, cam.focal_length
        )
        assert stored.dtype == np.uint16 and stored.shape == (48, 128)
        np.testing.assert_array_equal(stored, np.rint(full.astype(np.float64) * 256))
        decoded = load_depth_png(png)
        np.testing.assert_array_equal(decoded > 0, full > 0)
        assert np.abs(decoded - full).max() <= 1 / 512 + 1e-6  # metres x 256, rounded
    assert not list((processed_data / "train").rglob(f"*{GT_SUFFIX}"))  # training: none


def test_resize_bicubic_rgb_nearest_depth(synthetic_raw, tmp_path):
    manifest = preprocess_dataset(
        synthetic_raw, tmp_path, _cfg("data.img_size=[32,48]"), splits=("test",), progress=False
    )
    assert manifest["counts"] == {"test": 8}
    s = discover(synthetic_raw, "test")[0]
    cam = read_camera(s.camera_path)
    raw = _crop_ref(np.array(Image.open(s.disparity_path)))
    depth = np.load(tmp_path / "test" / s.city / f"{s.frame_id}.npy")
    # Resize-then-convert (what preprocessing does) equals convert-then-resize with nearest.
    expected = resize_depth_nearest(
        disparity_to_depth(raw, cam.baseline, cam.focal_length), (32, 48)
    )
    np.testing.assert_array_equal(depth, expected)
    rgb = np.array(Image.open(tmp_path / "test" / s.city / f"{s.frame_id}.png"))
    ref = Image.fromarray(_crop_ref(np.array(Image.open(s.rgb_path))))
    np.testing.assert_array_equal(rgb, np.array(ref.resize((48, 32), Image.Resampling.BICUBIC)))


def test_crop_is_the_same_rows_for_rgb_and_depth(tmp_path):
    # Every row of the raw frame encodes its own index: in RGB (red = row) and in disparity
    # (p = 2561 + 16 row: 10 + row/16 px). After the crop (no resize) both hold rows 0..kept-1.
    raw, h, w = tmp_path / "raw", 48, 32
    rows = np.arange(h)
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = rows[:, None]
    disp = np.broadcast_to((2561 + 16 * rows)[:, None], (h, w)).astype(np.uint16)
    for folder, name, arr in (
        ("leftImg8bit", "a_000000_000019_leftImg8bit.png", rgb),
        ("disparity", "a_000000_000019_disparity.png", disp),
    ):
        (raw / folder / "val" / "a").mkdir(parents=True)
        Image.fromarray(arr).save(raw / folder / "val" / "a" / name)
    cfg = _cfg("data.img_size=[32,32]", "data.crop_bottom=0.3333")
    preprocess_dataset(raw, tmp_path / "out", cfg, splits=("val",), progress=False)
    kept = int(round(48 * (1 - 0.3333)))
    assert kept == 32
    out_rgb = np.array(Image.open(tmp_path / "out/val/a/a_000000_000019.png"))
    out_depth = np.load(tmp_path / "out/val/a/a_000000_000019.npy")
    np.testing.assert_array_equal(out_rgb[:, 0, 0], rows[:kept])
    d = (disp[:kept, 0].astype(np.float64) - 1) / 256  # default camera: no camera/ tree
    np.testing.assert_allclose(out_depth[:, 0], 0.209313 * 2262.52 / d, rtol=1e-6)


def _raw_pair(root: Path, split: str, fid: str, p: int, camera: dict | None) -> None:
    city = fid.split("_")[0]
    for folder, name, arr in (
        ("leftImg8bit", f"{fid}_leftImg8bit.png", np.full((16, 32, 3), 90, np.uint8)),
        ("disparity", f"{fid}_disparity.png", np.full((16, 32), p, np.uint16)),
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
        "data.img_size=[16,32]",
        "data.baseline=0.2",
        "data.focal_length=1000",
        "data.max_depth=250",
        "data.camera=default",
    )
    with pytest.raises(DataError, match=r"a_000001_000019_leftImg8bit.png: no camera JSON"):
        preprocess_dataset(raw, tmp_path / "out", _cfg("data.img_size=[16,32]"), progress=False)
    manifest = preprocess_dataset(raw, tmp_path / "out", cfg, splits=("train",), progress=False)
    with_cam = np.load(tmp_path / "out/train/a/a_000000_000019.npy")
    without = np.load(tmp_path / "out/train/a/a_000001_000019.npy")
    np.testing.assert_allclose(with_cam, 50.0)
    np.testing.assert_allclose(without, 200.0)
    assert manifest["camera_sources"]["train"] == ["camera_json", "default"]
    # An unreadable camera JSON: an error under require, the default camera under default.
    (raw / "camera/train/a/a_000000_000019_camera.json").write_text("{broken")
    cam2 = {"extrinsic": {"baseline": 0.2}, "intrinsic": {"fx": 1000.0}}
    (raw / "camera/train/a/a_000001_000019_camera.json").write_text(json.dumps(cam2))
    strict = _cfg("data.img_size=[16,32]", "data.max_depth=250")
    with pytest.raises(DataError, match=r"a_000000_000019_camera.json: not valid JSON"):
        preprocess_dataset(raw, tmp_path / "out2", strict, splits=("train",), progress=False)
    manifest = preprocess_dataset(raw, tmp_path / "out", cfg, splits=("train",), progress=False)
    sources = manifest["camera_sources"]["train"]
    assert sources[0].startswith("default (unreadable") and sources[1] == "camera_json"
    np.testing.assert_allclose(np.load(tmp_path / "out/train/a/a_000000_000019.npy"), 200.0)


def _mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.suffix in (".png", ".npy")}


def test_idempotent_skips_and_reruns_on_change(synthetic_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(synthetic_raw, raw)
    out = tmp_path / "out"
    cfg = _cfg("data.img_size=[64,128]", "data.num_workers=2")  # the process-pool path
    first = preprocess_dataset(raw, out, cfg, progress=False)
    assert first["run"] == {"converted": 24, "skipped": 0, "removed_temp_files": 0}
    before = _mtimes(out)
    second = preprocess_dataset(raw, out, _cfg("data.img_size=[64,128]"), progress=False)
    assert second["run"] == {"converted": 0, "skipped": 24, "removed_temp_files": 0}
    assert _mtimes(out) == before
    assert second["stats"] == first["stats"] and second["frames"] == first["frames"]

    # A newer input redoes only its pair.
    s = discover(raw, "train")[2]
    future = max(before.values()) + 10**9
    os.utime(s.disparity_path, ns=(future, future))
    third = preprocess_dataset(raw, out, _cfg("data.img_size=[64,128]"), progress=False)
    assert third["run"] == {"converted": 1, "skipped": 23, "removed_temp_files": 0}

    # A changed relevant param redoes everything, with the new value applied.
    fourth = preprocess_dataset(
        raw, out, _cfg("data.img_size=[64,128]", "data.max_depth=20"), progress=False
    )
    assert fourth["run"] == {"converted": 24, "skipped": 0, "removed_temp_files": 0}
    near = np.load(out / "train" / s.city / f"{s.frame_id}.npy")
    assert 0 < near.max() < 20.0  # far pixels are dropped, not clamped to 20 m
    assert json.loads((out / MANIFEST).read_text())["params"]["max_depth"] == 20.0
    assert fourth["stats"]["train"]["valid_fraction"] < first["stats"]["train"]["valid_fraction"]


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
        preprocess_dataset(raw, tmp_path / "out", _cfg("data.img_size=[16,32]"), progress=False)
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


# --- a run killed with SIGKILL --------------------------------------------------------------

_KILLED_RUN = """
import sys, time
from pathlib import Path
import depth_common.data.convert as convert
from depth_common.config import load_params
from depth_common.data.preprocess import preprocess_dataset

root, raw, out, marker, where = sys.argv[1:6]
overrides = sys.argv[6:]

def stop_here():
    Path(marker).write_text("ready")
    time.sleep(600)  # until the test kills this process

if where == "before_png":  # the pair's .npy is written, its stamped .png is not
    real_save_png = convert.save_png
    def save_png(path, image, **kw):
        if not str(path).endswith(convert.GT_SUFFIX):
            stop_here()
        return real_save_png(path, image, **kw)
    convert.save_png = save_png
else:  # "mid_write": inside the atomic write of the first .npy, its temp file half written
    import depth_common.data.io as data_io
    def save_npy(path, array):
        def write(fh):
            fh.write(b"\\x93NUMPY half")
            fh.flush()
            stop_here()
        return data_io.atomic_write(path, write)
    convert.save_npy = save_npy
params = load_params(Path(root) / "params.yaml", overrides)
preprocess_dataset(raw, out, params.data, splits=("train",), progress=False)
"""


def _run_until_killed(raw: Path, out: Path, where: str, *overrides: str) -> None:
    """Start preprocessing in a real process, let it reach ``where``, then SIGKILL it."""
    import signal
    import subprocess
    import sys
    import time

    marker = out.parent / f"{where}.ready"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [str(ROOT), str(raw), str(out), str(marker), where, "data.num_workers=0", *overrides]
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, *args], env=env)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {where}"
            assert time.monotonic() < deadline, f"the run did not reach {where}"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_killed_run_leaves_no_file_a_later_run_keeps(synthetic_raw, tmp_path):
    out = tmp_path / "out"
    cfg = _cfg("data.img_size=[64,128]")
    first = preprocess_dataset(synthetic_raw, out, cfg, splits=("train",), progress=False)
    frame = first["frames"]["train"][0]
    good = (out / "train" / f"{frame}.npy").read_bytes()
    # Another run with other params is killed after rewriting the first pair's .npy.
    _run_until_killed(
        synthetic_raw, out, "before_png", "data.img_size=[64,128]", "data.max_depth=20"
    )
    assert (out / "train" / f"{frame}.npy").read_bytes() != good  # the stale file is there
    assert not (out / MANIFEST).exists()  # and the directory says it is unfinished
    # The first params again: that pair's PNG still carries their fingerprint, but its .npy is
    # not the one the stamp vouches for, so the pair is redone, not kept.
    again = preprocess_dataset(synthetic_raw, out, cfg, splits=("train",), progress=False)
    assert again["run"] == {"converted": 1, "skipped": 7, "removed_temp_files": 0}
    assert (out / "train" / f"{frame}.npy").read_bytes() == good
    assert again["stats"] == first["stats"]


def test_killed_run_temp_files_are_removed(synthetic_raw, tmp_path):
    out = tmp_path / "out"
    _run_until_killed(synthetic_raw, out, "mid_write", "data.img_size=[64,128]")
    leftovers = list(out.rglob("*.tmp"))
    assert len(leftovers) == 1
    temp = parse_temp_name(leftovers[0].name)
    assert temp is not None and temp.target.endswith(".npy")
    cfg = _cfg("data.img_size=[64,128]")
    manifest = preprocess_dataset(synthetic_raw, out, cfg, splits=("train",), progress=False)
    assert manifest["run"] == {"converted": 8, "skipped": 0, "removed_temp_files": 1}
    assert list(out.rglob("*.tmp")) == []
    assert all(np.isfinite(np.load(p)).all() for p in (out / "train").rglob("*.npy"))


def test_one_run_at_a_time_per_output_directory(synthetic_raw, tmp_path):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    mark_managed(out)  # as the running preprocess did
    with open(out / ".preprocess.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running preprocess holds it
        with pytest.raises(DataError, match="another preprocessing run is writing here"):
            preprocess_dataset(synthetic_raw, out, _cfg("data.img_size=[64,128]"), progress=False)


def test_never_writes_into_a_directory_it_did_not_make(synthetic_raw, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "train").mkdir()
    (home / "train" / "notes.txt").write_text("mine")
    with pytest.raises(UnmanagedDirectoryError, match=f"^{home}: not empty"):
        preprocess_dataset(synthetic_raw, home, _cfg("data.img_size=[64,128]"), progress=False)
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == ["train", "train/notes.txt"]
