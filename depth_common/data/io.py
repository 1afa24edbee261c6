"""Atomic image, array and JSON writes (through :mod:`depth_common.atomic`).

A reader therefore sees either the old file or the complete new one, never half of it, and an
interrupted write leaves no file under the final name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from depth_common.atomic import atomic_write, write_bytes


def save_png(path: str | Path, image: Image.Image | np.ndarray, **save_kwargs: Any) -> Path:
    """Atomically save a PIL image or array (uint8 RGB, uint16 gray) as PNG."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    return atomic_write(path, lambda fh: img.save(fh, format="PNG", **save_kwargs))


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    """Atomically save ``array`` in ``.npy`` format (no pickles)."""
    return atomic_write(path, lambda fh: np.save(fh, array, allow_pickle=False))


def save_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())
