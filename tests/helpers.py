"""Fixtures shared by several test files (test files import from here, never from each other).

- a tiny depth network and the Triton repository built from it (serving, deploy, export tests);
- the scale-out job description every cluster-path test starts from;
- the image references images/images.env names (the image and build-script tests).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from depth_common.config import ExportConfig, load_params
from depth_common.config.container_images import read_images_env
from depth_common.config.params import overlay_overrides
from depth_common.export.onnx import export_model
from depth_common.export.triton import build_triton_repository
from depth_common.scaleout.job import ScaleOutJob, job_from_params

ROOT = Path(__file__).resolve().parents[1]
#: The demo overlay (params.demo.yaml) as overrides: what `make run` lays over params.yaml.
DEMO: tuple[str, ...] = overlay_overrides(ROOT / "params.demo.yaml")
#: The smallest synthetic set a whole pipeline run learns something from (kfp.local tests).
TINY_SYNTHETIC = {"cities": 1, "per_split": 8, "size": [64, 128]}


def tiny_pipeline_overrides(tmp_path: Path, *extra: str) -> list[str]:
    """The demo at 32x64 with its MLflow store and serving directory under ``tmp_path``."""
    return [
        *DEMO,
        "data.img_size=[32,64]",
        "data.batch_size=2",
        "data.num_workers=0",
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"export.repository_dir={tmp_path / 'serving'}",
        *extra,
    ]


# -- a tiny depth model served by Triton ------------------------------------------------------

H, W = 32, 64
MAX_BATCH = 8


class TinyDepthNet(torch.nn.Module):
    """[B,3,H,W] → [B,1,H,W] positive 'metres': enough to tell batch items and pixels apart."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softplus(self.conv2(torch.relu(self.conv1(x)))) * 10.0


def build_tiny_repository(root: Path, export_cfg: ExportConfig | None = None) -> Path:
    """``root/model.onnx`` (tiny net, parity-checked) + ``root/repo`` (Triton layout)."""
    torch.manual_seed(0)
    onnx_path = export_model(TinyDepthNet(), root / "model.onnx", img_size=(H, W)).path
    cfg = export_cfg or ExportConfig(max_batch_size=MAX_BATCH, preferred_batch_sizes=(4, 8))
    return build_triton_repository(onnx_path, root / "repo", export_cfg=cfg)


def jpeg_with_exif(
    size: tuple[int, int] = (80, 60), f35: float | None = None, orientation: int = 1
) -> bytes:
    """A W x H noise JPEG whose EXIF says FocalLengthIn35mmFilm = ``f35`` (mm; None: no tag)
    and ``orientation`` (6: stored turned, shown upright as H x W)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    if f35 is not None:
        exif.get_ifd(0x8769)[0xA405] = int(f35)
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def ort_reference(onnx_path: Path, batch: np.ndarray) -> np.ndarray:
    """ONNX Runtime's output for ``batch`` on the CPU: the reference served outputs must match."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["depth"], {"image": batch})[0]


# -- the scale-out train job ---------------------------------------------------------------------

CLUSTER = (
    "training.num_nodes=2",
    "training.procs_per_node=4",
    "training.train_gpu=4",
    'cluster.node_selector=["nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3"]',
    'cluster.tolerations=["nvidia.com/gpu:NoSchedule", "dedicated=ml:NoExecute"]',
    "training.shared_pvc=depth-shared",
    "cluster.mlflow_secret=mlflow-credentials",
    "cluster.storage_secret=s3-credentials",
    "training.job_timeout_s=7200",
)
"""Overrides for 2 GPU nodes x 4 processes with placement, secrets, storage and a deadline."""


def scaleout_job(overrides: Sequence[str] = CLUSTER, **kw: str) -> ScaleOutJob:
    """``job_from_params`` on params.yaml + ``overrides``, paths under /mnt/shared/run1."""
    params = load_params(ROOT / "params.yaml", overrides)
    return job_from_params(
        params,
        name=kw.pop("name", "depth-train-1"),
        params_path="/mnt/shared/run1/params.yaml",
        data_dir="/mnt/shared/run1/data",
        out_dir="/mnt/shared/run1/out",
        **kw,
    )


# -- the images images/images.env names ---------------------------------------------------------

IMAGES_ENV = read_images_env(ROOT / "images" / "images.env")
"""images/images.env as the build reads it (registry, image names, tags, versions)."""
CPU_IMAGE = (
    f"{IMAGES_ENV['REGISTRY']}/{IMAGES_ENV['COMPONENT_IMAGE']}:{IMAGES_ENV['COMPONENT_TAG']}"
)
CUDA_IMAGE = (
    f"{IMAGES_ENV['REGISTRY']}/{IMAGES_ENV['COMPONENT_IMAGE']}:{IMAGES_ENV['COMPONENT_CUDA_TAG']}"
)
