"""``Params`` (every section) and how it is read: ``params.yaml`` and the overlay files laid over
it (``params.demo.yaml``), ``section.key=value`` overrides (values parsed as YAML), the
pipeline's JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, model_validator

from depth_common.config.base import ConfigModel, reject_message, validate_section
from depth_common.config.cluster import ClusterConfig
from depth_common.config.data import DataConfig
from depth_common.config.encoders import check_encoder
from depth_common.config.sections import (
    AugmentationConfig,
    EvaluationConfig,
    MlflowConfig,
    ModelConfig,
    PromotionConfig,
    TrainingConfig,
)
from depth_common.config.serving import DeployConfig, ExportConfig
from depth_common.errors import ConfigError


class Params(ConfigModel):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _encoder_fits_img_size(self) -> Params:
        # The encoder family and img_size vs its patch size, from a name list (no timm
        # import), so a bad value fails before any data work.

        try:
            check_encoder(self.model.encoder, self.data.img_size)
        except ConfigError as exc:
            reject_message(str(exc))
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, not tuples): YAML/JSON/MLflow/checkpoint friendly."""
        return _plain(self.model_dump())

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for MLflow params."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}

    def with_overrides(self, overrides: Iterable[str] = ()) -> Params:
        """A copy with a user's ``section.key=value`` overrides applied and validated."""
        return params_from_dict(self.to_dict(), overrides)

    def updated(self, section: str, **values: Any) -> Params:
        """A copy with keys of one section changed (values the code computed, already typed)."""
        changed = getattr(self, section).model_copy(update=values)
        return self.model_copy(update={section: changed})


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
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
    """``{section: {key: value}}`` with ``section.key=value`` overrides → validated ``Params``."""
    merged: dict[str, Any] = {
        k: ({} if v is None else dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()
    }
    for text in overrides:
        (section, key), value = parse_override(text)
        if section not in Params.model_fields:
            raise ConfigError(
                f"{section}.{key}: no such section; known sections: "
                + ", ".join(Params.model_fields)
            )
        sec = merged.setdefault(section, {})
        if not isinstance(sec, dict):
            raise ConfigError(f"{section}: got {sec!r}, expected a mapping of keys")
        sec[key] = value
    return validate_section(Params, merged)


def data_config_from_dict(raw: Mapping[str, Any]) -> DataConfig:
    """``{"data": {...}}`` (configure's ``data_params``) → a validated ``DataConfig`` alone.

    Preprocessing depends on the data section only; validating it without the rest keeps a
    model setting (another encoder's patch size) from failing a step that does not use it.
    """
    if not isinstance(raw, Mapping) or set(raw) - {"data"}:
        raise ConfigError(f"data_params: got {raw!r}, expected a mapping with the one key 'data'")
    return validate_section(DataConfig, raw.get("data") or {}, "data")


def _read_params_file(path: Path) -> Mapping[str, Any]:
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
    return raw


def overlay_overrides(path: str | Path) -> tuple[str, ...]:
    """An overlay file (a partial params file such as ``params.demo.yaml``) as the
    ``section.key=value`` overrides it stands for, in file order: what a pipeline run takes
    as its ``params_overrides``. Values are written as JSON, which YAML reads back as is."""
    path = Path(path)
    raw = _read_params_file(path)
    overrides = []
    for section, keys in raw.items():
        if not isinstance(keys, Mapping):
            raise ConfigError(f"{path}: {section}: got {keys!r}, expected a mapping of keys")
        overrides += [f"{section}.{key}={json.dumps(value)}" for key, value in keys.items()]
    return tuple(overrides)


def load_params(
    path: str | Path | Sequence[str | Path] = "params.yaml", overrides: Iterable[str] = ()
) -> Params:
    """Read ``path`` (YAML) — or several files, each later one laid over the ones before it
    (``["params.yaml", "params.demo.yaml"]``) —, apply ``section.key=value`` overrides,
    validate, freeze."""
    paths = [Path(path)] if isinstance(path, str | Path) else [Path(p) for p in path]
    if not paths:
        raise ConfigError("params: expected at least one params file")
    base, overlays = paths[0], paths[1:]
    layered = [*(overlay_overrides(p) for p in overlays), tuple(overrides)]
    try:
        return params_from_dict(_read_params_file(base), [o for layer in layered for o in layer])
    except ConfigError as exc:
        raise ConfigError(f"{', '.join(map(str, paths))}: {exc}") from None
