"""Torch ``Dataset``/``DataLoader`` over a preprocessed directory (see ``data.preprocess``).

Items are ``(image, depth)``: the image ImageNet-normalised by :func:`prepare_image` (float32
3xHxW), the depth in metres (float32 1xHxW, 0 = invalid). With ``canonical_focal_px`` the depth
is for the canonical camera (Metric3D's canonical-camera transform): times
``canonical_focal_px / f``, ``f`` the frame's horizontal focal at the model input (from the
manifest) times the zoom of the random resized crop. Train-time augmentation draws one set
of random numbers per item and applies the same flip and crop to image and depth (nearest for
depth, so no depth is invented across an edge or an invalid pixel); colour jitter touches the
image only.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from torchvision.transforms.v2 import functional as TF

from depth_common.config import AugmentationConfig, Params
from depth_common.data.cityscapes import canonical_focal_px, open_image
from depth_common.data.convert import load_depth_npy
from depth_common.data.preprocess import FORMAT, MANIFEST
from depth_common.data.samplers import train_sampler
from depth_common.data.transforms import prepare_image, resize_depth_nearest
from depth_common.errors import DataError


def read_manifest(processed_dir: str | Path) -> dict[str, Any]:
    """The manifest of a complete preprocessed directory (``DataError`` if absent or invalid)."""
    path = Path(processed_dir) / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{path}: no manifest, so {processed_dir} is not a complete preprocessed dataset "
            "(expected the output of `python -m depth_common preprocess`; an interrupted run "
            "leaves no manifest)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: expected a manifest with format {FORMAT!r}")
    for key in ("frames", "counts", "params"):
        if key not in manifest:
            raise DataError(f"{path}: manifest has no '{key}' (expected format {FORMAT})")
    return manifest


def check_img_size(processed_dir: str | Path, img_size: tuple[int, int]) -> None:
    """Fail early, naming both sides, when data was preprocessed at another ``data.img_size``
    (the model is built for ``img_size``; the encoder would otherwise fail mid-forward)."""
    made = tuple(read_manifest(processed_dir)["params"].get("img_size", ()))
    if made != tuple(img_size):
        raise DataError(
            f"{Path(processed_dir) / MANIFEST}: preprocessed at img_size {list(made)}, but "
            f"data.img_size is {list(img_size)}: preprocess again with this data.img_size, or "
            "set data.img_size to match"
        )


def split_parts(manifest: dict[str, Any], split: str, root: Path) -> list[str]:
    """The manifest splits that make up ``split``: ``train`` is every split of the manifest's
    ``train_splits`` (e.g. train + train_extra), any other split is itself."""
    parts = (manifest.get("train_splits") or ["train"]) if split == "train" else [split]
    missing = [p for p in parts if not manifest["frames"].get(p)]
    if missing:
        raise DataError(
            f"{root / MANIFEST}: no split '{missing[0]}' (has: "
            f"{', '.join(manifest['frames']) or 'none'})"
        )
    return parts


def augment_pair(
    rgb: np.ndarray, depth: np.ndarray, cfg: AugmentationConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, float]:
    """Random flip + resized crop (same for both) and colour jitter (image only).

    ``rgb`` uint8 (H, W, 3), ``depth`` float32 (H, W) metres; outputs keep (H, W). The crop
    keeps the image's aspect ratio (area fraction drawn from ``cfg.crop_scale``) so scene
    geometry is zoomed, not sheared; RGB is resampled bicubic, depth nearest. The third
    value is the zoom, ``W / crop width`` (1 without a crop): the factor on the focal.
    """
    h, w = depth.shape
    zoom = 1.0
    if rng.random() < cfg.hflip_prob:
        rgb, depth = rgb[:, ::-1], depth[:, ::-1]
    if rng.random() < cfg.crop_prob:
        side = float(np.sqrt(rng.uniform(*cfg.crop_scale)))
        ch, cw = max(1, round(h * side)), max(1, round(w * side))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        box = (left, top, left + cw, top + ch)
        rgb = np.array(
            Image.fromarray(np.ascontiguousarray(rgb)).resize(
                (w, h), Image.Resampling.BICUBIC, box=box
            )
        )
        depth = resize_depth_nearest(depth[top : top + ch, left : left + cw], (h, w))
        zoom = w / cw
    jitters = []
    if cfg.brightness > 0:
        f = rng.uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness)
        jitters.append(lambda t, f=f: TF.adjust_brightness(t, f))
    if cfg.contrast > 0:
        f = rng.uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast)
        jitters.append(lambda t, f=f: TF.adjust_contrast(t, f))
    if cfg.saturation > 0:
        f = rng.uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation)
        jitters.append(lambda t, f=f: TF.adjust_saturation(t, f))
    if cfg.hue > 0:
        f = rng.uniform(-cfg.hue, cfg.hue)
        jitters.append(lambda t, f=f: TF.adjust_hue(t, f))
    if jitters:
        t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
        for i in rng.permutation(len(jitters)):  # random order, as torchvision's ColorJitter
            t = jitters[i](t)
        rgb = t.permute(1, 2, 0).numpy()
    return np.ascontiguousarray(rgb), np.ascontiguousarray(depth), zoom


class DepthDataset(Dataset):
    """``(image float32 3xHxW normalised, depth float32 1xHxW metres)`` for one split.

    ``augmentation=None`` gives the stored pixels (deterministic: validation, test). With an
    ``AugmentationConfig`` each item's random draws come from a generator seeded with
    (``seed``, epoch, index): the dataset takes ``(epoch, index)`` keys (what
    :class:`~depth_common.data.samplers.EpochSampler` yields) or a plain index (epoch 0). No
    generator state is carried from item to item, so an item's augmentation is the same in
    any DataLoader worker, with any number of workers, and after a resume.
    """

    def __init__(
        self,
        processed_dir: str | Path,
        split: str,
        augmentation: AugmentationConfig | None = None,
        seed: int = 0,
        canonical_focal_px: float | None = None,
    ) -> None:
        self.root = Path(processed_dir)
        manifest = read_manifest(self.root)
        self.split = split
        self.size: tuple[int, int] = tuple(manifest["params"]["img_size"])  # type: ignore[assignment]
        parts = split_parts(manifest, split, self.root)
        self.items = [
            (self.root / part / f"{f}.png", self.root / part / f"{f}.npy")
            for part in parts
            for f in manifest["frames"][part]
        ]
        #: Each item's horizontal focal (pixels) at the model input.
        self.focals = frame_focals(manifest, parts, self.root)
        self.canonical_focal_px = canonical_focal_px
        for png, npy in self.items:
            for p in (png, npy):
                if not p.is_file():
                    raise DataError(
                        f"{p}: listed in {self.root / MANIFEST} but missing (expected a complete "
                        "preprocessed set; rerun preprocessing)"
                    )
        self.augmentation = augmentation
        self.seed = int(seed) % 2**63  # SeedSequence entropy must be >= 0

    def item_rng(self, epoch: int, index: int) -> np.random.Generator:
        """The augmentation generator of item ``index`` in ``epoch``."""
        return np.random.default_rng([self.seed, int(epoch), int(index)])

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Stored pixels of item ``index``: RGB uint8 (H, W, 3) and depth float32 (H, W)."""
        png, npy = self.items[index]
        with open_image(png, "processed RGB image") as img:
            rgb = np.array(img.convert("RGB"))  # writable: torch.from_numpy needs it
        depth = load_depth_npy(npy)  # non-finite values: DataError naming the file
        if depth.shape != self.size or rgb.shape[:2] != self.size or depth.dtype != np.float32:
            raise DataError(
                f"{npy}: expected float32 depth and RGB of {self.size}, got depth "
                f"{depth.dtype} {depth.shape} and RGB {rgb.shape}"
            )
        return rgb, depth

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rgb, depth = self.load(index)
        zoom = 1.0
        if self.augmentation is not None:
            rng = self.item_rng(epoch, index)
            rgb, depth, zoom = augment_pair(rgb, depth, self.augmentation, rng)
        if self.canonical_focal_px is not None:
            # float64 product, one rounding: 0 (invalid) stays 0.
            scale = self.canonical_focal_px / (self.focals[index] * zoom)
            depth = (depth.astype(np.float64) * scale).astype(np.float32)
        image = prepare_image(rgb, self.size)
        return torch.from_numpy(image), torch.from_numpy(np.ascontiguousarray(depth)[None])


def frame_focals(manifest: dict[str, Any], parts: list[str], root: Path) -> list[float]:
    """The manifest's per-frame focal (pixels at ``img_size``) for the frames of ``parts``."""
    focals = []
    for part in parts:
        values = manifest.get("focal_px", {}).get(part)
        if not isinstance(values, list) or len(values) != len(manifest["frames"][part]):
            raise DataError(
                f"{root / MANIFEST}: focal_px.{part} is missing or does not list one focal per "
                f"frame (format {FORMAT}; preprocess again)"
            )
        focals.extend(float(v) for v in values)
    return focals


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed the worker's global numpy/random generators from
    torch's per-worker seed (distinct and reproducible), for code that draws from them; the
    dataset's own augmentation is keyed by (seed, epoch, index) instead."""
    info = get_worker_info()
    seed = info.seed if info is not None else torch.initial_seed()
    np.random.seed(seed % 2**32)
    random.seed(seed)


def dataset_for(
    processed_dir: str | Path, split: str, params: Params, train: bool, *, canonical: bool = False
) -> DepthDataset:
    """The split's dataset (augmented when ``train``), after checking its ``img_size``.

    ``canonical``: targets for the canonical camera when ``data.camera_aware`` (training and
    validation); evaluation keeps metres and scales the prediction instead.
    """
    check_img_size(processed_dir, params.data.img_size)
    augmentation = params.augmentation if train else None
    focal = canonical_focal_for(params) if canonical else None
    return DepthDataset(
        processed_dir, split, augmentation, seed=params.training.seed, canonical_focal_px=focal
    )


def canonical_focal_for(params: Params) -> float | None:
    """The canonical focal (pixels at the model input width) a model trained with ``params``
    predicts depth for; None for a camera-blind model (``data.camera_aware: false``)."""
    if not params.data.camera_aware:
        return None
    return canonical_focal_px(params.data.img_size[1])


def loader_for(
    dataset: DepthDataset, params: Params, train: bool, sampler: Sampler | None = None
) -> DataLoader:
    """A DataLoader over ``dataset`` with ``data.batch_size`` / ``data.num_workers``.

    ``train`` without a ``sampler`` shuffles with :func:`~depth_common.data.samplers.
    train_sampler` (a permutation of (``training.seed``, epoch), this rank's share of it).
    Workers persist across epochs (the epoch travels with each sampled key); memory is pinned
    when batches go to CUDA.
    """
    if train and sampler is None:
        sampler = train_sampler(len(dataset), seed=params.training.seed)
    workers = params.data.num_workers
    generator = torch.Generator()
    generator.manual_seed(params.training.seed)
    return DataLoader(
        dataset,
        batch_size=params.data.batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=False,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available() and params.training.device != "cpu",
        worker_init_fn=seed_worker if workers > 0 else None,
        generator=generator,
    )


def build_dataloader(
    processed_dir: str | Path,
    split: str,
    params: Params,
    train: bool,
    sampler: Sampler | None = None,
) -> DataLoader:
    """:func:`loader_for` over :func:`dataset_for`: ``train`` turns on augmentation
    (``params.augmentation``) and shuffling (unless a ``sampler`` is given)."""
    return loader_for(dataset_for(processed_dir, split, params, train), params, train, sampler)
