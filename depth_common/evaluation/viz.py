"""Depth colour maps (inferno) and a labelled colour bar, shared by reports, predict and demos.

Only numpy and PIL at call time plus matplotlib's inferno table, read once (importing
matplotlib takes about 0.3 s).
"""

from __future__ import annotations

# matplotlib is imported where its colormap is read (once, cached): the serving predict and
# demo paths that import this module for colorize load it only when they draw.
import base64
import functools
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Colour of invalid pixels (ground truth 0 / NaN): neutral grey, outside the inferno range.
INVALID_RGB = (128, 128, 128)


@functools.cache
def _inferno_lut() -> np.ndarray:
    from matplotlib import colormaps

    rgba = colormaps["inferno"](np.linspace(0.0, 1.0, 256))
    return np.rint(rgba[:, :3] * 255).astype(np.uint8)  # (256, 3)


def colorize_depth(
    depth: np.ndarray,
    vmin: float | None = None,
    vmax: float | None = None,
    invalid: np.ndarray | None = None,
) -> np.ndarray:
    """Depth (H, W) in metres → uint8 (H, W, 3), inferno: near is dark, far is bright.

    ``vmin``/``vmax`` (metres) fix the scale so several maps can share it; by default the
    1st/99th percentiles of the finite, positive values. Pixels in ``invalid`` (default:
    non-finite or <= 0) are drawn grey.
    """
    d = np.asarray(depth, dtype=np.float32)
    if d.ndim == 3 and d.shape[0] == 1:
        d = d[0]
    if d.ndim != 2:
        raise ValueError(f"depth: expected (H, W) or (1, H, W), got shape {d.shape}")
    bad = ~np.isfinite(d) | (d <= 0) if invalid is None else np.asarray(invalid, dtype=bool)
    good = d[~bad]
    if vmin is None:
        vmin = float(np.percentile(good, 1)) if good.size else 0.0
    if vmax is None:
        vmax = float(np.percentile(good, 99)) if good.size else 1.0
    span = max(float(vmax) - float(vmin), 1e-6)
    t = np.clip((np.nan_to_num(d, nan=vmin) - vmin) / span, 0.0, 1.0)
    rgb = _inferno_lut()[np.rint(t * 255).astype(np.intp)]
    rgb[bad] = INVALID_RGB
    return rgb


def colorbar(
    vmin: float, vmax: float, *, width: int = 256, height: int = 14, ticks: int = 5
) -> np.ndarray:
    """A horizontal inferno colour bar with tick labels in metres → uint8 (h, width, 3)."""
    bar = colorize_depth(
        np.tile(np.linspace(vmin, vmax, width, dtype=np.float32), (height, 1)),
        vmin,
        vmax,
        invalid=np.zeros((height, width), bool),
    )
    label_h = 14
    canvas = Image.new("RGB", (width + 40, height + label_h + 2), (255, 255, 255))
    canvas.paste(Image.fromarray(bar), (20, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i in range(ticks):
        frac = i / max(1, ticks - 1)
        x = 20 + round(frac * (width - 1))
        draw.line([(x, height), (x, height + 2)], fill=(0, 0, 0))
        text = f"{vmin + frac * (vmax - vmin):.1f}"
        tw = draw.textlength(text, font=font)
        draw.text((x - tw / 2, height + 2), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def png_bytes(rgb: np.ndarray) -> bytes:
    """uint8 (H, W, 3) → PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def png_data_uri(rgb: np.ndarray) -> str:
    """uint8 (H, W, 3) → ``data:image/png;base64,...`` for embedding in HTML."""
    return bytes_data_uri(png_bytes(rgb))


def bytes_data_uri(png: bytes) -> str:
    """PNG bytes (e.g. a chart) → ``data:image/png;base64,...``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
