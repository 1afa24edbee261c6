"""The component image, read from ``images/images.env`` (the one place for image names/tags).

Read at import (compile) time, so the compiled YAML names the image that ``images/`` builds;
changing a tag there makes ``python compile.py --check`` report the YAML as stale.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kfp import dsl

IMAGES_ENV = Path(__file__).resolve().parents[1] / "images" / "images.env"


def read_images_env(path: Path = IMAGES_ENV) -> dict[str, str]:
    """``KEY=VALUE`` lines of ``path`` (comments and blank lines skipped)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise FileNotFoundError(f"{path}: cannot read the image names ({exc.strerror})") from None
    env: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{path}:{n}: expected KEY=VALUE, got {line!r}")
        env[key.strip()] = value.strip()
    return env


def component_image(cuda: bool = False, path: Path = IMAGES_ENV) -> str:
    """``REGISTRY/COMPONENT_IMAGE:TAG`` (``COMPONENT_CUDA_TAG`` when ``cuda``)."""
    env = read_images_env(path)
    tag_key = "COMPONENT_CUDA_TAG" if cuda else "COMPONENT_TAG"
    missing = [k for k in ("REGISTRY", "COMPONENT_IMAGE", tag_key) if not env.get(k)]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    return f"{env['REGISTRY']}/{env['COMPONENT_IMAGE']}:{env[tag_key]}"


COMPONENT_IMAGE = component_image()
COMPONENT_CUDA_IMAGE = component_image(cuda=True)


def depth_component(func: Callable) -> Any:
    """``@dsl.component`` on the project's image, using the kfp the image already has.

    ``install_kfp_package=False``: by default every compiled task would ``pip install kfp`` at
    start-up, which a non-root container with a read-only venv (and an air-gapped cluster)
    cannot do. The image installs kfp from ``pyproject.toml``, pinned to the minor version
    that compiles the pipeline.
    """
    return dsl.component(func, base_image=COMPONENT_IMAGE, install_kfp_package=False)
