"""``images/images.env``: the one place image names and tags live, read here and only here.

The compiled pipeline (``components/image.py``), the scale-out train jobs and the tests all get
their image references from :func:`read_images_env` / :func:`component_image`.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from depth_common.errors import ConfigError

IMAGES_PACKAGE = "images"  # the repository's images/ folder, installed as package data


def images_env_path() -> Path:
    """``images/images.env`` of the installed ``images`` package."""
    try:
        return Path(str(importlib.resources.files(IMAGES_PACKAGE) / "images.env"))
    except ModuleNotFoundError:
        raise ConfigError(
            f"no {IMAGES_PACKAGE!r} package installed: install the project (pip install .)"
        ) from None


def read_images_env(path: str | Path | None = None) -> dict[str, str]:
    """``KEY=VALUE`` lines of ``path`` (default: the installed ``images.env``; comments and
    blank lines skipped) → dict."""
    path = Path(path) if path is not None else images_env_path()
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: cannot read the image names (no such file)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the image names ({exc.strerror})") from None
    env: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{n}: expected KEY=VALUE, got {line!r}")
        env[key.strip()] = value.strip()
    return env


def _reference(path: str | Path | None, name_key: str, tag_key: str) -> str:
    env = read_images_env(path)
    missing = [k for k in ("REGISTRY", name_key, tag_key) if not env.get(k)]
    if missing:
        raise ConfigError(f"{path or images_env_path()}: missing {', '.join(missing)}")
    return f"{env['REGISTRY']}/{env[name_key]}:{env[tag_key]}"


def component_image(cuda: bool = False, path: str | Path | None = None) -> str:
    """``REGISTRY/COMPONENT_IMAGE:TAG`` (``COMPONENT_CUDA_TAG`` when ``cuda``)."""
    return _reference(path, "COMPONENT_IMAGE", "COMPONENT_CUDA_TAG" if cuda else "COMPONENT_TAG")
