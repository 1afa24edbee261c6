"""DepthDataset / build_dataloader: the reference data tests, paired augmentation checked on a
scene whose pixels say where they came from, training splits merged, bad stored values."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from depth_common.config import AugmentationConfig
from depth_common.data import prepare_image
from depth_common.data.dataset import DepthDataset, augment_pair, build_dataloader, read_manifest
from depth_common.data.preprocess import MANIFEST
from depth_common.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize_image
from depth_common.errors import DataError

H, W = 64, 128
NO_JITTER = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)


def test_dataset_length(processed_data):
    for split in ("train", "val", "test"):
        assert len(DepthDataset(processed_data, split)) == 8  # 2 cities x 4 images


def test_dataset_item_shapes(processed_data):
    ds = DepthDataset(processed_data, "val")
    image, depth = ds[5]
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    assert depth.shape == (1, H, W) and depth.dtype == torch.float32
    lo = torch.tensor((0 - IMAGENET_MEAN) / IMAGENET_STD)[:, None, None]
    hi = torch.tensor((1 - IMAGENET_MEAN) / IMAGENET_STD)[:, None, None]
    assert torch.all(image >= lo - 1e-5) and torch.all(image <= hi + 1e-5)
    assert depth.min() >= 0 and depth.max() <= 80.0 and (depth > 0).float().mean() > 0.5
    # Exactly the stored files through the one preprocessing function.
    png, npy = ds.items[5]
    np.testing.assert_array_equal(image.numpy(), prepare_image(Image.open(png), (H, W)))
    np.testing.assert_array_equal(depth[0].numpy(), np.load(npy))


def test_dataloader_batching(processed_data, demo_params):
    params = demo_params.with_overrides(("data.batch_size=3",))
    val = build_dataloader(processed_data, "val", params, train=False)
    shapes = [(tuple(x.shape), tuple(y.shape)) for x, y in val]
    assert shapes == [((3, 3, H, W), (3, 1, H, W))] * 2 + [((2, 3, H, W), (2, 1, H, W))]
    # Evaluation order is the dataset's; training shuffles, reproducibly by training.seed.
    ds = DepthDataset(processed_data, "val")
    first = next(iter(val))[1]
    assert torch.equal(first[1, 0], torch.from_numpy(ds.load(1)[1]))

    def train_batches(p):
        return torch.cat([y for _, y in build_dataloader(processed_data, "train", p, train=True)])

    a, b = train_batches(params), train_batches(params)
    assert torch.equal(a, b)
    c = train_batches(params.with_overrides(("training.seed=7",)))
    assert not torch.equal(a, c)


def test_dataloader_workers(processed_data, demo_params):
    params = demo_params.with_overrides(("data.num_workers=2", "data.batch_size=4"))
    loader = build_dataloader(processed_data, "train", params, train=True)
    assert loader.persistent_workers and loader.num_workers == 2
    assert loader.worker_init_fn is not None and not loader.drop_last
    epochs = [torch.cat([y for _, y in loader]) for _ in range(2)]
    assert epochs[0].shape == (8, 1, H, W)
    assert not torch.equal(epochs[0], epochs[1])  # new shuffle/augmentation each epoch


def test_augmentation_shapes(processed_data, demo_params):
    aug = DepthDataset(processed_data, "train", demo_params.augmentation, seed=1)
    plain = DepthDataset(processed_data, "train")
    changed = 0
    for i in range(len(aug)):
        image, depth = aug[i]
        ref_image, ref_depth = plain[i]
        assert image.shape == (3, H, W) and image.dtype == torch.float32
        assert depth.shape == (1, H, W) and depth.dtype == torch.float32
        # Nearest resampling only ever copies stored depths (no value is invented).
        assert np.isin(depth.numpy(), ref_depth.numpy()).all()
        changed += not torch.equal(image, ref_image)
    assert changed >= len(aug) - 1


@pytest.fixture()
def coded_scene(processed_data, tmp_path):
    """A copy of the processed set whose first train item encodes position in its pixels:
    red = column, green = row (scaled to 0..255), depth = 1 + column + 1000 * row."""
    root = tmp_path / "coded"
    shutil.copytree(processed_data, root)
    ds = DepthDataset(root, "train")
    png, npy = ds.items[0]
    rows, cols = np.mgrid[0:H, 0:W]
    rgb = np.stack(
        [np.rint(cols * 255 / (W - 1)), np.rint(rows * 255 / (H - 1)), np.full((H, W), 128)], -1
    ).astype(np.uint8)
    Image.fromarray(rgb).save(png)
    np.save(npy, (1 + cols + 1000 * rows).astype(np.float32))
    return root


def _decode(image: torch.Tensor, depth: torch.Tensor):
    rgb = denormalize_image(image.numpy()).astype(np.float64)
    d = depth[0].numpy().astype(np.int64) - 1
    return (rgb[..., 0] * (W - 1) / 255, rgb[..., 1] * (H - 1) / 255), (d % 1000, d // 1000)


def test_flip_applies_to_image_and_depth_alike(coded_scene):
    cfg = AugmentationConfig(hflip_prob=1.0, crop_prob=0.0, **NO_JITTER)
    image, depth = DepthDataset(coded_scene, "train", cfg)[0]
    (x_img, y_img), (x_dep, y_dep) = _decode(image, depth)
    np.testing.assert_array_equal(x_dep, np.arange(W)[::-1][None].repeat(H, 0))
    np.testing.assert_allclose(x_img, x_dep, atol=0.6)
    np.testing.assert_allclose(y_img, y_dep, atol=0.6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crop_applies_to_image_and_depth_alike(coded_scene, seed):
    cfg = AugmentationConfig(hflip_prob=0.5, crop_prob=1.0, crop_scale=(0.3, 0.6), **NO_JITTER)
    image, depth = DepthDataset(coded_scene, "train", cfg, seed=seed)[0]
    (x_img, y_img), (x_dep, y_dep) = _decode(image, depth)
    # A real zoom: fewer than 80% of the columns/rows survive, each repeated.
    assert np.unique(x_dep).size < 0.8 * W and np.unique(y_dep).size < 0.8 * H
    # Bicubic RGB vs nearest depth disagree by at most about one source pixel, away from the
    # border where bicubic clamps (the mapping would differ by tens of pixels otherwise).
    inner = (slice(3, -3), slice(3, -3))
    assert np.abs(x_img - x_dep)[inner].max() <= 1.0
    assert np.abs(y_img - y_dep)[inner].max() <= 1.0


def test_colour_jitter_leaves_depth_alone(coded_scene):
    cfg = AugmentationConfig(hflip_prob=0.0, crop_prob=0.0)
    ds_aug, ds = DepthDataset(coded_scene, "train", cfg, seed=3), DepthDataset(coded_scene, "train")
    image, depth = ds_aug[0]
    ref_image, ref_depth = ds[0]
    assert torch.equal(depth, ref_depth)
    assert (image - ref_image).abs().max() > 0.05


def test_missing_or_incomplete_preprocessed_dir(processed_data, tmp_path):
    with pytest.raises(DataError, match=r"manifest\.json.*not a complete preprocessed"):
        DepthDataset(tmp_path, "train")
    root = tmp_path / "copy"
    shutil.copytree(processed_data, root)
    with pytest.raises(DataError, match="no split 'extra'"):
        DepthDataset(root, "extra")
    victim = next((root / "test").rglob("*.npy"))
    victim.unlink()
    with pytest.raises(DataError, match=f"{victim.name}.*missing"):
        DepthDataset(root, "test")
    (root / MANIFEST).write_text("{}")
    with pytest.raises(DataError, match="format"):
        read_manifest(root)


def test_dataloader_refuses_data_preprocessed_at_another_size(processed_data, demo_params):
    other = demo_params.with_overrides(["data.img_size=[32,64]"])
    with pytest.raises(
        DataError, match=r"preprocessed at img_size \[64, 128\].*data.img_size is \[32, 64\]"
    ):
        build_dataloader(processed_data, "train", other, train=True)


def test_non_finite_depth_is_an_error_naming_the_file(processed_data, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(processed_data, root)
    ds = DepthDataset(root, "val")
    png, npy = ds.items[2]
    depth = np.load(npy)
    depth[3, 4], depth[5, 6] = np.nan, np.inf
    np.save(npy, depth)
    with pytest.raises(DataError, match=rf"{npy.name}: 2 non-finite depth value"):
        ds[2]
    assert torch.isfinite(ds[1][1]).all()  # the other items still load


def test_train_splits_are_merged_into_training(synthetic_raw, tmp_path, demo_params):
    from depth_common.data.preprocess import preprocess_dataset

    raw = tmp_path / "raw"
    shutil.copytree(synthetic_raw, raw)
    for kind in ("leftImg8bit", "disparity", "camera"):  # train_extra: a copy of val here
        shutil.copytree(raw / kind / "val", raw / kind / "train_extra")
    cfg = demo_params.with_overrides(
        [
            "data.splits=[train, train_extra, val, test]",
            "data.train_splits=[train, train_extra]",
        ]
    ).data
    manifest = preprocess_dataset(raw, tmp_path / "out", cfg, progress=False)
    assert manifest["train_splits"] == ["train", "train_extra"]
    assert manifest["counts"] == {"train": 8, "train_extra": 8, "val": 8, "test": 8}
    assert manifest["full_resolution_gt"]["splits"] == ["val", "test"]
    train = DepthDataset(tmp_path / "out", "train")
    assert len(train) == 16
    assert [p.parts[-3] for p, _ in train.items] == ["train"] * 8 + ["train_extra"] * 8
    assert len(DepthDataset(tmp_path / "out", "train_extra")) == 8


# -- the canonical camera ----------------------------------------------------------------------


def test_manifest_focal_is_the_camera_json_fx_at_the_processed_width(processed_data, synthetic_raw):
    import json

    manifest = read_manifest(processed_data)
    for split in ("train", "val"):
        for frame, focal in zip(
            manifest["frames"][split], manifest["focal_px"][split], strict=True
        ):
            city, frame_id = frame.split("/")
            cam = json.loads(
                (synthetic_raw / "camera" / split / city / f"{frame_id}_camera.json").read_text()
            )
            with Image.open(
                synthetic_raw / "leftImg8bit" / split / city / f"{frame_id}_leftImg8bit.png"
            ) as raw:
                width = raw.width
            assert focal == pytest.approx(cam["intrinsic"]["fx"] * W / width, rel=1e-6)


def test_canonical_targets_are_depth_times_canonical_over_the_frame_focal(processed_data):
    plain = DepthDataset(processed_data, "val")
    canonical = DepthDataset(processed_data, "val", canonical_focal_px=50.0)
    assert canonical.focals[0] == pytest.approx(2262.52 * W / 2048)  # the Cityscapes FoV
    for i in (0, 7):
        want = plain.load(i)[1].astype(np.float64) * 50.0 / canonical.focals[i]
        np.testing.assert_array_equal(canonical[i][1][0].numpy(), want.astype(np.float32))


def test_a_resized_crop_zooms_the_focal(processed_data):
    cfg = AugmentationConfig(hflip_prob=0.0, crop_prob=1.0, crop_scale=(0.25, 0.25), **NO_JITTER)
    aug = DepthDataset(processed_data, "train", cfg, seed=3, canonical_focal_px=50.0)
    rgb, depth = aug.load(2)
    _, cropped, zoom = augment_pair(rgb, depth, cfg, aug.item_rng(0, 2))
    assert zoom == pytest.approx(W / round(W * 0.5))  # half the width: the focal doubles
    want = cropped.astype(np.float64) * 50.0 / (aug.focals[2] * zoom)
    np.testing.assert_array_equal(aug[2][1][0].numpy(), want.astype(np.float32))


def test_a_manifest_without_focals_is_refused_naming_the_key(processed_data, tmp_path):
    import json

    root = tmp_path / "copy"
    shutil.copytree(processed_data, root)
    manifest = json.loads((root / MANIFEST).read_text())
    del manifest["focal_px"]["val"]
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"focal_px\.val is missing"):
        DepthDataset(root, "val")
