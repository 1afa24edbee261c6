"""Atomic file writes: each goes to ``<name>.<pid>.tmp`` beside the target, then ``os.replace``.

A reader therefore sees either the old file or the complete new one, never half of it, and an
interrupted write leaves no file under the final name.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

_TMP_NAME = re.compile(r"\.(\d+)\.tmp$")


def tmp_path(path: Path) -> Path:
    """The temporary sibling used while ``path`` is being written."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def remove_tmp_files(root: str | Path) -> list[Path]:
    """Delete every ``<name>.<pid>.tmp`` under ``root``: what a killed writer leaves behind.

    Call it only while no other writer can be working in ``root`` (preprocessing holds a lock
    on its output directory for that). Returns the removed paths.
    """
    root = Path(root)
    removed = []
    for path in sorted(root.rglob("*.tmp")) if root.is_dir() else []:
        if _TMP_NAME.search(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fileobj)`` on a temp file next to ``path``, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there if something failed
    return path


def save_png(path: str | Path, image: Image.Image | np.ndarray, **save_kwargs: Any) -> Path:
    """Atomically save a PIL image or array (uint8 RGB, uint16 gray) as PNG."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    return atomic_write(path, lambda fh: img.save(fh, format="PNG", **save_kwargs))


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    """Atomically save ``array`` in ``.npy`` format (no pickles)."""
    return atomic_write(path, lambda fh: np.save(fh, array, allow_pickle=False))


def save_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    return atomic_write(path, lambda fh: fh.write(data))
