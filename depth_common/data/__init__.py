"""Data: Cityscapes discovery and disparity → depth, preprocessing, the torch Dataset.

Importing this package needs only numpy and PIL, so a serving client can use
``prepare_image`` without torch; the torch parts (``DepthDataset``, ``build_dataloader``,
``read_manifest``) are imported from ``depth_common.data.dataset``.
"""

from __future__ import annotations

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
]
