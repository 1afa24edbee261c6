"""Shared set-up of the tests that need a Docker Engine and the built images.

``images/engine.sh start`` finds or starts the engine (and says why there is none: those tests
then skip with that reason, never pass silently). The component and transformer images are
the ones ``make images`` builds; where one is not built its tests skip saying so.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from components.image import COMPONENT_IMAGE
from depth_common.config.container_images import read_images_env

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "images" / "engine.sh"


def start_engine() -> tuple[str, bool]:
    """``(DOCKER_HOST, started_here)``, or ``pytest.skip`` with the engine script's reason."""
    out = subprocess.run(["bash", str(ENGINE), "start"], capture_output=True, text=True)
    if out.returncode == 3:
        reason = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "no engine"
        pytest.skip(reason)
    if out.returncode != 0:
        raise RuntimeError(f"images/engine.sh start failed ({out.returncode}): {out.stderr}")
    values = dict(line.split("=", 1) for line in out.stdout.split() if "=" in line)
    return values["DOCKER_HOST"], values.get("DEPTH_ENGINE_STARTED") == "1"


def stop_engine() -> None:
    subprocess.run(["bash", str(ENGINE), "stop"], check=False, capture_output=True)


def docker(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """``docker ARGS`` against the engine in ``DOCKER_HOST``."""
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({out.returncode}): {out.stderr}")
    return out


def require_image(ref: str = COMPONENT_IMAGE) -> str:
    """``ref`` if the engine has it, else skip (the image is built by ``make images``)."""
    if docker("image", "inspect", ref, check=False).returncode != 0:
        pytest.skip(f"image {ref} is not built: run `make images`")
    return ref


@pytest.fixture(scope="session")
def engine() -> str:
    """DOCKER_HOST of a running engine for the session; stopped at the end only if started."""
    host, started = start_engine()
    previous = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = host
    yield host
    if previous is None:
        os.environ.pop("DOCKER_HOST", None)
    else:
        os.environ["DOCKER_HOST"] = previous
    if started:
        stop_engine()


@pytest.fixture(scope="session")
def component_image(engine: str) -> str:
    return require_image()


@pytest.fixture(scope="session")
def transformer_image(engine: str) -> str:
    env = read_images_env()
    return require_image(f"{env['REGISTRY']}/{env['TRANSFORMER_IMAGE']}:{env['TRANSFORMER_TAG']}")
