"""Data: Cityscapes discovery and disparity → depth, preprocessing, the torch Dataset.

Importing this package needs only numpy and PIL; the torch parts (``DepthDataset``,
``build_dataloader``, ``read_manifest``) load on first use, so a serving client can use
``prepare_image`` without torch.
"""

from __future__ import annotations

from typing import Any

from depth_common.data.cityscapes import (
    CameraIntrinsics,
    Sample,
    disparity_to_depth,
    read_camera,
)
from depth_common.data.discovery import detect_layout, discover
from depth_common.data.preprocess import preprocess_dataset
from depth_common.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    prepare_image,
    resize_depth_nearest,
)

_LAZY = {"DepthDataset", "build_dataloader", "read_manifest", "augment_pair", "seed_worker"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from depth_common.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'depth_common.data' has no attribute {name!r}")


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CameraIntrinsics",
    "Sample",
    "detect_layout",
    "discover",
    "disparity_to_depth",
    "prepare_image",
    "preprocess_dataset",
    "read_camera",
    "resize_depth_nearest",
    *sorted(_LAZY),
]
