"""Publish the promoted model to the Hugging Face Hub: ``model.onnx``, the Triton repository and
a generated model card, in one commit through ``huggingface_hub.HfApi``.

The token comes only from the ``HF_TOKEN`` environment variable (on a cluster: the ``hf-token``
Secret, mounted with ``kfp.kubernetes.use_secret_as_env``); it is never a pipeline parameter,
never written to the card and never logged.
"""

from __future__ import annotations

# huggingface_hub is imported where a model is pushed: building the model card needs no hub client.
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from depth_common.errors import ConfigError
from depth_common.export.onnx import CANONICAL_FOCAL_KEY, read_metadata

log = logging.getLogger(__name__)

HF_TOKEN_ENV = "HF_TOKEN"
HF_TOKEN_SECRET = "hf-token"  # Kubernetes Secret name (manifests/secrets/hf-token.yaml)
HF_TOKEN_SECRET_KEY = "HF_TOKEN"  # key inside that Secret
ONNX_IN_REPO = "model.onnx"
TRITON_IN_REPO = "triton_repository"
REPORT_IN_REPO = "evaluation/report.html"

DEFAULT_INTENDED_USE = (
    "Per-pixel metric depth (metres) from a single RGB street-scene image, for research and "
    "for prototyping perception features (distance cues, scene layout). Input: an RGB image "
    "resized to the model's input size and normalised with ImageNet mean/std; output: depth in "
    "metres at that size."
)
DEFAULT_LIMITATIONS = (
    "- Trained on forward-facing urban driving scenes (Cityscapes-style); expect errors on "
    "indoor, aerial or otherwise different cameras.\n"
    "- Depth is capped at the training `max_depth`; sky and invalid pixels carry no supervision.\n"
    "- Ground truth comes from stereo disparity, which is noisy at long range and on thin or "
    "reflective objects.\n"
    "- Metric scale is learnt for one camera rig (baseline, focal length); other intrinsics shift "
    "the scale.\n"
    "- Not a safety component: do not use for autonomous driving decisions."
)


@dataclass(frozen=True)
class ModelCardInfo:
    """What the model card says. ``metrics`` are test metrics (metres where a unit applies)."""

    title: str
    metrics: dict[str, float]
    params: dict[str, Any]  # flat "section.key" -> value (Params.flat())
    data: str  # what the model was trained and evaluated on
    model_version: str  # MLflow registered model version
    mlflow_run_id: str
    registered_model: str = ""  # MLflow registered model name
    licence: str = "apache-2.0"  # a Hub licence identifier
    intended_use: str = DEFAULT_INTENDED_USE
    limitations: str = DEFAULT_LIMITATIONS
    tags: tuple[str, ...] = field(default=("depth-estimation", "onnx", "triton", "dpt", "vit"))
    #: Lineage (code commit, image, data digest, params/checkpoint/ONNX digests, runs): the
    #: keys of :data:`depth_common.registry.lineage.CARRIED_KEYS`, e.g. from the ONNX metadata.
    lineage: dict[str, str] = field(default_factory=dict)
    #: Path in the Hub repository of the evaluation report (pictures of where the model errs).
    report: str = ""
    # The canonical camera (ONNX metadata ``canonical_focal_px``; with_onnx_camera reads it):
    # the horizontal focal in pixels at the input width ``input_width``; None: camera-blind.
    canonical_focal_px: float | None = None
    input_width: int = 0


@dataclass(frozen=True)
class HubPushResult:
    repo_url: str
    commit_url: str
    files: tuple[str, ...]  # paths in the Hub repository


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _provenance(info: ModelCardInfo) -> list[str]:
    """The card's lineage lines (one per key) and the link to the evaluation report."""
    lines = [f"- {k}: `{_fmt(v)}`" for k, v in sorted(info.lineage.items())]
    if info.report:
        what = "error maps, error by distance band, predicted vs true depth, training curves"
        lines.append(f"- Evaluation report ({what}): [{info.report}]({info.report})")
    return lines


def render_model_card(info: ModelCardInfo) -> str:
    """README.md for the Hub: YAML metadata, then metrics, params, data, use, limits, provenance."""
    meta = {
        "license": info.licence,
        "library_name": "onnx",
        "pipeline_tag": "depth-estimation",
        "tags": list(info.tags),
    }
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", ""]
    lines += [f"# {info.title}", ""]
    lines += [
        "Monocular metric depth estimation: a DPT decoder on a ViT encoder, exported to ONNX "
        f"(`{ONNX_IN_REPO}`) with a ready-to-serve Triton model repository "
        f"(`{TRITON_IN_REPO}/`, KServe v2 protocol).",
        "",
        "## Metrics (test split)",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(info.metrics.items())]
    lines += ["", "## Training data", "", info.data, "", "## Intended use", "", info.intended_use]
    lines += ["", "## Camera", "", _camera_section(info)]
    lines += ["", "## Limitations", "", info.limitations, "", "## Parameters", ""]
    lines += ["| param | value |", "| --- | --- |"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(info.params.items())]
    registered = f" `{info.registered_model}`" if info.registered_model else ""
    lines += [
        "",
        "## Provenance",
        "",
        f"- MLflow run: `{info.mlflow_run_id}`",
        f"- MLflow registered model{registered}, version {info.model_version}",
        *_provenance(info),
        "",
        "## Licence",
        "",
        f"`{info.licence}`",
        "",
    ]
    return "\n".join(lines)


def _camera_section(info: ModelCardInfo) -> str:
    if info.canonical_focal_px is None or info.input_width <= 0:
        return (
            "Camera-blind: the metric scale is that of the training camera(s); a photo with "
            "another field of view gets a proportionally wrong scale."
        )
    f, w = info.canonical_focal_px, info.input_width
    fov = math.degrees(2 * math.atan(w / (2 * f)))
    return (
        f"The output is depth for a canonical camera: a horizontal focal of {f:.4g} px at the "
        f"{w} px input width ({fov:.1f} deg horizontal field of view; ONNX metadata and Triton "
        "config parameter `canonical_focal_px`). For a photo W px wide with focal `f_px`, "
        f"metric depth = output x f_px / ({f:.4g} x W / {w}). The serving transformer does "
        "this from the request's `focal_px`, else EXIF `FocalLengthIn35mmFilm`, else this "
        "field of view."
    )


def hub_token() -> str:
    """``$HF_TOKEN``; :class:`ConfigError` when missing or empty (the message holds no value)."""
    token = os.environ.get(HF_TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(
            f"{HF_TOKEN_ENV} is not set: pushing to the Hugging Face Hub needs a write token in "
            f"the environment (on a cluster: the '{HF_TOKEN_SECRET}' Secret, key "
            f"'{HF_TOKEN_SECRET_KEY}', see manifests/secrets/hf-token.yaml); set "
            "export.hf_repo_id to '' to skip the push"
        )
    return token


def with_onnx_camera(card: ModelCardInfo, onnx_path: str | Path) -> ModelCardInfo:
    """``card`` with the canonical camera the ONNX file's metadata names (unchanged if none)."""
    meta = read_metadata(onnx_path)
    focal, size = meta.get(CANONICAL_FOCAL_KEY, ""), json.loads(meta.get("img_size", "[0, 0]"))
    if not focal:
        return card
    return dataclasses.replace(card, canonical_focal_px=float(focal), input_width=int(size[1]))


def push_to_hub(
    onnx_path: str | Path,
    repo_id: str,
    *,
    card: ModelCardInfo,
    repository_dir: str | Path | None = None,
    report_path: str | Path | None = None,
    token: str | None = None,
    private: bool = False,
    endpoint: str | None = None,
) -> HubPushResult:
    """Create ``repo_id`` (``owner/name``) if missing and commit model, repository and card.

    ``token`` None reads ``$HF_TOKEN`` (the only source in the pipeline); ``endpoint`` None is
    huggingface_hub's (``$HF_ENDPOINT`` or https://huggingface.co). One commit holds
    ``model.onnx``, ``README.md`` and, with ``repository_dir``, every file of the Triton
    repository under ``triton_repository/``, and with ``report_path`` the evaluation report at
    ``card.report`` (default ``evaluation/report.html``).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    if not repo_id or repo_id.count("/") != 1:
        raise ValueError(f"repo_id: got {repo_id!r}, expected 'owner/name' (export.hf_repo_id)")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: ONNX model not found")
    token = token or hub_token()

    ops = [
        CommitOperationAdd(path_in_repo=ONNX_IN_REPO, path_or_fileobj=str(onnx_path)),
        CommitOperationAdd(
            path_in_repo="README.md", path_or_fileobj=render_model_card(card).encode()
        ),
    ]
    if report_path is not None:
        ops.append(
            CommitOperationAdd(
                path_in_repo=card.report or REPORT_IN_REPO, path_or_fileobj=str(report_path)
            )
        )
    if repository_dir is not None:
        repository_dir = Path(repository_dir)
        files = sorted(p for p in repository_dir.rglob("*") if p.is_file())
        if not files:
            raise FileNotFoundError(f"{repository_dir}: no files (expected a Triton repository)")
        ops += [
            CommitOperationAdd(
                path_in_repo=f"{TRITON_IN_REPO}/{p.relative_to(repository_dir).as_posix()}",
                path_or_fileobj=str(p),
            )
            for p in files
        ]

    api = HfApi(endpoint=endpoint, token=token)
    repo_url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.create_commit(
        repo_id,
        ops,
        commit_message=f"Model version {card.model_version} (MLflow run {card.mlflow_run_id})",
        repo_type="model",
    )
    log.info("pushed %d files to %s (%s)", len(ops), repo_url, commit.commit_url)
    return HubPushResult(str(repo_url), commit.commit_url, tuple(op.path_in_repo for op in ops))
