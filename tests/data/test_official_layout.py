"""The data path on an official-layout Cityscapes tree named with cityscapesscripts' helpers.

The tree has per-city cameras, frames whose disparity holds known regions (sky p = 0, p = 1,
p = 2 ≈ 51 km, ≈ 100 m, a 5-75 m scene and an ego hood at 1.5 m with valid disparity in the
bottom quarter), a missing camera JSON, a macOS ``._`` file, and a ``train_extra`` split
extracted into its own package folders. Every processed value is checked against a numpy
statement of the rules, and evaluation on the tree against an independent reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.csHelpers import (
    CsFile,
    ensurePath,
    getCoreImageFileName,
    getCsFileInfo,
)
from depth_refs import bilinear_reference, manydepth_reference
from PIL import Image

from depth_common.config import EvaluationConfig, load_params
from depth_common.data.convert import gt_path, load_depth_png
from depth_common.data.dataset import DepthDataset
from depth_common.data.preprocess import preprocess_dataset
from depth_common.errors import DataError
from depth_common.evaluation.metrics import compute_depth_metrics
from depth_common.evaluation.protocol import Scorer

ROOT = Path(__file__).resolve().parents[2]
H, W = 64, 128
#: city → (split, package folder or "" for the flat layout, baseline m, fx px at 128 px width)
CITIES = {
    "aachen": ("train", "", 0.20, 100.0),
    "bochum": ("train", "", 0.22, 110.0),
    "frankfurt": ("val", "", 0.21, 105.0),
    "berlin": ("test", "", 0.19, 95.0),
    "augsburg": ("train_extra", "trainextra", 0.23, 90.0),
}
FRAMES = 2
MISSING_CAMERA = ("frankfurt", 1)  # this frame's camera JSON is not there
REGIONS = {"sky": (0, 8), "p1": (8, 16), "p2": (16, 24), "far": (24, 32), "scene": (32, 48)}
HOOD = (48, 64)  # the bottom quarter, removed by the default crop


def cs_name(city: str, frame: int, kind: str, ext: str) -> str:
    """An official file name built from a CsFile record, checked by the helpers' own parser."""
    record = CsFile(city, "000000", f"{frame:06d}", kind, "", ext)
    name = "_".join(record[:4]) + "." + record.ext
    assert getCsFileInfo(name) == record
    assert getCoreImageFileName(name) == f"{city}_000000_{frame:06d}"
    return name


def scene_depth() -> np.ndarray:
    """The true depth of a frame's scene rows: 5 m at the left edge to 75 m at the right."""
    return np.broadcast_to(5.0 + 70.0 * np.arange(W) / (W - 1), (16, W))


def disparity_png(baseline: float, fx: float) -> np.ndarray:
    def encode(z: np.ndarray | float) -> np.ndarray:
        return np.rint(256.0 * baseline * fx / np.asarray(z)) + 1

    p = np.zeros((H, W))
    p[8:16], p[16:24] = 1, 2
    p[24:32] = encode(100.0)
    p[32:48] = encode(scene_depth())
    p[48:64] = encode(1.5)
    return p.astype(np.uint16)


def _folder(root: Path, kind: str, package: str, split: str, city: str) -> Path:
    base = root / f"{kind}_{package}" / kind if package else root / kind
    path = base / split / city
    ensurePath(str(path))
    return path


def build_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for city, (split, package, baseline, fx) in CITIES.items():
        for frame in range(FRAMES):
            rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            rgb_dir = _folder(root, "leftImg8bit", package, split, city)
            Image.fromarray(rgb).save(rgb_dir / cs_name(city, frame, "leftImg8bit", "png"))
            disp_dir = _folder(root, "disparity", package, split, city)
            disp = Image.fromarray(disparity_png(baseline, fx))
            disp.save(disp_dir / cs_name(city, frame, "disparity", "png"))
            if (city, frame) == MISSING_CAMERA:
                continue
            cam = {"extrinsic": {"baseline": baseline}, "intrinsic": {"fx": fx, "fy": fx}}
            cam_dir = _folder(root, "camera", package, split, city)
            (cam_dir / cs_name(city, frame, "camera", "json")).write_text(json.dumps(cam))
    aachen = root / "leftImg8bit" / "train" / "aachen"
    (aachen / ("._" + cs_name("aachen", 0, "leftImg8bit", "png"))).write_bytes(b"\0\5\26\7 mac")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cityscapes")
    build_tree(root)
    return root


def _params(*overrides: str):
    base = (
        "data.img_size=[32,64]",
        "data.num_workers=0",
        "data.splits=[train, train_extra, val, test]",
        "data.train_splits=[train, train_extra]",
    )
    return load_params(ROOT / "params.yaml", base + overrides)


@pytest.fixture(scope="module")
def processed(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("processed")
    params = _params("data.camera=default", "data.baseline=0.2", "data.focal_length=120")
    manifest = preprocess_dataset(tree, out, params.data, progress=False)
    return out, manifest


def reference_depth(
    baseline: float, fx: float, decode: tuple[float, float] | None = None
) -> np.ndarray:
    """The rules, stated once more in numpy: crop the bottom 25 %, decode (with the frame's
    camera unless ``decode`` names another), keep gt < 80 m."""
    p = disparity_png(baseline, fx)[: int(round(H * 0.75))].astype(np.float64)
    d = (p - 1) / 256
    b, f = decode or (baseline, fx)
    with np.errstate(divide="ignore"):
        z = np.where(d > 0, b * f / np.where(d > 0, d, 1), 0.0)
    return np.where(z < 80.0, z, 0.0)


def test_missing_camera_json_stops_the_default_run(tree, tmp_path):
    with pytest.raises(DataError) as err:
        preprocess_dataset(tree, tmp_path / "out", _params().data, progress=False)
    missing = tree / "camera/val/frankfurt" / cs_name("frankfurt", 1, "camera", "json")
    assert str(missing) in str(err.value) and "data.camera: default" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_manifest_counts_cameras_and_splits(processed):
    out, manifest = processed
    assert manifest["layout"] == "cityscapes" and manifest["params"]["crop_bottom"] == 0.25
    assert manifest["counts"] == {"train": 4, "train_extra": 2, "val": 2, "test": 2}
    assert manifest["frames"]["train"][0] == "aachen/aachen_000000_000000"  # no "._" twin
    assert manifest["camera_sources"]["val"] == ["camera_json", "default"]
    assert manifest["camera_summary"]["train_extra"] == {"camera_json": 2}
    assert manifest["train_splits"] == ["train", "train_extra"]
    assert manifest["full_resolution_gt"]["splits"] == ["val", "test"]
    assert len(manifest["warnings"]) == 4  # no split has the full release's frame count
    assert "the full Cityscapes release has 19998" in manifest["warnings"][1]
    assert len(DepthDataset(out, "train")) == 6  # train + train_extra


@pytest.mark.parametrize("city", sorted(CITIES))
def test_processed_depth_follows_the_rules(processed, city):
    out, _ = processed
    split, _, baseline, fx = CITIES[city]
    ref = reference_depth(baseline, fx)  # 48 x 128: hood rows gone
    assert ref.shape == (48, W)
    for name, (top, bottom) in REGIONS.items():
        valid = (ref[top:bottom] > 0).all()
        assert valid == (name == "scene"), name  # p = 2 and 100 m are invalid, not 80 m
    npy = np.load(out / split / city / f"{city}_000000_000000.npy")
    rows = np.floor((np.arange(32) + 0.5) * 48 / 32).astype(int)
    cols = np.floor((np.arange(64) + 0.5) * W / 64).astype(int)
    np.testing.assert_allclose(npy, ref[rows][:, cols], rtol=1e-6)
    true = scene_depth()  # within the 1/256 px disparity quantisation of the stored PNG
    assert np.abs(ref[32:48] - true).max() < true.max() ** 2 / (256 * baseline * fx) + 1e-6
    if split in ("val", "test"):
        png = out / split / city / f"{city}_000000_000000.png"
        full = load_depth_png(gt_path(png))
        assert full.shape == (48, W)
        assert np.abs(full - ref).max() <= 1 / 512 + 1e-6
        np.testing.assert_array_equal(full > 0, ref > 0)


def test_missing_camera_frame_used_the_default_camera(processed):
    out, _ = processed
    npy = np.load(out / "val/frankfurt/frankfurt_000000_000001.npy")
    _, _, baseline, fx = CITIES["frankfurt"]
    ref = reference_depth(baseline, fx, decode=(0.2, 120.0))  # data.baseline / focal_length
    own = reference_depth(baseline, fx)
    assert (ref > 0).sum() > 1000 and np.abs(ref - own).max() > 1.0  # the camera matters
    rows = np.floor((np.arange(32) + 0.5) * 48 / 32).astype(int)
    cols = np.floor((np.arange(64) + 0.5) * W / 64).astype(int)
    np.testing.assert_allclose(npy, ref[rows][:, cols], rtol=1e-6)


def test_full_resolution_scoring_on_the_tree(processed):
    out, _ = processed
    ds = DepthDataset(out, "test")
    gts = [load_depth_png(gt_path(png)) for png, _ in ds.items]
    rng = np.random.default_rng(1)
    # A prediction at the model's 32 x 64 resolution: the truth, off by 20 % and noisy.
    pred = np.stack([ds.load(i)[1] for i in range(len(ds))]) * 1.2
    pred = np.where(pred > 0, pred, 30.0) * rng.uniform(0.9, 1.1, pred.shape)
    scorer = Scorer(EvaluationConfig(), 1e-3, 80.0)
    scorer.update_full(torch.from_numpy(pred)[:, None], gts)
    got = scorer.compute("test")
    up = np.stack([bilinear_reference(p, g.shape) for p, g in zip(pred, gts, strict=True)])
    gt = np.stack(gts).astype(np.float64)
    ref = compute_depth_metrics(up, gt, 1e-3, 80.0)
    scaled = manydepth_reference(up, gt, 1e-3, 80.0)
    for k, v in ref.items():
        assert got[f"test_{k}"] == pytest.approx(v, rel=1e-9), k
        assert got[f"test_median_scaled_{k}"] == pytest.approx(scaled[k], rel=1e-9), k
    assert got["test_median_scaled_abs_rel"] < got["test_abs_rel"]
