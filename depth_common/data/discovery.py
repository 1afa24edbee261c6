"""Finding the RGB/disparity/camera files of a split, for both on-disk layouts.

* ``cityscapes`` (official): ``leftImg8bit/{split}/{city}/<frame>_leftImg8bit.png`` +
  ``disparity/{split}/{city}/<frame>_disparity.png`` + ``camera/{split}/{city}/<frame>_camera.json``.
  Each folder may also sit inside the folder its download package was extracted to
  (``leftImg8bit_trainvaltest/leftImg8bit/...``, ``disparity_trainextra/disparity/...``,
  ``camera_trainvaltest/camera/...``), as unzipping every package into its own folder gives.
* ``depth_xy``: ``depth_X/{split}/{city}/*.png`` (RGB) + ``depth_y/{split}/{city}/*.png``
  (disparity); pairs match by frame id (the file stem with a trailing ``_leftImg8bit`` /
  ``_disparity`` removed). No camera files.

Hidden entries (``.DS_Store``, macOS ``._*`` resource forks, ``.git``) are never data: they
are skipped everywhere.
"""

from __future__ import annotations

from pathlib import Path

from depth_common.config import DATA_LAYOUTS
from depth_common.data.cityscapes import (
    CAMERA_SUFFIX,
    DISPARITY_SUFFIX,
    RGB_SUFFIX,
    Sample,
    check_disparity_png,
    check_rgb_image,
    frame_id,
)
from depth_common.errors import DataError

LAYOUTS = DATA_LAYOUTS
CAMERA_POLICIES = ("require", "default")

# Layout → (RGB folder, disparity folder, camera folder or None).
_FOLDERS: dict[str, tuple[str, str, str | None]] = {
    "cityscapes": ("leftImg8bit", "disparity", "camera"),
    "depth_xy": ("depth_X", "depth_y", None),
}


def visible(path: Path) -> bool:
    """False for hidden entries (``.*``, which includes macOS ``._*`` files)."""
    return not path.name.startswith(".")


def kind_roots(root: Path, kind: str) -> list[Path]:
    """Every folder named ``kind`` at ``root`` or one package folder down (``kind_*/kind``)."""
    found = [root / kind] if (root / kind).is_dir() else []
    if root.is_dir():
        for package in sorted(root.glob(f"{kind}_*")):
            if visible(package) and (package / kind).is_dir():
                found.append(package / kind)
    return found


def split_dir(root: Path, kind: str, split: str) -> Path | None:
    """The one ``…/kind/split`` folder, or None; two candidates are an error naming both."""
    hits = [k / split for k in kind_roots(root, kind) if (k / split).is_dir()]
    if len(hits) > 1:
        raise DataError(
            f"{hits[0]} and {hits[1]}: split '{split}' of {kind}/ exists twice (expected one "
            f"{kind}/{split}/ folder, either directly under {root} or in one package folder)"
        )
    return hits[0] if hits else None


def detect_layout(raw_dir: str | Path) -> str:
    """``cityscapes`` if ``raw_dir`` has a ``leftImg8bit`` folder (directly or in a package
    folder), else ``depth_xy`` if it has ``depth_X/``."""
    root = Path(raw_dir)
    if not root.is_dir():
        raise DataError(f"{root}: raw data root does not exist or is not a directory")
    for layout in LAYOUTS:
        if kind_roots(root, _FOLDERS[layout][0]):
            return layout
    raise DataError(
        f"{root}: expected leftImg8bit/ + disparity/ (Cityscapes layout, also inside "
        "leftImg8bit_trainvaltest/ style package folders) or depth_X/ + depth_y/ (depth_xy "
        "layout), found neither"
    )


def resolve_layout(root: Path, layout: str) -> str:
    """``layout`` checked (``auto``: detected from ``root``)."""
    if layout == "auto":
        return detect_layout(root)
    if layout not in LAYOUTS:
        raise DataError(f"layout {layout!r}: expected one of auto, {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise DataError(f"{root}: raw data root does not exist or is not a directory")
    return layout


def _camera_path(
    root: Path, split: str, city: str, fid: str, camera: str, rgb: Path
) -> Path | None:
    """The frame's camera JSON; None without a camera tree or (``camera="default"``) without
    the file. With a camera tree and ``camera="require"``, a missing file is an error."""
    if not kind_roots(root, "camera"):
        return None  # no camera/ tree at all: the configured default camera applies
    cam_split = split_dir(root, "camera", split)
    path = (cam_split or root / "camera" / split) / city / f"{fid}{CAMERA_SUFFIX}.json"
    if path.is_file():
        return path
    if camera == "default":
        return None
    where = f"{path}" if cam_split else f"{path} ({root / 'camera' / split} does not exist)"
    raise DataError(
        f"{rgb}: no camera JSON for frame {fid} (expected {where}); the default camera would "
        "give depths off by up to several per cent: add the file, or set data.camera: default "
        "to use data.baseline / data.focal_length for such frames"
    )


def _city_pairs(root: Path, layout: str, split: str, city_dir: Path, camera: str) -> list[Sample]:
    """The checked pairs of one city folder, sorted by frame id."""
    _, disp_name, cam_name = _FOLDERS[layout]
    city = city_dir.name
    disp_split = split_dir(root, disp_name, split)
    disp_dir = (disp_split or root / disp_name / split) / city
    disparities = (
        {frame_id(p): p for p in disp_dir.glob("*.png") if visible(p)} if disp_dir.is_dir() else {}
    )
    pattern = f"*{RGB_SUFFIX}.png" if layout == "cityscapes" else "*.png"
    samples = []
    for rgb in sorted(p for p in city_dir.glob(pattern) if visible(p)):
        fid = frame_id(rgb)
        disp = disparities.get(fid)
        if disp is None:
            name = f"{fid}{DISPARITY_SUFFIX}.png" if layout == "cityscapes" else rgb.name
            raise DataError(f"{rgb}: no disparity for frame {fid} (expected {disp_dir / name})")
        check_rgb_image(rgb)
        check_disparity_png(disp)
        cam = _camera_path(root, split, city, fid, camera, rgb) if cam_name else None
        samples.append(Sample(split, city, fid, rgb, disp, cam))
    return samples


def discover(
    raw_dir: str | Path,
    split: str,
    layout: str = "auto",
    num_cities: int | None = None,
    camera: str = "require",
) -> list[Sample]:
    """All RGB/disparity pairs of ``split``, sorted by city then frame id.

    ``num_cities`` keeps the first N cities in sorted order. Every pair's files are checked
    here, cheaply, by reading only the PNG headers: the RGB must be a readable 8-bit image,
    the disparity a 16-bit single-channel PNG. ``camera``: with ``require`` (default) a layout
    that has a camera tree must have every frame's camera JSON; with ``default`` a missing one
    leaves ``camera_path`` None. Raises ``DataError`` naming the file or directory for: a
    missing root or split directory, an empty split, an RGB without its disparity or camera,
    a wrong-mode or unreadable file.
    """
    root = Path(raw_dir)
    layout = resolve_layout(root, layout)
    if camera not in CAMERA_POLICIES:
        raise DataError(f"camera {camera!r}: expected one of {', '.join(CAMERA_POLICIES)}")
    rgb_name = _FOLDERS[layout][0]
    rgb_split = split_dir(root, rgb_name, split)
    if rgb_split is None:
        raise DataError(
            f"{root / rgb_name / split}: split '{split}' not found (expected "
            f"{rgb_name}/{split}/<city>/, directly or inside a {rgb_name}_<package>/ folder)"
        )
    cities = sorted(p for p in rgb_split.iterdir() if p.is_dir() and visible(p))
    if num_cities is not None:
        cities = cities[:num_cities]
    samples = [s for c in cities for s in _city_pairs(root, layout, split, c, camera)]
    if not samples:
        raise DataError(
            f"{rgb_split}: split '{split}' is empty (expected <city>/*.png RGB images"
            + (f" in the first {num_cities} cities" if num_cities is not None else "")
            + ")"
        )
    return samples
