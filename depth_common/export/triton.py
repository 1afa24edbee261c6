"""Triton model repository from the exported ONNX file (and optionally a TensorRT plan).

Layout (Triton's standard one; the version is the MLflow model version)::

    out_dir/
      depth/config.pbtxt              platform "onnxruntime_onnx"
      depth/<version>/model.onnx
      depth_trt/config.pbtxt          platform "tensorrt_plan", KIND_GPU   (only with a plan)
      depth_trt/<version>/model.plan

Every ``config.pbtxt`` is generated from Triton's own ``ModelConfig`` protobuf
(``tritonclient.grpc.model_config_pb2``) and parsed back with ``text_format.Parse`` after
writing, so a field name or enum Triton does not know fails here, not at server start.

H and W are read from the ONNX file's input shape, not from params, so the repository and the
model cannot disagree.

Versions: an existing repository gets the new version directory added and older version
directories are kept. Triton's default ``version_policy`` (``latest { num_versions: 1 }``)
serves only the newest, so an older version stays on disk for a rollback (point the policy at
it, or delete the newer directory) without being loaded. ``config.pbtxt`` is shared by all
versions of a model and is rewritten for the newest one.
"""

from __future__ import annotations

# onnx and tritonclient (its protobuf model config) are imported where a model is read or a
# config built: deploy.local imports this module, and each path needs one of them at most.
import os
import shutil
from pathlib import Path
from typing import Any

from depth_common.atomic import atomic_path, claim_dir, remove_leftovers, scratch_dir
from depth_common.config import ExportConfig
from depth_common.errors import DataError
from depth_common.export.onnx import (
    CANONICAL_FOCAL_KEY,
    INPUT_NAME,
    OUTPUT_NAME,
    file_sha256,
    read_metadata,
)
from depth_common.registry.lineage import ONNX_SHA256, carried

#: ``instance_group.kind`` values accepted for the ONNX model. KIND_AUTO is the default: Triton
#: places instances on the GPUs when the predictor pod has any and on the CPU otherwise, so the
#: same repository serves from a CPU-only or a GPU KServe predictor. KIND_GPU would make the
#: model fail to load on a CPU node; KIND_CPU would leave a GPU unused.
INSTANCE_KINDS: tuple[str, ...] = ("KIND_AUTO", "KIND_CPU", "KIND_GPU")
TRT_SUFFIX = "_trt"
ONNX_FILENAME = "model.onnx"
PLAN_FILENAME = "model.plan"
#: The frozen ``export`` defaults of params.yaml (a shared immutable default argument).
DEFAULT_EXPORT = ExportConfig()


def read_onnx_io(onnx_path: str | Path) -> tuple[int, int]:
    """Validate the ONNX interface and return (H, W) in pixels from its input shape.

    Expected: one input ``image`` float32 ``[batch, 3, H, W]`` and an output ``depth`` float32
    ``[batch, 1, H, W]`` with a dynamic batch axis and fixed H, W. Raises :class:`DataError`
    naming the file and what differs.
    """
    import onnx

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: ONNX file not found")
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others: all mean "not ONNX"
        raise DataError(f"{onnx_path}: not a readable ONNX model ({exc})") from exc
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]

    def dims(value_info: Any) -> list[int | str]:
        return [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim
        ]

    def find(values: list[Any], name: str, role: str) -> Any:
        for v in values:
            if v.name == name:
                return v
        raise DataError(
            f"{onnx_path}: expected an {role} named '{name}', found {[v.name for v in values]}"
        )

    image = find(inputs, INPUT_NAME, "input")
    depth = find(list(graph.output), OUTPUT_NAME, "output")
    for value, channels in ((image, 3), (depth, 1)):
        shape = dims(value)
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise DataError(f"{onnx_path}: '{value.name}' must be float32")
        if (
            len(shape) != 4
            or shape[1] != channels
            or not all(isinstance(d, int) for d in shape[2:])
        ):
            raise DataError(
                f"{onnx_path}: '{value.name}' has shape {shape}, expected "
                f"[batch, {channels}, H, W] with fixed H, W"
            )
        if isinstance(shape[0], int) and shape[0] > 0:
            raise DataError(
                f"{onnx_path}: '{value.name}' has a fixed batch size {shape[0]}, expected a "
                "dynamic batch axis (Triton batches requests along it)"
            )
    h, w = dims(image)[2:]
    if dims(depth)[2:] != [h, w]:
        raise DataError(
            f"{onnx_path}: output '{OUTPUT_NAME}' is {dims(depth)[2:]} pixels, input "
            f"'{INPUT_NAME}' is {[h, w]}: expected the same H, W"
        )
    return int(h), int(w)


def _model_config(
    name: str,
    platform: str,
    img_size: tuple[int, int],
    max_batch_size: int,
    preferred_batch_sizes: tuple[int, ...],
    max_queue_delay_us: int,
    instance_count: int,
    instance_kind: str,
) -> Any:
    from tritonclient.grpc import model_config_pb2 as mc

    h, w = img_size
    cfg = mc.ModelConfig(name=name, platform=platform, max_batch_size=max_batch_size)
    # dims exclude the batch axis: Triton adds it because max_batch_size > 0.
    cfg.input.add(name=INPUT_NAME, data_type=mc.TYPE_FP32, dims=[3, h, w])
    cfg.output.add(name=OUTPUT_NAME, data_type=mc.TYPE_FP32, dims=[1, h, w])
    cfg.dynamic_batching.preferred_batch_size.extend(
        sorted({b for b in preferred_batch_sizes if b <= max_batch_size})
    )
    cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    cfg.instance_group.add(
        count=instance_count, kind=mc.ModelInstanceGroup.Kind.Value(instance_kind)
    )
    # One zero image at batch 1 at load time: the first real request then does not pay for
    # session/kernel initialisation (the model only reports ready after warm-up).
    warm = cfg.model_warmup.add(name="zero_image_batch_1", batch_size=1)
    warm.inputs[INPUT_NAME].data_type = mc.TYPE_FP32
    warm.inputs[INPUT_NAME].dims.extend([3, h, w])
    warm.inputs[INPUT_NAME].zero_data = True
    return cfg


def onnx_model_config(
    name: str,
    img_size: tuple[int, int],
    export_cfg: ExportConfig = DEFAULT_EXPORT,
    instance_kind: str = "KIND_AUTO",
) -> Any:
    """``ModelConfig`` for the ONNX model (``platform: "onnxruntime_onnx"``)."""
    if instance_kind not in INSTANCE_KINDS:
        raise ValueError(f"instance_kind: got {instance_kind!r}, expected one of {INSTANCE_KINDS}")
    return _model_config(
        name,
        "onnxruntime_onnx",
        img_size,
        export_cfg.max_batch_size,
        export_cfg.preferred_batch_sizes,
        export_cfg.max_queue_delay_us,
        export_cfg.instance_count,
        instance_kind,
    )


def plan_model_config(
    name: str, img_size: tuple[int, int], export_cfg: ExportConfig = DEFAULT_EXPORT
) -> Any:
    """``ModelConfig`` for the TensorRT plan (``platform: "tensorrt_plan"``, KIND_GPU).

    ``max_batch_size`` is capped at the engine's optimisation-profile maximum
    (``export.trt_max_batch``): Triton refuses a plan whose profile cannot take the batch.
    """
    max_batch = min(export_cfg.max_batch_size, export_cfg.trt_max_batch)
    return _model_config(
        name,
        "tensorrt_plan",
        img_size,
        max_batch,
        export_cfg.preferred_batch_sizes,
        export_cfg.max_queue_delay_us,
        export_cfg.instance_count,
        "KIND_GPU",
    )


def parse_model_config(path: str | Path) -> Any:
    """Parse a ``config.pbtxt`` into ``model_config_pb2.ModelConfig`` (Triton's schema).

    Raises :class:`DataError` naming the file when it is not a valid model config.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    path = Path(path)
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except text_format.ParseError as exc:
        raise DataError(f"{path}: not a valid Triton model config ({exc})") from exc


def write_model_config(cfg: Any, path: str | Path) -> Path:
    """Write ``cfg`` as protobuf text to ``path`` atomically, then parse it back as the check."""
    from google.protobuf import text_format

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text_format.MessageToString(cfg))
        if parse_model_config(tmp) != cfg:
            raise DataError(f"{path}: config.pbtxt does not parse back to the config written")
    return path


def _stage_model(stage: Path, cfg: Any, version: int, src: Path, filename: str) -> None:
    """``stage/config.pbtxt`` + ``stage/<version>/<filename>`` (a copy of ``src``)."""
    (stage / str(version)).mkdir(parents=True)
    write_model_config(cfg, stage / "config.pbtxt")
    shutil.copyfile(src, stage / str(version) / filename)


def _install_model(stage: Path, model_dir: Path, version: int, trash: Path) -> None:
    """Move a staged model into an existing repository, keeping its other versions.

    Each step is a rename on one filesystem; a version directory being replaced (the same
    version exported again) is first moved to ``trash`` (outside the repository, deleted by the
    caller), so Triton never sees a half-copied version.
    """
    model_dir.mkdir(exist_ok=True)
    target = model_dir / str(version)
    if target.exists():
        target.rename(trash)
    (stage / str(version)).rename(target)
    os.replace(stage / "config.pbtxt", model_dir / "config.pbtxt")


def _with_parameters(cfg: Any, values: dict[str, str]) -> Any:
    """``cfg`` with ``values`` as its string ``parameters`` (Triton shows them in the model's
    config endpoint: a served model says where it came from)."""
    for key, value in sorted(values.items()):
        cfg.parameters[key].string_value = value
    return cfg


def build_triton_repository(
    onnx_path: str | Path,
    out_dir: str | Path,
    model_name: str = "depth",
    version: int = 1,
    plan_path: str | Path | None = None,
    export_cfg: ExportConfig = DEFAULT_EXPORT,
    instance_kind: str = "KIND_AUTO",
) -> Path:
    """Write (or add a version to) a Triton model repository; return ``out_dir``.

    ``version`` is the MLflow model version (int >= 1). With ``plan_path`` a second model
    ``<model_name>_trt`` serves the TensorRT engine on the GPU. Each ``config.pbtxt`` carries
    the ONNX file's lineage metadata and its SHA-256 as ``parameters``. A new repository is built in a
    temporary directory next to ``out_dir`` and renamed into place.
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version: got {version!r}, expected an integer >= 1 (MLflow version)")
    if not model_name or "/" in model_name or model_name.startswith("."):
        raise ValueError(f"model_name: got {model_name!r}, expected a plain directory name")
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    img_size = read_onnx_io(onnx_path)
    meta = read_metadata(onnx_path)
    lineage = {**carried(meta), ONNX_SHA256: file_sha256(onnx_path)}
    # The canonical camera travels from the ONNX metadata to every model's config parameters,
    # where the transformer reads it (Triton's model metadata has no free-form fields).
    if meta.get(CANONICAL_FOCAL_KEY):
        lineage[CANONICAL_FOCAL_KEY] = meta[CANONICAL_FOCAL_KEY]
    onnx_cfg = onnx_model_config(model_name, img_size, export_cfg, instance_kind)
    models: list[tuple[str, Any, Path, str]] = [
        (model_name, _with_parameters(onnx_cfg, lineage), onnx_path, ONNX_FILENAME)
    ]
    if plan_path is not None:
        plan_path = Path(plan_path)
        if not plan_path.is_file():
            raise FileNotFoundError(f"{plan_path}: TensorRT plan not found")
        trt_name = model_name + TRT_SUFFIX
        plan_cfg = _with_parameters(plan_model_config(trt_name, img_size, export_cfg), lineage)
        models.append((trt_name, plan_cfg, plan_path, PLAN_FILENAME))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir.parent, recursive=False)  # of exports killed half-way
    if not out_dir.exists():
        with atomic_path(out_dir) as tmp:
            for name, cfg, src, filename in models:
                _stage_model(tmp / name, cfg, version, src, filename)
        return out_dir

    if not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a directory (expected a Triton repository)")
    claim_dir(out_dir)  # never write versions into (or replace them in) a foreign directory
    # Staged next to the repository (same filesystem, so moves are renames) rather than inside
    # it, where Triton would take the staging directory for a model.
    with scratch_dir(out_dir) as staging:
        # Stage everything first: a failed copy leaves the served repository untouched.
        for name, cfg, src, filename in models:
            _stage_model(staging / name, cfg, version, src, filename)
        for name, _, _, _ in models:
            _install_model(staging / name, out_dir / name, version, staging / f"{name}.replaced")
    return out_dir
