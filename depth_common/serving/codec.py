"""Images in, depth maps out: the one decoding function and the depth-PNG convention.

:func:`load_rgb` is **the** image loader of the serving path: the transformer, the client, the
demo and the ``predict`` command all turn what they are given (encoded bytes, a file, a PIL
image, an array) into uint8 RGB through it, so a photo gives the same pixels wherever it is
sent. It applies the EXIF orientation, scales 16-bit and float images to 0..255 (a plain
``convert("RGB")`` clips a 16-bit PNG to white and a float TIFF to black), composites alpha over
white, expands palette, CMYK and grayscale images, and refuses empty, truncated, unknown or
oversize images (:class:`ImageDecodeError`, a :class:`~depth_common.errors.DataError` naming the
source). Only a fixed list of Pillow decoders is used: formats whose Pillow plugin runs an
external program (EPS through Ghostscript) or that nothing here needs are never tried.

Depth PNGs follow the KITTI depth-PNG convention: 16-bit grayscale, value = metres x 256
(rounded), 0 = invalid (no prediction, non-finite, or not positive); 255.996 m is the largest
depth it can hold.

numpy and Pillow only (no torch, no tritonclient): the transformer image installs neither.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    PpmImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

from depth_common.errors import ImageDecodeError

#: 50 megapixels: a 48-50 MP phone photo passes; a "decompression bomb" header does not.
DEFAULT_MAX_PIXELS = 50_000_000
#: Pillow decoders tried, in order. JPEG includes MPO, the multi-picture JPEG many phones and
#: cameras write (Pillow opens it through the JPEG decoder).
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF", "PPM")
# Importing a plugin registers its decoder; these are the only ones `Image.open` may use here.
_PLUGINS = (
    JpegImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
    TiffImagePlugin,
    BmpImagePlugin,
    GifImagePlugin,
    PpmImagePlugin,
)
DEPTH_PNG_SCALE = 256.0  # KITTI: uint16 value = metres x 256
_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}

ImageSource = bytes | bytearray | memoryview | str | os.PathLike | Image.Image | np.ndarray


def load_rgb(
    image: ImageSource, *, source: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Any image the serving path accepts → uint8 RGB array (H, W, 3), upright.

    ``image`` is encoded bytes (PNG, JPEG, WebP, TIFF, BMP, GIF, PPM), a file path, a PIL image
    or an array (H, W) / (H, W, 3) / (H, W, 4) of uint8, uint16 or float. ``source`` names it in
    error messages (default: the path, else ``"image"``). ``max_pixels`` bounds width x height
    before any pixel is decoded.
    """
    if isinstance(image, bytes | bytearray | memoryview):
        return _decode_bytes(bytes(image), source or "image", max_pixels)
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"image {path}: no such file") from None
        except OSError as exc:
            raise ImageDecodeError(f"image {path}: cannot read ({exc.strerror})") from exc
        return _decode_bytes(data, source or f"image {path}", max_pixels)
    if isinstance(image, Image.Image):
        _check_pixels(image.size, source or "image", max_pixels)
        return _pil_to_rgb8(image, source or "image")
    if isinstance(image, np.ndarray):
        return _array_to_rgb8(image, source or "image", max_pixels)
    raise TypeError(
        f"{source or 'image'}: expected bytes, a path, a PIL image or a numpy array, "
        f"got {type(image).__name__}"
    )


def _check_pixels(size: tuple[int, int], source: str, max_pixels: int) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"{source}: image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageDecodeError(
            f"{source}: {w}x{h} = {w * h:,} pixels is over the limit of {max_pixels:,} "
            "(a larger limit is a server setting: --max-pixels)"
        )


def _decode_bytes(data: bytes, source: str, max_pixels: int) -> np.ndarray:
    if not data:
        raise ImageDecodeError(f"{source}: empty (0 bytes); expected an encoded image")
    formats = ", ".join(ALLOWED_FORMATS)
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:
            # The header gives the size: refuse before decoding a single pixel.
            _check_pixels(img.size, source, max_pixels)
            img.load()
            return _pil_to_rgb8(img, source)
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"{source}: not a readable image (supported formats: {formats}); got {len(data)} "
            f"bytes starting {data[:8]!r}"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{source}: refused as a decompression bomb ({exc})") from None
    except ImageDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - the bytes are the client's: any failure is theirs
        # Pillow's decoders report corrupt streams with OSError, SyntaxError, ValueError ... and
        # a fuzzed TIFF tag with TypeError: whatever the decoder raises, the image is bad.
        raise ImageDecodeError(
            f"{source}: truncated or corrupt image data ({type(exc).__name__}: {exc})"
        ) from None


def image_size(data: bytes, *, source: str = "image") -> tuple[int, int]:
    """(width, height) of encoded ``data`` from its header alone: no pixel is decoded, so a
    request can be refused for its size before it costs anything. :class:`ImageDecodeError`
    when the bytes are not an image of the allowed formats."""
    if not data:
        raise ImageDecodeError(f"{source}: empty (0 bytes); expected an encoded image")
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:
            return img.size
    except Exception as exc:  # noqa: BLE001 - as in _decode_bytes: the client's bytes
        raise ImageDecodeError(
            f"{source}: not a readable image ({type(exc).__name__}: {exc}); supported "
            f"formats: {', '.join(ALLOWED_FORMATS)}"
        ) from None


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (phones store pixels sideways and say so in EXIF)."""
    try:
        return ImageOps.exif_transpose(img)
    except (OSError, ValueError, KeyError, TypeError, SyntaxError):
        return img  # unreadable EXIF: the stored pixels are all there is to go on


def _pil_to_rgb8(img: Image.Image, source: str) -> np.ndarray:
    img = _upright(img)
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img)
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        return _gray_to_rgb(_scale_to_uint8(np.asarray(img), source))
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        return np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba))[
            ..., :3
        ].copy()
    try:
        return np.asarray(img.convert("RGB"))  # 1, L, P, CMYK, YCbCr, LAB, HSV
    except (ValueError, OSError) as exc:
        raise ImageDecodeError(f"{source}: image mode {mode!r} is not supported ({exc})") from None


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))


def _scale_to_uint8(values: np.ndarray, source: str) -> np.ndarray:
    """uint8 as is; other integers on the 16-bit range (x 255/65535); floats: [0, 1] x 255,
    any other finite range stretched to 0..255 (NaN and inf become 0)."""
    if values.dtype == np.uint8:
        return values
    if np.issubdtype(values.dtype, np.integer) or values.dtype == np.bool_:
        wide = np.clip(values.astype(np.int64), 0, 65535)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)
    if not np.issubdtype(values.dtype, np.floating):
        raise ImageDecodeError(f"{source}: pixel type {values.dtype} is not supported")
    x = values.astype(np.float64)
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros(x.shape, np.uint8)
    lo, hi = float(x[finite].min()), float(x[finite].max())
    if lo < 0.0 or hi > 1.0:
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    x = np.where(finite, x, 0.0)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _array_to_rgb8(arr: np.ndarray, source: str, max_pixels: int) -> np.ndarray:
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ImageDecodeError(
            f"{source}: expected an array (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}"
        )
    _check_pixels((arr.shape[1], arr.shape[0]), source, max_pixels)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        arr = _scale_to_uint8(arr, source)
    if arr.ndim == 2:
        return _gray_to_rgb(arr)
    if arr.shape[2] == 4:
        return _pil_to_rgb8(Image.fromarray(np.ascontiguousarray(arr)), source)
    return np.ascontiguousarray(arr)


# -- depth maps --------------------------------------------------------------------------------


def resize_depth_bilinear(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float32 HxW depth map (metres) to ``size`` = (H, W) pixels, bilinear.

    Bilinear (PIL, mode ``F``) rather than nearest: the prediction is smooth, and nearest would
    show the model's pixel grid when a 224 px map is shown at 1024 px.
    """
    h, w = size
    if depth.shape == (h, w):
        return depth.astype(np.float32, copy=False)
    img = Image.fromarray(np.ascontiguousarray(depth, dtype=np.float32))  # mode F
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def depth_to_png_values(depth: np.ndarray) -> np.ndarray:
    """Metres → uint16 KITTI values: x 256, rounded; 0 only where the depth is invalid."""
    d = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(d) & (d > 0)
    scaled = np.clip(np.rint(np.where(valid, d, 0.0) * DEPTH_PNG_SCALE), 1, 65535)
    return np.where(valid, scaled, 0).astype(np.uint16)


def encode_depth_png(depth: np.ndarray, compress_level: int = 1) -> bytes:
    """HxW depth (metres) → 16-bit grayscale PNG bytes (metres x 256, 0 = invalid).

    ``compress_level`` 1: the map is sent once, encoding speed matters more than bytes.
    """
    if depth.ndim != 2:
        raise ValueError(f"depth: expected a 2-D map (H, W), got shape {depth.shape}")
    buf = io.BytesIO()
    png = Image.fromarray(depth_to_png_values(depth))  # uint16: mode I;16, a 16-bit PNG
    png.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def decode_depth_png(data: bytes) -> np.ndarray:
    """A KITTI depth PNG → float32 HxW metres (0 where invalid)."""
    with Image.open(io.BytesIO(data), formats=("PNG",)) as img:
        values = np.asarray(img)
    return (values.astype(np.float32) / np.float32(DEPTH_PNG_SCALE)).astype(np.float32)


def depth_summary(depth: np.ndarray) -> dict[str, Any]:
    """``min_m`` / ``median_m`` / ``max_m`` over the valid (finite, positive) pixels, or None."""
    d = np.asarray(depth, dtype=np.float64)
    valid = d[np.isfinite(d) & (d > 0)]
    if valid.size == 0:
        return {"min_m": None, "median_m": None, "max_m": None}
    return {
        "min_m": float(valid.min()),
        "median_m": float(np.median(valid)),
        "max_m": float(valid.max()),
    }
