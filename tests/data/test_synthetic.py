"""Synthetic Cityscapes: official layout, exact disparity round trip, determinism, plausible
depth ranges."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from depth_common.cli.parser import main
from depth_common.data import discover, disparity_to_depth, read_camera
from depth_common.data.synthetic import (
    FX_FULL,
    cityscapes_camera,
    depth_to_disparity_png,
    generate_cityscapes,
    render_scene,
)


def _scenes(n: int, size=(64, 128), seed=0):
    cam = cityscapes_camera(size)
    return cam, [render_scene(np.random.default_rng([seed, i]), size, cam) for i in range(n)]


def test_render_scene_outputs_and_depth_ranges():
    _, scenes = _scenes(12)
    rgb, depth = scenes[0]
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 128, 3)
    assert depth.dtype == np.float32 and depth.shape == (64, 128)
    d = np.stack([s[1] for s in scenes])
    valid = d[d > 0]
    assert 0.5 < valid.size / d.size < 1.0  # mostly scene, some sky (invalid)
    assert np.mean((valid >= 3) & (valid <= 80)) > 0.95
    assert np.mean(valid > 80) < 0.02
    # Sky is the top of the image: the top row is invalid far more often than the bottom row.
    assert (d[:, 0] == 0).mean() > 0.3 and (d[:, -1] == 0).mean() == 0.0
    # Depth is learnable from the pixels: far pixels are hazier (closer to the haze grey) than
    # near ones, so brightness contrast falls with depth.
    img = np.stack([s[0] for s in scenes]).astype(np.float64).mean(-1)
    near, far = (d > 0) & (d < 12), d > 40
    assert img[near].std() > img[far].std()


def test_disparity_round_trip_within_quantisation(tmp_path):
    cam, scenes = _scenes(6)
    b, fx = cam["extrinsic"]["baseline"], cam["intrinsic"]["fx"]
    for i, (_, depth) in enumerate(scenes):
        path = tmp_path / f"{i}.png"
        Image.fromarray(depth_to_disparity_png(depth, b, fx)).save(path)
        decoded = disparity_to_depth(np.array(Image.open(path)), b, fx, max_depth=1e9)
        valid = depth > 0
        np.testing.assert_array_equal(decoded > 0, valid)
        # Stored disparity is round(256 d): off by at most 1/512 px, so the decoded depth lies
        # in [B f / (d + 1/512), B f / (d - 1/512)] for the true disparity d = B f / z.
        d = b * fx / depth[valid].astype(np.float64)
        lo, hi = b * fx / (d + 1 / 512), b * fx / (d - 1 / 512)
        z = decoded[valid]
        assert np.all(z >= lo * (1 - 1e-6)) and np.all(z <= hi * (1 + 1e-6))
        assert np.abs(z - depth[valid]).max() > 0  # quantised, not a lossless copy


def test_depth_to_disparity_png_encoding():
    depth = np.array([[0.0, 10.0, 1e9, 0.001]], np.float32)
    p = depth_to_disparity_png(depth, 0.2, 1000.0)
    # d = 20 px -> 20*256+1; too far to encode -> 1 (decodes invalid); too near -> saturates.
    np.testing.assert_array_equal(p, [[0, 20 * 256 + 1, 1, 65535]])


def test_generate_cityscapes_layout_and_cameras(synthetic_raw):
    samples = discover(synthetic_raw, "train")
    assert len(samples) == 8 and len({s.city for s in samples}) == 2
    s = samples[0]
    assert s.camera_path is not None
    cam = json.loads(s.camera_path.read_text())
    assert set(cam) == {"extrinsic", "intrinsic"}
    assert set(cam["extrinsic"]) == {"baseline", "pitch", "roll", "x", "y", "z", "yaw"}
    assert set(cam["intrinsic"]) == {"fx", "fy", "u0", "v0"}
    assert cam["intrinsic"]["fx"] == pytest.approx(FX_FULL * 128 / 2048)
    assert cam["extrinsic"]["z"] == pytest.approx(1.22, abs=0.05)
    assert Image.open(s.rgb_path).size == (128, 64) and Image.open(s.rgb_path).mode == "RGB"
    disp = Image.open(s.disparity_path)
    assert disp.mode == "I;16"
    # Decoded with its own camera it gives street-scale depths.
    c = read_camera(s.camera_path)
    depth = disparity_to_depth(np.array(disp), c.baseline, c.focal_length)
    assert 3.0 < np.median(depth[depth > 0]) < 60.0
    for split in ("val", "test"):
        assert len(discover(synthetic_raw, split)) == 8


def _tree_bytes(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_by_seed(tmp_path):
    kw = dict(cities=1, per_split=2, size=(32, 64))
    a = generate_cityscapes(tmp_path / "a", seed=3, **kw)
    generate_cityscapes(tmp_path / "b", seed=3, **kw)
    generate_cityscapes(tmp_path / "c", seed=4, **kw)
    generate_cityscapes(tmp_path / "v", seed=3, splits=("val",), **kw)
    ta, tb, tc = (_tree_bytes(tmp_path / n) for n in "abc")
    assert len(ta) == 3 * 2 * 3 and ta == tb
    assert a["counts"] == {"train": 2, "val": 2, "test": 2}
    differing = [k for k in ta if k.suffix == ".png" and ta[k] != tc[k]]
    assert len(differing) == 12  # every image changes with the seed
    # An image does not depend on which other splits were generated.
    tv = _tree_bytes(tmp_path / "v")
    assert tv and all(ta[k] == v for k, v in tv.items())


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "raw"
    rc = main(["synth", "--out", str(out), "--cities", "1", "--per-split", "2", "--size", "32x64"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"] == {"train": 2, "val": 2, "test": 2}
    assert len(list((out / "leftImg8bit").rglob("*_leftImg8bit.png"))) == 6
    assert len(list((out / "camera").rglob("*_camera.json"))) == 6


def test_generated_frames_show_an_ego_hood_inside_the_bottom_quarter(tmp_path):
    generate_cityscapes(tmp_path / "h", cities=1, per_split=3, size=(96, 192), splits=("val",))
    generate_cityscapes(
        tmp_path / "n", cities=1, per_split=3, size=(96, 192), splits=("val",), hood=False
    )
    for with_hood, without in zip(
        discover(tmp_path / "h", "val"), discover(tmp_path / "n", "val"), strict=True
    ):
        cam = read_camera(with_hood.camera_path)
        depth = disparity_to_depth(
            np.array(Image.open(with_hood.disparity_path)), cam.baseline, cam.focal_length
        )
        rgb_h, rgb_n = (np.array(Image.open(s.rgb_path)) for s in (with_hood, without))
        hood = np.any(rgb_h != rgb_n, axis=2)
        rows = np.flatnonzero(hood.any(axis=1))
        # The hood covers the whole width of the lowest rows, never reaches above 75 % of the
        # height, and has valid near stereo depth (1-2 m), unlike the ground it hides (> 4 m).
        assert rows.min() >= 0.75 * 96 and rows.max() == 95 and hood[-8:].all()
        assert 0.10 < hood.mean() < 0.25
        assert np.all((depth[hood] > 1.0) & (depth[hood] < 2.0))
        assert np.all((depth[:72] == 0) | (depth[:72] > 4.0))


def test_focal_range_gives_each_city_its_own_lens(tmp_path, capsys):
    out = tmp_path / "raw"
    args = ["synth", "--out", str(out), "--cities", "3", "--per-split", "1", "--size", "32x64"]
    assert main([*args, "--focal-range", "0.5,1.5"]) == 0
    assert json.loads(capsys.readouterr().out)["focal_range"] == [0.5, 1.5]
    base = FX_FULL * 64 / 2048
    for split in ("train", "val", "test"):
        cams = [json.loads(p.read_text()) for p in sorted((out / "camera" / split).rglob("*.json"))]
        zooms = [c["intrinsic"]["fx"] / base for c in cams]
        assert len(set(zooms)) == 3 and all(0.5 <= z <= 1.5 for z in zooms), zooms
        for cam in cams:  # fx and fy zoom together: square pixels kept
            assert cam["intrinsic"]["fy"] / cam["intrinsic"]["fx"] == pytest.approx(
                2265.30 / FX_FULL
            )
    fixed = generate_cityscapes(tmp_path / "fixed", cities=1, per_split=1, size=(32, 64),
                                splits=("test",), focal_range=(1.5, 1.5))  # fmt: skip
    cam = json.loads(next((tmp_path / "fixed" / "camera").rglob("*.json")).read_text())
    assert cam["intrinsic"]["fx"] == pytest.approx(1.5 * base) and fixed["counts"] == {"test": 1}
    with pytest.raises(SystemExit):
        main([*args, "--focal-range", "1.5,0.5"])
    with pytest.raises(ValueError, match="focal_range"):
        generate_cityscapes(tmp_path / "bad", focal_range=(0.0, 1.0))
