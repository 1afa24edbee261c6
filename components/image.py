"""The component image, from ``images/images.env`` (read by :mod:`depth_common.config.container_images`).

Read at import (compile) time, so the compiled YAML names the image that ``images/`` builds;
changing a tag there makes ``python compile.py --check`` report the YAML as stale.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kfp import dsl

from depth_common.config.container_images import component_image

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
