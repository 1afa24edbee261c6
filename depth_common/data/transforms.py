"""Image and depth resizing/normalisation shared by training, evaluation, serving and the demo.

:func:`prepare_image` is **the** model-input function: every caller (dataset, evaluation,
serving client, demo) goes through it so that the network always sees the same pixels. It only
needs numpy and PIL, so a thin client can import it without torch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# ImageNet statistics (RGB, on 0..1 pixel values): what timm's ViTs were trained with.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Normalisation folded into one multiply-add on 0..255 values: (x/255 - mean)/std.
_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_SHIFT = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def _as_size(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"size: expected positive (height, width) in pixels, got {size}")
    return h, w


def prepare_image(
    image: Image.Image | np.ndarray, size: int | tuple[int, int] | list[int]
) -> np.ndarray:
    """RGB image → model input: float32 array (3, H, W), ImageNet-normalised.

    ``image`` is a PIL image (any mode; converted to RGB) or a uint8 array (h, w, 3).
    ``size`` is the target (height, width) in pixels (an int means square); the image is
    resized with bicubic interpolation only when its size differs.
    """
    h, w = _as_size(size)
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        if image.size != (w, h):
            image = image.resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(image)
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"image: expected a uint8 array (height, width, 3), got {image.dtype} {image.shape}"
            )
        arr = image
        if arr.shape[:2] != (h, w):
            arr = np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BICUBIC))
    else:
        raise TypeError(f"image: expected a PIL image or a uint8 numpy array, got {type(image)}")
    out = arr.astype(np.float32) * _SCALE + _SHIFT  # (H, W, 3)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def denormalize_image(chw: np.ndarray) -> np.ndarray:
    """Inverse of :func:`prepare_image`'s normalisation: (3, H, W) float → uint8 (H, W, 3)."""
    hwc = np.asarray(chw, dtype=np.float32).transpose(1, 2, 0)
    return np.clip(np.rint((hwc - _SHIFT) / _SCALE), 0, 255).astype(np.uint8)


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source index of each of ``dst`` output pixels under pixel-centre nearest sampling.

    Output pixel ``i`` covers source coordinate ``(i + 0.5) * src / dst``; the same rule as
    PIL's NEAREST, so resizing depth and disparity never mixes neighbouring values.
    """
    idx = np.floor((np.arange(dst) + 0.5) * (src / dst)).astype(np.int64)
    return np.clip(idx, 0, src - 1)


def resize_depth_nearest(depth: np.ndarray, size: int | tuple[int, int] | list[int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D map (depth in metres, or raw disparity) to (H, W).

    Values are copied, never interpolated (interpolating across an invalid 0 or an object edge
    would invent depths). Any dtype is kept.
    """
    if not isinstance(depth, np.ndarray) or depth.ndim != 2:
        raise ValueError(
            f"depth: expected a 2-D array (H, W), got {getattr(depth, 'shape', depth)}"
        )
    h, w = _as_size(size)
    if depth.shape == (h, w):
        return depth
    rows = nearest_indices(depth.shape[0], h)
    cols = nearest_indices(depth.shape[1], w)
    return depth[rows[:, None], cols[None, :]]
