"""Checkpoints: plain dicts of tensors and builtins, loadable with ``weights_only=True``.

Format (docs/architecture.md, "Checkpoint format")::

    {"format": "depth_common.checkpoint/v1", "model_state", "model_config", "params",
     "epoch", "metrics", "mlflow_run_id", ["optimizer_state", "scheduler_state",
     "scaler_state", ...extra]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from depth_common.atomic import atomic_write
from depth_common.config import Params
from depth_common.errors import CheckpointError, ConfigError
from depth_common.model.dpt import DPT  # timm import only when a model is really needed

FORMAT = "depth_common.checkpoint/v1"
_REQUIRED = ("model_state", "model_config", "params", "epoch", "metrics")
_MODEL_CONFIG_KEYS = ("encoder", "decoder_features", "img_size", "hooks")


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    params: Params,
    *,
    epoch: int,
    metrics: dict[str, float],
    mlflow_run_id: str | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint atomically (temp file in the same directory, then ``os.replace``).

    ``model`` must have a ``config`` property (``DPT`` does). ``extra`` adds keys of plain
    types/tensors (e.g. early-stopping state). Returns ``path``.
    """
    path = Path(path)
    model = unwrap(model)
    state: dict[str, Any] = {
        "format": FORMAT,
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": dict(model.config),
        "params": params.to_dict(),
        "epoch": int(epoch),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "mlflow_run_id": mlflow_run_id,
    }
    if optimizer is not None:
        state["optimizer_state"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler_state"] = scheduler.state_dict()
    if scaler is not None:
        state["scaler_state"] = scaler.state_dict()
    for key, value in (extra or {}).items():
        if key in state:
            raise ValueError(f"save_checkpoint: extra key {key!r} clashes with the format")
        state[key] = value
    atomic_write(path, lambda fh: torch.save(state, fh))
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a torch file, or not ``depth_common.checkpoint/v1`` (the message
            names the file and the missing or wrong field).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle/zip errors and weights_only refusals alike
        raise CheckpointError(
            f"checkpoint {path}: cannot be loaded with torch.load(weights_only=True) "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"checkpoint {path}: format {got!r}, expected {FORMAT!r}")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path}: missing keys {missing} ({FORMAT})")
    cfg = ckpt["model_config"]
    if not isinstance(cfg, dict) or any(k not in cfg for k in _MODEL_CONFIG_KEYS):
        raise CheckpointError(
            f"checkpoint {path}: model_config {cfg!r}, expected keys {list(_MODEL_CONFIG_KEYS)}"
        )
    return ckpt


def model_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the DPT (``pretrained=False``: the weights come from the file) → ``(model.eval(), ckpt)``."""

    ckpt = load_checkpoint(path, map_location)
    cfg = ckpt["model_config"]
    model = DPT(
        encoder=cfg["encoder"],
        pretrained=False,
        decoder_features=int(cfg["decoder_features"]),
        img_size=tuple(cfg["img_size"]),
        hooks=tuple(cfg["hooks"]),
    )
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path}: model_state does not match model_config {cfg} ({exc})"
        ) from exc
    return model.to(map_location).eval(), ckpt


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and ``torch.compile`` wrappers (``.module`` /
    ``._orig_mod``): what checkpoints store, with no ``module.`` key prefix."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto|cpu|cuda`` → the device a model runs on (``cuda:LOCAL_RANK`` on GPU nodes)."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"training.device: got {device!r}, expected one of auto, cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device: got 'cuda', but no CUDA device is available")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())
