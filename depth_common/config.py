"""`params.yaml` → frozen dataclasses, validated once, with errors that name the dotted key.

Every stage reads its configuration through :func:`load_params`. Overrides use the
``section.key=value`` form (the value is parsed as YAML, so ``data.img_size=[64,128]`` and
``model.pretrained=false`` work).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def _fail(key: str, value: Any, expected: str) -> typing.NoReturn:
    raise ConfigError(f"{key}: got {value!r}, expected {expected}")


def _check(cond: bool, key: str, value: Any, expected: str) -> None:
    if not cond:
        _fail(key, value, expected)


#: Layout names of ``data.layout`` (besides ``auto``); ``depth_xy`` is ``depth_X/`` + ``depth_y/``.
DATA_LAYOUTS = ("cityscapes", "depth_xy")
#: Former layout names still accepted (with a deprecation warning) → their current name.
DEPRECATED_LAYOUTS = {"seed": "depth_xy"}
MAX_NUM_WORKERS = 64


def canonical_layout(layout: str, key: str = "data.layout") -> str:
    """``layout`` under its current name; a former name is accepted with a ``FutureWarning``."""
    if layout in DEPRECATED_LAYOUTS:
        new = DEPRECATED_LAYOUTS[layout]
        warnings.warn(
            f"{key}: {layout!r} is deprecated, use {new!r} (the same depth_X/ + depth_y/ folders)",
            FutureWarning,
            stacklevel=3,
        )
        return new
    return layout


def _safe_split_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


@dataclass(frozen=True)
class DataConfig:
    raw_dir: str = "data/raw"
    processed_dir: str = "data/processed"
    layout: str = "auto"
    splits: tuple[str, ...] = ("train", "val", "test")
    train_splits: tuple[str, ...] = ("train",)
    camera: str = "require"
    crop_bottom: float | None = None
    img_size: tuple[int, int] = (224, 224)
    batch_size: int = 8
    num_workers: int = 2
    num_cities: int | None = None
    min_depth: float = 1e-3
    max_depth: float = 80.0
    baseline: float = 0.209313
    focal_length: float = 2262.52

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout", canonical_layout(self.layout))

    def crop_bottom_for(self, layout: str) -> float:
        """The bottom fraction cut off for ``layout``: ``crop_bottom``, or when it is null 0.25
        for Cityscapes (the ego car's hood, as the community protocol crops it) and 0 otherwise."""
        if self.crop_bottom is not None:
            return self.crop_bottom
        return 0.25 if layout == "cityscapes" else 0.0

    def _validate(self, p: str) -> None:
        _check(
            self.layout in ("auto", *DATA_LAYOUTS),
            f"{p}.layout",
            self.layout,
            "one of auto, " + ", ".join(DATA_LAYOUTS),
        )
        _check(
            len(self.splits) >= 1
            and all(_safe_split_name(s) for s in self.splits)
            and len(set(self.splits)) == len(self.splits),
            f"{p}.splits",
            list(self.splits),
            "distinct split folder names, e.g. [train, val, test] (train_extra allowed)",
        )
        _check(
            len(self.train_splits) >= 1
            and set(self.train_splits) <= set(self.splits)
            and not set(self.train_splits) & {"val", "test"},
            f"{p}.train_splits",
            list(self.train_splits),
            f"splits of {p}.splits {list(self.splits)} to train on, never val or test "
            "(e.g. [train] or [train, train_extra])",
        )
        _check(
            self.camera in ("require", "default"),
            f"{p}.camera",
            self.camera,
            "require (a missing or unreadable camera JSON is an error) or default "
            "(fall back to data.baseline / data.focal_length)",
        )
        _check(
            self.crop_bottom is None or 0.0 <= self.crop_bottom < 1.0,
            f"{p}.crop_bottom",
            self.crop_bottom,
            "null (0.25 for the Cityscapes layout, 0 otherwise) or a fraction in [0, 1)",
        )
        _check(all(s > 0 for s in self.img_size), f"{p}.img_size", self.img_size, "positive sizes")
        _check(self.batch_size >= 1, f"{p}.batch_size", self.batch_size, "an integer >= 1")
        _check(
            0 <= self.num_workers <= MAX_NUM_WORKERS,
            f"{p}.num_workers",
            self.num_workers,
            f"an integer in [0, {MAX_NUM_WORKERS}]",
        )
        _check(
            self.num_cities is None or self.num_cities >= 1,
            f"{p}.num_cities",
            self.num_cities,
            "null or an integer >= 1",
        )
        _check(
            math.isfinite(self.min_depth) and self.min_depth > 0,
            f"{p}.min_depth",
            self.min_depth,
            "a finite number > 0 (metres)",
        )
        _check(
            math.isfinite(self.max_depth) and self.max_depth > self.min_depth,
            f"{p}.max_depth",
            self.max_depth,
            f"a finite number > data.min_depth ({self.min_depth}) (metres)",
        )
        _check(self.baseline > 0, f"{p}.baseline", self.baseline, "a number > 0 (metres)")
        _check(
            self.focal_length > 0, f"{p}.focal_length", self.focal_length, "a number > 0 (pixels)"
        )


@dataclass(frozen=True)
class EvaluationConfig:
    """How ``evaluate`` scores a split (the report states the resulting protocol in one line)."""

    resolution: str = "full"
    centre_crop: bool = False
    median_scaling: bool = True

    def _validate(self, p: str) -> None:
        _check(
            self.resolution in ("full", "model"),
            f"{p}.resolution",
            self.resolution,
            "full (prediction upsampled to the full-resolution ground truth) or model "
            "(ground truth at data.img_size)",
        )


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "vit_base_patch16_224"
    pretrained: bool = True
    pretrained_path: str | None = None
    decoder_features: int = 256
    hooks: tuple[int, ...] = (2, 5, 8, 11)

    def _validate(self, p: str) -> None:
        _check(bool(self.encoder), f"{p}.encoder", self.encoder, "a timm ViT model name")
        _check(
            self.decoder_features >= 8,
            f"{p}.decoder_features",
            self.decoder_features,
            "an integer >= 8",
        )
        _check(
            len(self.hooks) == 4
            and all(h >= 0 for h in self.hooks)
            and list(self.hooks) == sorted(set(self.hooks)),
            f"{p}.hooks",
            list(self.hooks),
            "four increasing block indices >= 0",
        )


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 50
    encoder_lr: float = 1e-5
    decoder_lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_epochs: int = 3
    scheduler: str = "cosine"
    amp: bool = True
    grad_clip: float = 1.0
    patience: int = 10
    si_weight: float = 1.0
    si_lambda: float = 0.85
    grad_weight: float = 0.5
    seed: int = 42
    device: str = "auto"
    checkpoint_dir: str = "saved_models"
    max_train_batches: int | None = None
    init_from: str = ""
    val_every: int = 1
    checkpoint_every: int = 1
    threads: int = 0
    num_nodes: int = 1
    procs_per_node: int = 1
    sync_batchnorm: bool = False
    launcher: str = "trainjob"
    train_gpu: int = 0
    micro_batch_size: int | None = None
    dist_timeout_s: float = 1800.0
    job_timeout_s: int = 86400
    runtime: str = "torch-distributed"
    node_selector: tuple[str, ...] = ()
    tolerations: tuple[str, ...] = ()
    shared_pvc: str = ""
    mlflow_secret: str = ""
    storage_secret: str = ""

    def _validate(self, p: str) -> None:
        _check(self.epochs >= 0, f"{p}.epochs", self.epochs, "an integer >= 0")
        for name in (
            "encoder_lr",
            "decoder_lr",
            "weight_decay",
            "grad_clip",
            "si_weight",
            "grad_weight",
        ):
            v = getattr(self, name)
            _check(v >= 0, f"{p}.{name}", v, "a number >= 0")
        _check(0.0 <= self.si_lambda <= 1.0, f"{p}.si_lambda", self.si_lambda, "a number in [0, 1]")
        _check(self.warmup_epochs >= 0, f"{p}.warmup_epochs", self.warmup_epochs, "an integer >= 0")
        _check(
            self.scheduler in ("cosine", "constant"),
            f"{p}.scheduler",
            self.scheduler,
            "one of cosine, constant",
        )
        _check(self.patience >= 1, f"{p}.patience", self.patience, "an integer >= 1")
        _check(
            self.device in ("auto", "cpu", "cuda"),
            f"{p}.device",
            self.device,
            "one of auto, cpu, cuda",
        )
        _check(
            self.max_train_batches is None or self.max_train_batches >= 1,
            f"{p}.max_train_batches",
            self.max_train_batches,
            "null or an integer >= 1",
        )
        _check(self.val_every >= 1, f"{p}.val_every", self.val_every, "an integer >= 1 (epochs)")
        _check(
            self.checkpoint_every >= 1,
            f"{p}.checkpoint_every",
            self.checkpoint_every,
            "an integer >= 1 (epochs)",
        )
        _check(
            0 <= self.threads <= 1024,
            f"{p}.threads",
            self.threads,
            "0 (from the CPUs the process may use) or a thread count in [1, 1024]",
        )
        _check(self.num_nodes >= 1, f"{p}.num_nodes", self.num_nodes, "an integer >= 1")
        _check(
            self.procs_per_node >= 1, f"{p}.procs_per_node", self.procs_per_node, "an integer >= 1"
        )
        _check(
            self.launcher in ("trainjob", "pytorchjob"),
            f"{p}.launcher",
            self.launcher,
            "one of trainjob, pytorchjob",
        )
        _check(self.train_gpu >= 0, f"{p}.train_gpu", self.train_gpu, "an integer >= 0")
        _check(
            self.micro_batch_size is None or self.micro_batch_size >= 1,
            f"{p}.micro_batch_size",
            self.micro_batch_size,
            "null or an integer >= 1",
        )
        _check(self.dist_timeout_s > 0, f"{p}.dist_timeout_s", self.dist_timeout_s, "seconds > 0")
        _check(self.job_timeout_s >= 1, f"{p}.job_timeout_s", self.job_timeout_s, "seconds >= 1")
        _check(bool(self.runtime), f"{p}.runtime", self.runtime, "a TrainingRuntime name")
        for i, item in enumerate(self.node_selector):
            k, eq, v = item.partition("=")
            _check(bool(k) and eq == "=", f"{p}.node_selector[{i}]", item, "'key=value'")


@dataclass(frozen=True)
class AugmentationConfig:
    hflip_prob: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.05
    crop_prob: float = 0.5
    crop_scale: tuple[float, float] = (0.7, 1.0)

    def _validate(self, p: str) -> None:
        for name in ("hflip_prob", "crop_prob"):
            v = getattr(self, name)
            _check(0.0 <= v <= 1.0, f"{p}.{name}", v, "a probability in [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            _check(v >= 0.0, f"{p}.{name}", v, "a number >= 0")
        _check(0.0 <= self.hue <= 0.5, f"{p}.hue", self.hue, "a number in [0, 0.5]")
        lo, hi = self.crop_scale
        _check(
            0.0 < lo <= hi <= 1.0,
            f"{p}.crop_scale",
            list(self.crop_scale),
            "[low, high] with 0 < low <= high <= 1",
        )


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "depth-estimation"
    run_name: str | None = None
    model_name: str = "ViT+Decoder"

    def _validate(self, p: str) -> None:
        _check(
            bool(self.tracking_uri),
            f"{p}.tracking_uri",
            self.tracking_uri,
            "an MLflow tracking URI (sqlite:///..., http://...)",
        )
        _check(bool(self.experiment), f"{p}.experiment", self.experiment, "a non-empty name")
        _check(bool(self.model_name), f"{p}.model_name", self.model_name, "a non-empty name")


@dataclass(frozen=True)
class PromotionConfig:
    min_improvement: float = 0.0
    lock_timeout_s: int = 600
    challenger_ttl_s: int = 7200

    def _validate(self, p: str) -> None:
        _check(
            self.min_improvement >= 0,
            f"{p}.min_improvement",
            self.min_improvement,
            "a number >= 0 (metres of test RMSE)",
        )
        _check(
            self.lock_timeout_s >= 1,
            f"{p}.lock_timeout_s",
            self.lock_timeout_s,
            "an integer >= 1 (seconds to wait for the registry's promotion lock)",
        )
        _check(
            self.challenger_ttl_s >= 60,
            f"{p}.challenger_ttl_s",
            self.challenger_ttl_s,
            "an integer >= 60 (seconds a registered challenger counts as being rolled out)",
        )


@dataclass(frozen=True)
class ExportConfig:
    onnx_path: str = "saved_models/model.onnx"
    opset: int = 17
    parity_atol: float = 1e-3
    tensorrt: bool = False
    trt_path: str = "saved_models/model.plan"
    trt_fp16: bool = True
    trt_min_batch: int = 1
    trt_opt_batch: int = 4
    trt_max_batch: int = 8
    triton_model_name: str = "depth"
    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = (4, 8)
    max_queue_delay_us: int = 2000
    instance_count: int = 1
    repository_dir: str = "saved_models/triton_repository"
    hf_repo_id: str = ""

    def _validate(self, p: str) -> None:
        _check(13 <= self.opset <= 21, f"{p}.opset", self.opset, "an ONNX opset in [13, 21]")
        _check(self.parity_atol > 0, f"{p}.parity_atol", self.parity_atol, "a number > 0")
        _check(
            1 <= self.trt_min_batch <= self.trt_opt_batch <= self.trt_max_batch,
            f"{p}.trt_opt_batch",
            (self.trt_min_batch, self.trt_opt_batch, self.trt_max_batch),
            "1 <= trt_min_batch <= trt_opt_batch <= trt_max_batch",
        )
        _check(
            self.max_batch_size >= 1, f"{p}.max_batch_size", self.max_batch_size, "an integer >= 1"
        )
        _check(
            all(1 <= b <= self.max_batch_size for b in self.preferred_batch_sizes),
            f"{p}.preferred_batch_sizes",
            list(self.preferred_batch_sizes),
            f"sizes in [1, export.max_batch_size={self.max_batch_size}]",
        )
        _check(
            self.max_queue_delay_us >= 0,
            f"{p}.max_queue_delay_us",
            self.max_queue_delay_us,
            "an integer >= 0 (microseconds)",
        )
        _check(
            self.instance_count >= 1, f"{p}.instance_count", self.instance_count, "an integer >= 1"
        )
        _check(
            bool(self.triton_model_name) and "/" not in self.triton_model_name,
            f"{p}.triton_model_name",
            self.triton_model_name,
            "a model name without '/'",
        )
        _check(
            self.hf_repo_id == "" or self.hf_repo_id.count("/") == 1,
            f"{p}.hf_repo_id",
            self.hf_repo_id,
            "'' (skip) or 'owner/name'",
        )


@dataclass(frozen=True)
class DeployConfig:
    target: str = "local"
    strategy: str = "canary"
    canary_steps: tuple[int, ...] = (10, 50, 100)
    probe_images: int = 16
    max_error_rate: float = 0.0
    max_latency_ratio: float = 1.5
    max_disagreement: float = 0.3
    namespace: str = "kubeflow-user-example-com"
    name: str = "depth"
    service_account: str = "depth-pipeline"
    storage_uri: str = ""
    timeout_s: int = 600

    def _validate(self, p: str) -> None:
        _check(
            self.target in ("local", "kserve"), f"{p}.target", self.target, "one of local, kserve"
        )
        _check(
            self.strategy in ("replace", "canary"),
            f"{p}.strategy",
            self.strategy,
            "one of replace, canary",
        )
        steps = list(self.canary_steps)
        _check(
            bool(steps)
            and all(1 <= s <= 100 for s in steps)
            and steps == sorted(set(steps))
            and steps[-1] == 100,
            f"{p}.canary_steps",
            steps,
            "increasing traffic percentages in [1, 100] ending with 100 (the promotion)",
        )
        _check(self.probe_images >= 1, f"{p}.probe_images", self.probe_images, "an integer >= 1")
        _check(
            0.0 <= self.max_error_rate <= 1.0,
            f"{p}.max_error_rate",
            self.max_error_rate,
            "a fraction in [0, 1] of failed probe requests",
        )
        _check(
            self.max_latency_ratio > 0,
            f"{p}.max_latency_ratio",
            self.max_latency_ratio,
            "a number > 0 (challenger p95 / champion p95)",
        )
        _check(
            self.max_disagreement > 0,
            f"{p}.max_disagreement",
            self.max_disagreement,
            "a number > 0 (AbsRel of the challenger's depth against the champion's)",
        )
        _check(self.timeout_s >= 1, f"{p}.timeout_s", self.timeout_s, "an integer >= 1")


@dataclass(frozen=True)
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)

    def _validate(self, p: str) -> None:
        # Across sections: the encoder family and img_size vs its patch size, from a name list
        # (no timm import), so a bad value fails before any data work.
        from depth_common.encoders import EncoderError, check_encoder

        try:
            check_encoder(self.model.encoder, self.data.img_size)
        except EncoderError as exc:
            raise ConfigError(str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, not tuples): YAML/JSON/MLflow/checkpoint friendly."""
        return _plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for MLflow params."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}

    def with_overrides(self, overrides: Iterable[str] = ()) -> Params:
        """A copy with ``section.key=value`` overrides applied and validated."""
        return params_from_dict(self.to_dict(), overrides)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in the dataclass's form."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if tp is bool:
        _check(isinstance(value, bool), key, value, "true or false")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
        return value
    if tp is float:
        _check(
            isinstance(value, int | float) and not isinstance(value, bool), key, value, "a number"
        )
        return float(value)
    if tp is str:
        _check(isinstance(value, str), key, value, "a string")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if key.endswith(".img_size"):
            if isinstance(value, int) and not isinstance(value, bool):
                value = [value, value]  # a square size given as one int
            _check(
                isinstance(value, list | tuple) and len(value) == 2,
                key,
                value,
                "an integer or [height, width]",
            )
        _check(isinstance(value, list | tuple), key, value, "a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        _check(len(value) == len(args), key, value, f"a list of {len(args)} values")
        return tuple(
            _coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    raise TypeError(f"unsupported annotation {tp} for {key}")  # a bug in this module


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        _fail(prefix, raw, "a mapping of keys")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            _fail(
                f"{prefix}.{key}" if prefix else str(key),
                raw[key],
                f"no such key; known keys: {', '.join(sorted(known))}",
            )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], raw[f.name] or {}, key)
        else:
            kwargs[f.name] = _coerce(key, raw[f.name], hints[f.name])
    obj = cls(**kwargs)
    if hasattr(obj, "_validate"):
        obj._validate(prefix)
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"training.epochs=2"`` → ``(["training", "epochs"], 2)`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, _, value = text.partition("=")
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {text!r}: expected section.key=value, got key {key!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return parts, parsed


def params_from_dict(raw: Mapping[str, Any], overrides: Iterable[str] = ()) -> Params:
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for text in overrides:
        (section, key), value = parse_override(text)
        if section not in {f.name for f in dataclasses.fields(Params)}:
            raise ConfigError(
                f"{section}.{key}: no such section; known sections: "
                + ", ".join(f.name for f in dataclasses.fields(Params))
            )
        sec = merged.setdefault(section, {})
        if not isinstance(sec, dict):
            _fail(section, sec, "a mapping of keys")
        sec[key] = value
    return _build(Params, merged, "")


def data_config_from_dict(raw: Mapping[str, Any]) -> DataConfig:
    """``{"data": {...}}`` (configure's ``data_params``) → a validated ``DataConfig`` alone.

    Preprocessing depends on the data section only; validating it without the rest keeps a
    model setting (another encoder's patch size) from failing a step that does not use it.
    """
    if not isinstance(raw, Mapping) or set(raw) - {"data"}:
        _fail("data_params", raw, "a mapping with the one key 'data'")
    return _build(DataConfig, raw.get("data") or {}, "data")


def load_params(path: str | Path = "params.yaml", overrides: Iterable[str] = ()) -> Params:
    """Read ``path`` (YAML), apply ``section.key=value`` overrides, validate, freeze."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the params file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "expected a YAML params file saved as UTF-8"
        ) from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        return params_from_dict(raw, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
