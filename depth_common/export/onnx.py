"""Checkpoint → ``model.onnx`` with a parity gate against PyTorch.

The exported graph takes ``image`` (float32 ``[batch, 3, H, W]``, ImageNet-normalised, see
:func:`depth_common.data.transforms.prepare_image`) and returns ``depth`` (float32
``[batch, 1, H, W]``, metres). Only the batch axis is dynamic: a ViT's position embedding is
fixed to the training size, so H and W are baked in and recorded in the metadata.

The file is written to a temporary name in the output directory, checked (``onnx.checker``),
compared with PyTorch in ONNX Runtime on batch 1 and batch 4, and only then moved onto
``out_path`` (:func:`depth_common.atomic.atomic_path`): a failed export never leaves a ``model.onnx`` behind.
"""

from __future__ import annotations

# torch, onnx, onnxruntime and mlflow are imported where each step runs: this module is
# imported by the deploy and Triton modules (export.triton, deploy.kserve) for its metadata
# helpers, which need none of them.
import hashlib
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch loads in the functions that run a model, not for the constants
    import torch

from depth_common.atomic import atomic_path
from depth_common.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from depth_common.errors import ParityError
from depth_common.model.checkpoint import model_from_checkpoint
from depth_common.registry.lineage import carried
from depth_common.threads import apply_torch_threads, ort_session_options

INPUT_NAME = "image"
OUTPUT_NAME = "depth"
#: Metadata key (ONNX) and Triton config parameter: the canonical camera's focal, pixels at the
#: model input width (the transformer scales depth by the photo's focal over it).
CANONICAL_FOCAL_KEY = "canonical_focal_px"
#: Batch sizes the parity gate runs (1: the latency path; 4: proves the dynamic batch axis).
PARITY_BATCHES: tuple[int, ...] = (1, 4)
#: The batch size used while tracing. Not 1, so that no broadcast over a size-1 batch can be
#: baked into the graph as a constant.
_TRACE_BATCH = 2


@dataclass(frozen=True)
class OnnxExport:
    """Result of an export.

    ``parity`` maps ``"batch_<n>"`` to the max |ONNX Runtime - PyTorch| in metres.
    ``img_size`` is (height, width) in pixels.
    """

    path: Path
    parity: dict[str, float]
    input_name: str
    output_name: str
    img_size: tuple[int, int]
    opset: int
    metadata: dict[str, str] = field(default_factory=dict)


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk_bytes`` chunks (checkpoints can be GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def build_metadata(
    *,
    encoder: str,
    img_size: tuple[int, int],
    max_depth: float,
    run_id: str | None,
    checkpoint_sha256: str | None,
    canonical_focal_px: float | None = None,
) -> dict[str, str]:
    """The ``metadata_props`` a consumer needs to use the ONNX file without the checkpoint.

    Normalisation comes from :mod:`depth_common.data.transforms` (the one preprocessing
    definition); lists are JSON so a client can ``json.loads`` them. ``canonical_focal_px``:
    the horizontal focal (pixels at the input width) the depth is for; "" for a camera-blind
    model (then depth is for whatever camera the training data had).
    """

    return {
        "encoder": encoder,
        "img_size": json.dumps([int(img_size[0]), int(img_size[1])]),
        "normalization_mean": json.dumps([round(float(v), 6) for v in IMAGENET_MEAN]),
        "normalization_std": json.dumps([round(float(v), 6) for v in IMAGENET_STD]),
        "max_depth": repr(float(max_depth)),
        "depth_unit": "metres",
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "mlflow_run_id": run_id or "",
        "checkpoint_sha256": checkpoint_sha256 or "",
        CANONICAL_FOCAL_KEY: "" if canonical_focal_px is None else repr(float(canonical_focal_px)),
    }


def read_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file as a dict (weights are not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def parity_inputs(batch: int, img_size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Seeded float32 ``[batch, 3, H, W]`` standard-normal input.

    A normalised image has roughly zero mean and unit variance per channel, so this exercises
    the same value range as real inputs without needing any data.
    """
    rng = np.random.default_rng(seed + batch)
    return rng.standard_normal((batch, 3, *img_size), dtype=np.float32)


def _ort_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort_session_options(role="export parity")  # threads that fit this process's CPUs
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_onnx_parity(
    model: torch.nn.Module,
    onnx_path: str | Path,
    img_size: tuple[int, int],
    *,
    atol: float = 1e-3,
    batches: tuple[int, ...] = PARITY_BATCHES,
    seed: int = 0,
    label: str | Path | None = None,
) -> dict[str, float]:
    """Run PyTorch and ONNX Runtime on the same seeded inputs; return max |diff| per batch.

    Raises :class:`ParityError` (with the measured difference, metres) when any batch
    differs by ``atol`` or more, and ``ValueError`` when the output is not ``[B, 1, H, W]``.
    ``label`` names the file in messages (default: ``onnx_path``).
    """
    import torch

    label = label or onnx_path
    apply_torch_threads(role="export parity")
    session = _ort_session(Path(onnx_path))
    parity: dict[str, float] = {}
    model.eval()
    for batch in batches:
        x = parity_inputs(batch, img_size, seed)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).float().numpy()
        expected = (batch, 1, *img_size)
        if ref.shape != expected:
            raise ValueError(
                f"model output has shape {list(ref.shape)}, expected {list(expected)} "
                "([batch, 1, H, W] depth in metres)"
            )
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
        if got.shape != expected:
            raise ValueError(
                f"{label}: ONNX Runtime output '{OUTPUT_NAME}' has shape {list(got.shape)} "
                f"for batch {batch}, expected {list(expected)}"
            )
        diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
        parity[f"batch_{batch}"] = diff
        # `not diff < atol` also catches NaN.
        if not diff < atol:
            raise ParityError(
                f"{label}: ONNX Runtime differs from PyTorch by {diff:.3g} m on batch "
                f"{batch} (max abs difference; allowed < {atol:g})",
                max_abs_diff=diff,
                atol=atol,
                batch=batch,
            )
    return parity


def _declare_shape(value_info: Any, dims: tuple[int | str, ...]) -> None:
    """Overwrite a graph input/output's declared shape (str = symbolic, int = fixed)."""
    shape = value_info.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        if isinstance(d, str):
            shape.dim.add().dim_param = d
        else:
            shape.dim.add().dim_value = d


def export_model(
    model: torch.nn.Module,
    out_path: str | Path,
    *,
    img_size: tuple[int, int],
    metadata: Mapping[str, str] | None = None,
    opset: int = 17,
    atol: float = 1e-3,
    seed: int = 0,
) -> OnnxExport:
    """Export an in-memory depth model (``[B,3,H,W]`` → ``[B,1,H,W]`` metres) to ONNX.

    Uses the TorchScript exporter (``dynamo=False``; the dynamo exporter needs
    ``onnxscript``) with a dynamic batch axis named ``batch``. The parity gate runs before the
    file appears at ``out_path``; on any failure the temporary file is removed.
    """
    import onnx
    import torch

    out_path = Path(out_path)
    img_size = (int(img_size[0]), int(img_size[1]))
    model = model.eval().float().cpu()
    dummy = torch.from_numpy(parity_inputs(_TRACE_BATCH, img_size, seed))
    with torch.no_grad():
        probe = model(dummy)
    expected = (_TRACE_BATCH, 1, *img_size)
    if not isinstance(probe, torch.Tensor) or tuple(probe.shape) != expected:
        got = list(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise ValueError(
            f"model output for a {list(dummy.shape)} input is {got}, expected {list(expected)} "
            "([batch, 1, H, W] depth in metres)"
        )
    with atomic_path(out_path) as tmp:
        # timm's shape asserts trace to constants (TracerWarning); H, W are fixed by design and
        # the parity gate below on two batch sizes is the real check, so they are only noise.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        # The tracer leaves the output's H, W symbolic (they come out of a Resize); declare the
        # shape the parity gate below verifies, so Triton and TensorRT see static H, W.
        for value, channels in ((proto.graph.input[0], 3), (proto.graph.output[0], 1)):
            _declare_shape(value, ("batch", channels, *img_size))
        meta = dict(metadata or {})
        del proto.metadata_props[:]
        for key in sorted(meta):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, str(meta[key])
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        del proto
        parity = check_onnx_parity(model, tmp, img_size, atol=atol, seed=seed, label=out_path)
    return OnnxExport(
        path=out_path,
        parity=parity,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        img_size=img_size,
        opset=opset,
        metadata=meta,
    )


def export_onnx(
    checkpoint_path: str | Path,
    out_path: str | Path,
    *,
    opset: int = 17,
    atol: float = 1e-3,
    run_id: str | None = None,
    lineage: Mapping[str, str] | None = None,
) -> OnnxExport:
    """Export a training checkpoint (``depth_common.model.checkpoint`` format) to ONNX.

    ``run_id`` overrides the MLflow run id recorded in the checkpoint; ``lineage`` (the
    registered version's lineage tags, :func:`depth_common.registry.lineage.lineage_tags`)
    goes into the metadata too, so the file says which code, data and params made it. H and W come from the
    checkpoint's ``model_config.img_size`` (pixels); ``max_depth`` (metres) from its params.
    Raises :class:`ParityError` if ONNX Runtime and PyTorch differ by ``atol`` (metres) or more.
    """

    checkpoint_path = Path(checkpoint_path)
    model, ckpt = model_from_checkpoint(checkpoint_path)
    cfg = ckpt["model_config"]
    img_size = (int(cfg["img_size"][0]), int(cfg["img_size"][1]))
    metadata = build_metadata(
        encoder=str(cfg["encoder"]),
        img_size=img_size,
        max_depth=float(ckpt["params"]["data"]["max_depth"]),
        run_id=run_id or ckpt.get("mlflow_run_id"),
        checkpoint_sha256=file_sha256(checkpoint_path),
        canonical_focal_px=ckpt.get("canonical_focal_px"),
    )
    metadata.update({k: v for k, v in carried(lineage or {}).items() if k not in metadata})
    return export_model(
        model, out_path, img_size=img_size, metadata=metadata, opset=opset, atol=atol
    )


def log_onnx_to_mlflow(path: str | Path, run_id: str, tracking_uri: str) -> str:
    """Log the ONNX file as an artifact of ``run_id`` under ``onnx/``; return its artifact URI."""
    from mlflow.tracking import MlflowClient

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ONNX file to log")
    client = MlflowClient(tracking_uri=tracking_uri)
    client.log_artifact(run_id, str(path), artifact_path="onnx")
    return f"{client.get_run(run_id).info.artifact_uri}/onnx/{path.name}"
