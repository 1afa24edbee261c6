"""Fixtures shared by several test files (test files import from here, never from each other).

- the scale-out job description every cluster-path test starts from.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from depth_common.config import load_params
from depth_common.scaleout.job import ScaleOutJob, job_from_params

ROOT = Path(__file__).resolve().parents[1]

# -- the scale-out train job ---------------------------------------------------------------------

CLUSTER = (
    "training.num_nodes=2",
    "training.procs_per_node=4",
    "training.train_gpu=4",
    'training.node_selector=["nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3"]',
    'training.tolerations=["nvidia.com/gpu:NoSchedule", "dedicated=ml:NoExecute"]',
    "training.shared_pvc=depth-shared",
    "training.mlflow_secret=mlflow-credentials",
    "training.storage_secret=s3-credentials",
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
