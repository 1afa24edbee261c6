"""Where a training run's weights start: ``training.init_from``.

- ``""``: the encoder's own initialisation (``model.pretrained`` weights or random), the head
  bias at the training median depth.
- ``"champion"``: fine-tune the model that serves: the registry's ``@champion`` version's
  checkpoint (the ``checkpoint/best.pt`` artifact its training run logged). With no champion
  yet, the run starts as with ``""`` and says so. This is continuous training: each run of the
  pipeline starts from the best model so far, and the promotion gate still decides whether the
  result is better.
- a path: a ``best.pt`` / ``last.pt`` this project wrote.

Only the model's weights are taken (the optimiser, schedule and early stopping start fresh);
the checkpoint loads with ``torch.load(weights_only=True)`` and must describe the same model
(``model.*`` and ``data.img_size``), else the error names the file and both descriptions.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.artifacts import download_artifacts
from torch import nn

from depth_common.config import Params
from depth_common.errors import CheckpointError, ConfigError
from depth_common.model.checkpoint import load_checkpoint
from depth_common.registry.aliases import registry_client, version_by_alias
from depth_common.registry.store import sqlite_path

log = logging.getLogger(__name__)

CHAMPION = "champion"
#: The MLflow artifact path of the checkpoint a training run logs (depth_common.training.train).
CHECKPOINT_ARTIFACT = "checkpoint/best.pt"


@dataclass(frozen=True)
class InitSource:
    """The checkpoint a run starts from and how it was found (``description`` for the run's tags)."""

    path: Path
    description: str


def champion_checkpoint(params: Params, dest: Path) -> InitSource | None:
    """Download the ``@champion`` version's checkpoint into ``dest``; ``None`` with no champion."""

    db = sqlite_path(params.mlflow.tracking_uri)
    if db is not None and not db.is_file():
        return None  # no local store yet, so no champion (and no store created just to look)

    name = params.mlflow.model_name
    client = registry_client(params.mlflow.tracking_uri)
    version = version_by_alias(client, name, CHAMPION)
    if version is None:
        return None
    try:
        path = download_artifacts(
            run_id=version.run_id,
            artifact_path=CHECKPOINT_ARTIFACT,
            dst_path=str(dest),
            tracking_uri=params.mlflow.tracking_uri,
        )
    except Exception as exc:  # MlflowException / OSError: the run has no such artifact
        raise ConfigError(
            f"training.init_from: champion {name!r} version {version.version} (run "
            f"{version.run_id}) has no {CHECKPOINT_ARTIFACT} artifact to start from ({exc})"
        ) from exc
    return InitSource(Path(path), f"champion {name} v{version.version} (run {version.run_id})")


def resolve_init(params: Params, scratch: Path) -> InitSource | None:
    """The checkpoint ``training.init_from`` names (downloaded under ``scratch``), or ``None``."""
    init_from = params.training.init_from
    if not init_from:
        return None
    if init_from == CHAMPION:
        source = champion_checkpoint(params, scratch)
        if source is None:
            log.info("training.init_from=champion: no champion yet; training from scratch")
        return source
    path = Path(init_from)
    if not path.is_file():
        raise ConfigError(
            f"training.init_from: got {init_from!r}, expected '', 'champion' or the path of a "
            "checkpoint file (no such file)"
        )
    return InitSource(path, str(path))


def load_init_weights(model: nn.Module, source: InitSource) -> None:
    """Copy the weights of ``source`` into ``model`` (a DPT of the same description)."""

    ckpt = load_checkpoint(source.path)
    if dict(ckpt["model_config"]) != dict(model.config):
        raise ConfigError(
            f"training.init_from: {source.path} holds model {dict(ckpt['model_config'])}, "
            f"the params describe {dict(model.config)}; start from a checkpoint of the same "
            "model.* and data.img_size, or set training.init_from=''"
        )
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {source.path}: weights do not fit ({exc})") from exc


def apply_init(model: nn.Module, params: Params) -> str:
    """Start ``model`` where ``training.init_from`` says; return what it started from."""
    with tempfile.TemporaryDirectory(prefix="depth-init-") as scratch:
        source = resolve_init(params, Path(scratch))
        if source is None:
            return "scratch" if not params.training.init_from else "scratch (no champion yet)"
        load_init_weights(model, source)
    log.info("training starts from %s", source.description)
    return source.description
