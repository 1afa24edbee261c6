"""Image files → depth maps: a colourised PNG and a float32 ``.npy`` in metres per image.

Both are at the *original* image size (upright: the EXIF orientation applied): each file is
decoded with :func:`depth_common.serving.codec.load_rgb` (the loader the serving path uses),
the model runs at its trained ``img_size`` (through
:func:`depth_common.data.transforms.prepare_image`, the one preprocessing function) and the
prediction is resized back bilinearly. Depth follows the camera as in the serving path
(:mod:`depth_common.serving.camera`): the focal is ``focal_px`` if given, else the file's EXIF
35 mm equivalent, else the model's canonical field of view; ``points`` writes a coloured PLY.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from depth_common.atomic import write_bytes
from depth_common.data.io import save_npy, save_png
from depth_common.data.transforms import prepare_image
from depth_common.evaluation.viz import colorize_depth
from depth_common.model.checkpoint import model_from_checkpoint
from depth_common.serving.camera import (
    CanonicalCamera,
    back_project,
    check_focal,
    encode_ply,
    exif_focal_35mm,
    resolve_focal,
    scale_depth,
)
from depth_common.serving.codec import DEFAULT_MAX_PIXELS, load_rgb, resize_depth_bilinear
from depth_common.serving.confidence import confidence_from_mirror, encode_confidence_png


def checkpoint_camera(ckpt: dict, img_size: tuple[int, int]) -> CanonicalCamera:
    """The canonical camera a checkpoint's depth is for (``canonical_focal_px`` at the model
    input width); a checkpoint without one was trained on the Cityscapes rig's field of view."""
    focal = ckpt.get("canonical_focal_px")
    if focal is None:
        return CanonicalCamera.cityscapes(int(img_size[1]))
    return CanonicalCamera(float(focal), int(img_size[1]))


def _model_depth(
    model: torch.nn.Module, x: torch.Tensor, size: tuple[int, int], mirror: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's depth (H, W) at the image's ``size`` and, with ``mirror``, the confidence
    from the image and its mirror, run as one batch of two."""
    pred = model(torch.cat([x, x.flip(-1)]) if mirror else x).float()
    depth = F.interpolate(pred[:1], size=size, mode="bilinear", align_corners=False)
    depth = depth[0, 0].clamp(min=0).cpu().numpy().astype(np.float32)
    if not mirror:
        return depth, None
    a, b = pred[0, 0].cpu().numpy(), pred[1, 0].cpu().numpy()
    return depth, resize_depth_bilinear(confidence_from_mirror(a, b), size)


@torch.no_grad()
def predict_files(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    device: str | torch.device | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    focal_px: float | None = None,
    points: str | Path | None = None,
    confidence: bool = False,
) -> list[Path]:
    """Predict depth for each image → ``out_dir/<stem>_depth.png`` and ``<stem>_depth.npy``.

    Returns the written paths, PNG then ``.npy`` for each image in order. The PNG uses the
    inferno map from 0 m to the image's 99th-percentile predicted depth. Two inputs with the
    same file stem are refused (their outputs would overwrite each other); an unreadable or
    oversize image (over ``max_pixels``) raises :class:`~depth_common.errors.DataError`.
    ``focal_px`` (pixels of the upright image) applies to every image; ``points`` (one image
    only) is the path of a binary PLY of the coloured points (metres, X right, Y down,
    Z forward), written after the PNG and ``.npy``. ``confidence`` also writes
    ``<stem>_confidence.png`` (8-bit, confidence x 255; :mod:`depth_common.serving.confidence`).
    """

    paths = [Path(p) for p in images]
    stems = [p.stem for p in paths]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise ValueError(f"images: several inputs share the file stem(s) {dupes}; rename them")
    if points is not None and len(paths) != 1:
        raise ValueError(f"points: one PLY path takes one image, got {len(paths)} images")
    if focal_px is not None:
        focal_px = check_focal(focal_px, "--focal-px")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, ckpt = model_from_checkpoint(checkpoint, map_location=dev)
    camera = checkpoint_camera(ckpt, model.img_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for path in paths:
        rgb = load_rgb(path, max_pixels=max_pixels)
        x = torch.from_numpy(prepare_image(rgb, model.img_size)).unsqueeze(0).to(dev)
        h, w = rgb.shape[:2]
        depth, conf = _model_depth(model, x, (h, w), confidence)
        f35 = exif_focal_35mm(path.read_bytes()) if focal_px is None else None
        focal, _ = resolve_focal(focal_px, f35, (h, w), camera)
        depth = scale_depth(depth, camera.depth_scale(focal, w))
        color = rgb
        vmax = float(np.percentile(depth, 99)) or 1.0
        rgb = colorize_depth(depth, 0.0, vmax, invalid=np.zeros(depth.shape, bool))
        written.append(save_png(out_dir / f"{path.stem}_depth.png", rgb))
        written.append(save_npy(out_dir / f"{path.stem}_depth.npy", depth))
        if conf is not None:
            png = encode_confidence_png(conf)
            written.append(write_bytes(out_dir / f"{path.stem}_confidence.png", png))
        if points is not None:
            Path(points).parent.mkdir(parents=True, exist_ok=True)
            written.append(write_bytes(points, encode_ply(back_project(depth, focal), color)))
    return written
