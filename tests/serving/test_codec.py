"""The one image loader and the depth PNG, on real photographs (scikit-image's sample data).

Each case builds the file a phone, a camera or a scanner would write from a real photograph
and checks the decoded pixels against the photograph itself (an independent reference), not
against another run of the loader.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from depth_common.errors import DataError, ImageDecodeError
from depth_common.serving.codec import (
    DEPTH_PNG_SCALE,
    decode_depth_png,
    depth_summary,
    depth_to_png_values,
    encode_depth_png,
    load_rgb,
    resize_depth_bilinear,
)

skimage_data = pytest.importorskip("skimage.data")
DATA = Path(skimage_data.__file__).parent


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def rocket() -> np.ndarray:
    """A real JPEG photograph (427x640), decoded once by Pillow as the reference."""
    return np.asarray(Image.open(DATA / "rocket.jpg").convert("RGB"))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()  # 512x512x3 uint8, a real photograph


def test_a_real_jpeg_decodes_to_pillows_pixels(rocket: np.ndarray) -> None:
    out = load_rgb((DATA / "rocket.jpg").read_bytes())
    assert out.dtype == np.uint8 and out.shape == (427, 640, 3)
    np.testing.assert_array_equal(out, rocket)
    np.testing.assert_array_equal(load_rgb(DATA / "rocket.jpg"), rocket)  # a path too


@pytest.mark.parametrize(("orientation", "transpose"), [(3, Image.Transpose.ROTATE_180),
                         (6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)])  # fmt: skip
def test_exif_orientation_is_applied(rocket: np.ndarray, orientation: int, transpose) -> None:
    # A phone stores the sensor's pixels sideways and says how to turn them in EXIF.
    stored = Image.fromarray(rocket).transpose(transpose)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    out = load_rgb(data)
    assert out.shape == rocket.shape  # upright again: 427 x 640
    err = np.abs(out.astype(int) - rocket.astype(int)).mean()
    assert err < 3.0, err  # JPEG re-encoding only
    # Ignoring the tag would give the stored (turned) picture: far from the photograph.
    ignored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert ignored.shape != rocket.shape or np.abs(ignored.astype(int) - rocket).mean() > 20


def test_16_bit_grayscale_png_is_scaled_not_clipped(astronaut: np.ndarray) -> None:
    gray8 = np.asarray(Image.fromarray(astronaut).convert("L"))
    gray16 = gray8.astype(np.uint16) * 257  # the same photograph on the 16-bit range
    data = _encode(Image.fromarray(gray16), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = load_rgb(data)
    np.testing.assert_array_equal(out, np.repeat(gray8[..., None], 3, axis=2))
    # What a plain convert("RGB") makes of it: saturated, almost all white.
    naive = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert (naive == 255).mean() > 0.8


def test_float_tiff_is_scaled_to_8_bit(astronaut: np.ndarray) -> None:
    gray8 = np.asarray(Image.fromarray(astronaut).convert("L"))
    data = _encode(Image.fromarray(gray8.astype(np.float32) / 255.0), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    out = load_rgb(data)[..., 0]
    assert np.abs(out.astype(int) - gray8).max() <= 1
    naive = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert naive.max() <= 1  # a plain convert("RGB"): black
    # Floats outside [0, 1] (e.g. a raw sensor range) are stretched, NaN becomes 0.
    hdr = gray8.astype(np.float32) * 40.0 + 100.0
    hdr[0, 0] = np.nan
    stretched = load_rgb(hdr)[..., 0]
    assert stretched[0, 0] == 0 and stretched.max() == 255
    lo, hi = np.nanmin(hdr), np.nanmax(hdr)
    np.testing.assert_allclose(stretched[1:], np.rint((hdr[1:] - lo) / (hi - lo) * 255), atol=1)


def test_alpha_is_composited_over_white(astronaut: np.ndarray) -> None:
    alpha = np.tile(np.linspace(0, 255, 512, dtype=np.uint8), (512, 1))
    rgba = np.dstack([astronaut, alpha])
    out = load_rgb(_encode(Image.fromarray(rgba), "PNG"))
    a = alpha[..., None] / 255.0
    want = astronaut * a + 255.0 * (1 - a)
    assert np.abs(out - want).max() <= 1.0
    assert (out[:, 0] == 255).all()  # fully transparent column: white, not black


def test_palette_grayscale_cmyk_and_bilevel(astronaut: np.ndarray) -> None:
    img = Image.fromarray(astronaut)
    palette = img.quantize(64)
    np.testing.assert_array_equal(
        load_rgb(_encode(palette, "PNG")), np.asarray(palette.convert("RGB"))
    )
    gray = img.convert("L")
    np.testing.assert_array_equal(
        load_rgb(_encode(gray, "PNG")), np.repeat(np.asarray(gray)[..., None], 3, axis=2)
    )
    cmyk = load_rgb(_encode(img.convert("CMYK"), "JPEG", quality=95))
    assert cmyk.shape == astronaut.shape and np.abs(cmyk.astype(int) - astronaut).mean() < 6
    bilevel = load_rgb(_encode(gray.convert("1"), "PNG"))
    assert set(np.unique(bilevel)) <= {0, 255}
    # A palette image with a transparent entry is composited too.
    transparent = palette.copy()
    transparent.info["transparency"] = int(np.asarray(palette)[0, 0])
    out = load_rgb(_encode(transparent, "PNG", transparency=transparent.info["transparency"]))
    assert (out[0, 0] == 255).all()


def test_arrays_go_through_the_same_rules(astronaut: np.ndarray) -> None:
    np.testing.assert_array_equal(load_rgb(astronaut), astronaut)
    gray = astronaut[..., 0]
    np.testing.assert_array_equal(load_rgb(gray), np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(load_rgb(gray.astype(np.uint16) * 257)[..., 0], gray)
    with pytest.raises(ImageDecodeError, match=r"shape \(4, 4, 2\)"):
        load_rgb(np.zeros((4, 4, 2), np.uint8))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with one tiny compressed row."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))  # fmt: skip

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, this is text", "not a readable image"),
        ((DATA / "rocket.jpg").read_bytes()[:3000], "truncated"),
        (_png_header_only(100_000, 100_000), "decompression bomb"),  # Pillow's own check
        (_png_header_only(8_000, 8_000), "64,000,000 pixels is over the limit"),  # ours
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not a readable image"),
    ],
    ids=["zero-bytes", "text", "truncated-jpeg", "bomb", "over-pixel-limit", "eps-never-tried"],
)
def test_bad_images_are_refused_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message) as info:
        load_rgb(data, source="upload.bin")
    assert str(info.value).startswith("upload.bin:")
    assert isinstance(info.value, DataError)


def test_the_pixel_limit_is_a_setting(rocket: np.ndarray) -> None:
    data = (DATA / "rocket.jpg").read_bytes()
    with pytest.raises(ImageDecodeError, match=r"640x427 = 273,280 pixels.*limit of 100,000"):
        load_rgb(data, max_pixels=100_000)
    assert load_rgb(data, max_pixels=273_280).shape == rocket.shape


def test_depth_png_follows_the_kitti_convention() -> None:
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.1, 120.0, (40, 60)).astype(np.float32)
    depth[0, :4] = [np.nan, -1.0, 0.0, np.inf]
    depth[1, 0] = 1e-4  # valid but below 1/512 m: stays non-zero
    depth[1, 1] = 400.0  # beyond 255.996 m: clipped
    data = encode_depth_png(depth)
    png = Image.open(io.BytesIO(data))
    assert png.mode == "I;16" and png.size == (60, 40)
    values = np.asarray(png)
    np.testing.assert_array_equal(values, depth_to_png_values(depth))
    assert list(values[0, :4]) == [0, 0, 0, 0] and values[1, 0] == 1 and values[1, 1] == 65535
    back = decode_depth_png(data)
    ok = np.isfinite(depth) & (depth > 0) & (depth < 255)
    ok[1, 0] = False
    assert np.abs(back[ok] - depth[ok]).max() <= 0.5 / DEPTH_PNG_SCALE + 1e-6
    assert depth_summary(np.array([[np.nan, 0.0], [2.0, 4.0]])) == {
        "min_m": 2.0, "median_m": 3.0, "max_m": 4.0}  # fmt: skip


def test_resize_depth_bilinear_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    d = np.random.default_rng(1).uniform(1, 50, (12, 20)).astype(np.float32)
    want = torch.nn.functional.interpolate(
        torch.from_numpy(d)[None, None], size=(30, 44), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(resize_depth_bilinear(d, (30, 44)), want, atol=1e-4)
    assert resize_depth_bilinear(d, (12, 20)) is d


def _mutated_tiff(mode: str, offset: int, value: int) -> bytes:
    """A small TIFF of ``mode`` with one byte changed (found by a mutation fuzz of load_rgb)."""
    rgb = (np.arange(24 * 32 * 3) % 251).astype(np.uint8).reshape(24, 32, 3)
    data = bytearray(_encode(Image.fromarray(rgb).convert(mode), "TIFF"))
    data[offset] = value
    return bytes(data)


@pytest.mark.parametrize(
    ("mode", "offset", "value"),
    [("RGBA", 72, 2), ("1", 60, 5)],  # Pillow raised TypeError for both (a 500 in the server)
)
def test_a_corrupt_tiff_tag_is_a_decode_error(mode: str, offset: int, value: int) -> None:
    with pytest.raises(ImageDecodeError, match="^upload.tif: truncated or corrupt"):
        load_rgb(_mutated_tiff(mode, offset, value), source="upload.tif")


_SEEDS = [
    _encode(Image.fromarray((np.arange(12 * 16 * 3) % 251).astype(np.uint8).reshape(12, 16, 3))
            .convert(mode), fmt)
    for mode, fmt in [("RGB", "PNG"), ("RGB", "JPEG"), ("RGBA", "TIFF"), ("1", "TIFF"),
                      ("F", "TIFF"), ("P", "GIF"), ("RGB", "BMP"), ("RGB", "WEBP"), ("L", "PPM")]
]  # fmt: skip


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(
    seed=st.sampled_from(_SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    cut=st.integers(1, 10**6),
)
def test_fuzzed_images_decode_or_are_refused_never_crash(
    seed: bytes, edits: list[tuple[int, int]], cut: int
) -> None:
    """Mutated images of every allowed format: an RGB array or an ImageDecodeError, nothing else
    (bounded and seeded: the same 300 cases every run, a few seconds)."""
    data = bytearray(seed[: max(1, cut % (len(seed) + 1))])
    for offset, value in edits:
        data[offset % len(data)] = value
    try:
        rgb = load_rgb(bytes(data), source="fuzz")
    except ImageDecodeError as exc:
        assert str(exc).startswith("fuzz: ")
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
