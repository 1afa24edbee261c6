"""The local Triton's copy of a model repository, built from an allow-list of the config.

The ``tritonserver`` bundled in ``nvidia-pytriton`` has the Python backend only, so the local
server serves a *copy* of the cluster repository: each model's ``config.pbtxt`` says
``backend: "python"`` and each version directory gets the project's own ``model.py``
(:mod:`depth_common.serving.python_backend`) beside a symlink to the model's ONNX file.

The repository is not trusted. The copy is written from scratch with only what serving the
ONNX model needs -- name, inputs, outputs, ``max_batch_size``, ``dynamic_batching`` (preferred
sizes, queue delay), instance counts, the version policy (the local canary serves two
versions), warm-up on zero/random data, and the model file -- so no
``parameters`` entry of the repository reaches the Python backend (``EXECUTION_ENV_PATH`` would
make it source an archive of the repository's choosing), no file of the repository other than
the ONNX model is used, and ``default_model_filename`` must be a plain file name inside the
version directory (a ``../`` name would place the symlink outside the copy). A model the copy
cannot serve safely is refused with the reason; GPU-only models (TensorRT plans, ``KIND_GPU``)
are left out with a logged note.

Nor may it ask for unbounded resources (:func:`check_resources`, before anything is written or
started): at most :data:`~depth_common.config.serving.MAX_INSTANCES` instances in all (Triton
starts one process per instance), batch sizes up to
:data:`~depth_common.config.serving.MAX_BATCH`, a queue delay up to
:data:`~depth_common.config.serving.MAX_QUEUE_DELAY_US` microseconds, and warm-ups of at most
:data:`MAX_WARMUP_COUNT` runs over at most :data:`MAX_WARMUP_ELEMENTS` values an input; a
config over a limit is refused naming the field.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from depth_common.config.serving import MAX_BATCH, MAX_INSTANCES, MAX_QUEUE_DELAY_US
from depth_common.errors import RepositoryError
from depth_common.serving.camera import CANONICAL_FOCAL_PARAMETER
from depth_common.threads import decide_threads

log = logging.getLogger(__name__)

_ONNX_PLATFORMS = {"onnxruntime_onnx"}
_ONNX_BACKENDS = {"onnxruntime"}
# Triton model names: what a directory name and a URL path segment can both hold.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_PLAIN_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
#: The only ``parameters`` the copy carries over: ONNX Runtime intra-op threads (an integer)
#: and the canonical camera's focal (a number of pixels, read by the transformer).
THREADS_PARAMETER = "intra_op_thread_count"
PYTHON_MODEL = Path(__file__).with_name("python_backend.py")
#: Most runs of one warm-up sample, and most warm-up samples of one model.
MAX_WARMUP_COUNT = 100
MAX_WARMUP_SAMPLES = 16
#: Most values (batch x dims) of one warm-up input: 64 Mi, 256 MiB of FP32.
MAX_WARMUP_ELEMENTS = 1 << 26


def runs_on_cpu(config: mc.ModelConfig) -> str | None:
    """``None`` if the python-backend copy can serve ``config``, else why not."""
    if config.platform not in _ONNX_PLATFORMS and config.backend not in _ONNX_BACKENDS:
        return f"platform {config.platform or config.backend!r} is not ONNX (GPU-only here)"
    if any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in config.instance_group):
        return "its instance_group asks for KIND_GPU"
    return None


def model_file_name(config: mc.ModelConfig, where: Path) -> str:
    """``default_model_filename`` (default ``model.onnx``), refused unless a plain file name."""
    name = config.default_model_filename or "model.onnx"
    if not _PLAIN_FILE.match(name) or name in (".", ".."):
        raise RepositoryError(
            f"{where}: default_model_filename {name!r} is not a plain file name "
            "(expected e.g. 'model.onnx': letters, digits, '_', '-', '.', no '/')"
        )
    return name


def _over(where: Path, field: str, value: int, limit: int, unit: str) -> RepositoryError:
    return RepositoryError(f"{where}: {field} {value:,} is over the limit of {limit:,} {unit}")


def _check_warmup(config: mc.ModelConfig, where: Path) -> None:
    if len(config.model_warmup) > MAX_WARMUP_SAMPLES:
        raise _over(where, "model_warmup", len(config.model_warmup), MAX_WARMUP_SAMPLES, "samples")
    for sample in config.model_warmup:
        field = f"model_warmup {sample.name!r}"
        if sample.count > MAX_WARMUP_COUNT:
            raise _over(where, f"{field} count", sample.count, MAX_WARMUP_COUNT, "runs")
        if sample.batch_size > max(1, config.max_batch_size):
            raise _over(where, f"{field} batch_size", sample.batch_size,
                        max(1, config.max_batch_size), "(max_batch_size)")  # fmt: skip
        for key, inp in sample.inputs.items():
            elements = max(1, sample.batch_size)
            for d in inp.dims:
                elements *= max(1, d)
            if any(d < 0 for d in inp.dims) or elements > MAX_WARMUP_ELEMENTS:
                raise _over(where, f"{field} input {key!r} batch x dims {list(inp.dims)}",
                            elements, MAX_WARMUP_ELEMENTS, "values")  # fmt: skip


def check_resources(config: mc.ModelConfig, where: Path) -> None:
    """Refuse a config asking for more instances, batch, queue delay or warm-up than the
    limits of the module docstring (:class:`RepositoryError` naming ``where`` and the field)."""
    instances = sum(max(1, g.count) for g in config.instance_group)
    if instances > MAX_INSTANCES:
        raise _over(where, "instance_group count (in all)", instances, MAX_INSTANCES, "instances")
    if config.max_batch_size > MAX_BATCH:
        raise _over(where, "max_batch_size", config.max_batch_size, MAX_BATCH, "images")
    batching = config.dynamic_batching
    for size in batching.preferred_batch_size:
        if not 1 <= size <= max(1, config.max_batch_size):
            raise RepositoryError(
                f"{where}: dynamic_batching preferred_batch_size {size} is outside "
                f"[1, max_batch_size={config.max_batch_size}]"
            )
    delay = batching.max_queue_delay_microseconds
    if delay > MAX_QUEUE_DELAY_US:
        raise _over(where, "dynamic_batching max_queue_delay_microseconds", delay,
                    MAX_QUEUE_DELAY_US, "microseconds")  # fmt: skip
    _check_warmup(config, where)


def _copy_tensors(src, dst) -> None:  # noqa: ANN001 - repeated protobuf fields
    for tensor in src:
        out = dst.add()
        out.name, out.data_type = tensor.name, tensor.data_type
        out.dims.extend(tensor.dims)


def _copy_warmup(config: mc.ModelConfig, local: mc.ModelConfig, where: Path) -> None:
    """Warm-up samples on zero or random data only (``input_data_file`` reads a file)."""
    for sample in config.model_warmup:
        sources = {inp.WhichOneof("input_data_type") for inp in sample.inputs.values()}
        if "input_data_file" in sources:
            log.warning("%s: leaving out warm-up %r (reads an input file)", where, sample.name)
            continue
        out = local.model_warmup.add()
        out.name, out.batch_size, out.count = sample.name, sample.batch_size, sample.count
        for key, inp in sample.inputs.items():
            target = out.inputs[key]
            target.data_type = inp.data_type
            target.dims.extend(inp.dims)
            if inp.WhichOneof("input_data_type") == "random_data":
                target.random_data = True
            else:
                target.zero_data = True


def _threads_parameter(config: mc.ModelConfig, intra_op_threads: int) -> str:
    if intra_op_threads > 0:
        return str(intra_op_threads)
    param = config.parameters.get(THREADS_PARAMETER)
    value = param.string_value if param is not None else ""
    if value.isdigit():
        return value
    # None set: the CPUs this server may use, shared by the model's instances (thread policy).

    instances = sum(g.count or 1 for g in config.instance_group) or 1
    return str(decide_threads(share=instances).intra_op)


def localize_model_config(
    config: mc.ModelConfig, onnx_file: str, intra_op_threads: int = 0
) -> mc.ModelConfig:
    """The python-backend config built from the allow-listed fields of ``config``.

    ``onnx_file`` is the checked model file name (a ``parameters`` entry for ``model.py``).
    ``intra_op_threads`` > 0 sets ``intra_op_thread_count`` (the parameter Triton's ONNX Runtime
    backend reads); 0 keeps the repository's own value when it is an integer, and where it has
    none sets the thread policy's count for this process's CPUs over the model's instances.
    """
    local = mc.ModelConfig(name=config.name, backend="python")
    local.max_batch_size = config.max_batch_size
    _copy_tensors(config.input, local.input)
    _copy_tensors(config.output, local.output)
    if config.HasField("dynamic_batching"):
        batching = config.dynamic_batching
        local.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_size)
        local.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_microseconds
    for group in config.instance_group or [mc.ModelInstanceGroup(count=1)]:
        local.instance_group.add(count=max(1, group.count), kind=mc.ModelInstanceGroup.KIND_CPU)
    if config.HasField("version_policy"):
        local.version_policy.CopyFrom(config.version_policy)
    _copy_warmup(config, local, Path(config.name))
    local.parameters["onnx_file"].string_value = onnx_file
    local.parameters[THREADS_PARAMETER].string_value = _threads_parameter(config, intra_op_threads)
    focal = _canonical_focal_parameter(config)
    if focal:
        local.parameters[CANONICAL_FOCAL_PARAMETER].string_value = focal
    return local


def _canonical_focal_parameter(config: mc.ModelConfig) -> str:
    """The ``canonical_focal_px`` parameter if it is a plain positive finite number, else ""."""
    param = config.parameters.get(CANONICAL_FOCAL_PARAMETER)
    value = param.string_value if param is not None else ""
    try:
        number = float(value)
    except ValueError:
        return ""
    return repr(number) if math.isfinite(number) and number > 0 else ""


def _parse(config_path: Path) -> mc.ModelConfig:
    try:
        return text_format.Parse(config_path.read_text(), mc.ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{config_path}: not a valid Triton model config ({exc})") from exc


def _versions(model_dir: Path, onnx_file: str, repository: Path) -> list[Path]:
    """Numeric version directories holding the model file, each a file inside ``repository``."""
    versions = []
    for version in sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        model = version / onnx_file
        if not model.is_file():
            continue
        if not model.resolve().is_relative_to(repository):
            raise RepositoryError(
                f"{model}: resolves to {model.resolve()}, outside the repository {repository}"
            )
        versions.append(version)
    if not versions:
        raise RepositoryError(
            f"{model_dir}: no version directory holds {onnx_file} "
            f"(expected {model_dir}/1/{onnx_file})"
        )
    return versions


def _copy_model(
    model_dir: Path, out_dir: Path, repository: Path, intra_op_threads: int
) -> str | None:
    """Write one model's copy; its name, or None when it is left out (GPU-only)."""
    config_path = model_dir / "config.pbtxt"
    if not _MODEL_NAME.match(model_dir.name):
        raise RepositoryError(f"{model_dir}: model directory name is not a valid model name")
    config = _parse(config_path)
    if config.name and config.name != model_dir.name:
        raise RepositoryError(
            f"{config_path}: name {config.name!r} differs from its directory {model_dir.name!r}"
        )
    config.name = model_dir.name
    why_not = runs_on_cpu(config)
    if why_not:
        log.warning("local Triton: leaving out model %r: %s", model_dir.name, why_not)
        return None
    onnx_file = model_file_name(config, config_path)
    check_resources(config, config_path)
    local_dir = out_dir / model_dir.name
    for version in _versions(model_dir, onnx_file, repository):
        (local_dir / version.name).mkdir(parents=True)
        os.symlink((version / onnx_file).resolve(), local_dir / version.name / onnx_file)
        shutil.copyfile(PYTHON_MODEL, local_dir / version.name / "model.py")
    local = localize_model_config(config, onnx_file, intra_op_threads)
    (local_dir / "config.pbtxt").write_text(text_format.MessageToString(local))
    return model_dir.name


def build_local_repository(
    repository: str | Path, out_dir: str | Path, intra_op_threads: int = 0
) -> list[str]:
    """Write the Python-backend copy of ``repository`` into ``out_dir``; return model names.

    ``repository`` is only read. Each version's ONNX file is symlinked (never copied: a
    vit_base model is hundreds of MB) and gets ``model.py`` beside it. Raises
    :class:`RepositoryError` for a model the copy refuses, or when nothing can be served.
    """
    repository = Path(repository).resolve()
    out_dir = Path(out_dir)
    if not repository.is_dir():
        raise RepositoryError(
            f"{repository}: model repository is not a directory (build one with "
            "`python -m depth_common triton-repo`, or run the pipeline: `make run`)"
        )
    served: list[str] = []
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        if not (model_dir / "config.pbtxt").is_file():
            log.info("local Triton: skipping %s (no config.pbtxt)", model_dir.name)
            continue
        name = _copy_model(model_dir, out_dir, repository, intra_op_threads)
        if name is not None:
            served.append(name)
    if not served:
        raise RepositoryError(
            f"{repository}: no model the local (CPU, Python-backend) Triton can serve"
        )
    return served
