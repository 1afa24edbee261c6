"""Shared fixtures: one small synthetic Cityscapes, preprocessed once per test session.

Other test files reuse these instead of generating their own data: ``synthetic_raw`` (official
layout, 2 cities x 4 images per split, 64x128), ``processed_data`` (preprocessed at 64x128),
``demo_params`` (the DEMO preset pointing at them) and ``tiny_params`` (same, 2 epochs).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import DEMO

from depth_common.config import Params, load_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Raw synthetic Cityscapes (official layout with camera JSONs), seed 0."""
    from depth_common.data.synthetic import generate_cityscapes

    root = tmp_path_factory.mktemp("synthetic_raw")
    generate_cityscapes(root, cities=2, per_split=4, size=(64, 128), seed=0)
    return root


@pytest.fixture(scope="session")
def processed_data(synthetic_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``synthetic_raw`` preprocessed at img_size [64, 128] in-process (num_workers 0)."""
    from depth_common.data.preprocess import preprocess_dataset

    out = tmp_path_factory.mktemp("processed")
    params = load_params(ROOT / "params.yaml", ("data.img_size=[64,128]", "data.num_workers=0"))
    preprocess_dataset(synthetic_raw, out, params.data, progress=False)
    return out


def _data_overrides(raw: Path, processed: Path) -> tuple[str, ...]:
    # Paths go through the YAML override parser: quote them so any character survives.
    return (f"data.raw_dir='{raw}'", f"data.processed_dir='{processed}'")


@pytest.fixture(scope="session")
def demo_params(synthetic_raw: Path, processed_data: Path) -> Params:
    """params.yaml + the DEMO preset, data paths pointing at the session fixtures."""
    return load_params(ROOT / "params.yaml", DEMO + _data_overrides(synthetic_raw, processed_data))


@pytest.fixture(scope="session")
def tiny_params(demo_params: Params) -> Params:
    """``demo_params`` with training.epochs=2 (smoke runs)."""
    return demo_params.with_overrides(("training.epochs=2",))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Triton repository of the tiny depth model (``helpers.build_tiny_repository``), one
    per test module: the serving, hardening, transformer and local-deploy tests start from it."""
    from helpers import build_tiny_repository

    return build_tiny_repository(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def onnx_path(tiny: Path) -> Path:
    """The ONNX model of :func:`tiny`'s repository (the reference the servers must match)."""
    return tiny / "depth" / "1" / "model.onnx"
