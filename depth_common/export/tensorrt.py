"""ONNX → TensorRT FP16 engine (``model.plan``) and its parity check (GPU only).

The runner (:class:`TrtRunner`) and the optional imports are in ``trt_runtime``; this module
re-exports them, so ``depth_common.export.tensorrt`` stays the one import of the whole API.

``tensorrt`` and the CUDA bindings are imported only inside the functions of this module, so
the rest of the project (and its tests) work on machines without them.

TensorRT 10 and 11 build the engine differently (docs/export.md, "TensorRT versions").
"""

from __future__ import annotations

# onnx, onnxruntime and modelopt are imported where an engine is built: modelopt and tensorrt
# exist only in the CUDA image, and the module must import on a CPU machine.
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from depth_common.atomic import atomic_path, scratch_dir, write_bytes
from depth_common.config import ExportConfig
from depth_common.errors import ParityError, TensorRTUnavailable
from depth_common.export.onnx import INPUT_NAME, OUTPUT_NAME, parity_inputs
from depth_common.export.triton import read_onnx_io
from depth_common.export.trt_runtime import TrtRunner, gpu_available, import_tensorrt

__all__ = [
    "DEFAULT_WORKSPACE_BYTES",
    "FP16_ATOL_M",
    "FP16_RTOL",
    "TensorRTUnavailable",
    "TrtExport",
    "TrtRunner",
    "build_engine",
    "check_trt_parity",
    "compare_outputs",
    "export_tensorrt",
    "gpu_available",
    "parity_batches",
    "profile_shapes",
]

#: Parity tolerance of the FP16 engine against FP32 ONNX Runtime, elementwise
#: ``|trt - ort| <= FP16_ATOL_M + FP16_RTOL * |ort|`` (depth in metres).
#:
#: Why these numbers: docs/export.md, "The FP16 parity tolerance".
FP16_ATOL_M = 0.05
FP16_RTOL = 1e-2
#: Builder scratch memory (bytes); TensorRT uses less when tactics need less.
DEFAULT_WORKSPACE_BYTES = 4 << 30


def profile_shapes(
    export_cfg: ExportConfig, img_size: tuple[int, int]
) -> dict[str, tuple[int, int, int, int]]:
    """The optimisation profile of the ``image`` input: min/opt/max ``(B, 3, H, W)``.

    Batch sizes come from ``export.trt_min_batch`` / ``trt_opt_batch`` / ``trt_max_batch``
    (TensorRT tunes kernels for ``opt``); H, W (pixels) are fixed by the ONNX model.
    """
    h, w = int(img_size[0]), int(img_size[1])
    return {
        "min": (export_cfg.trt_min_batch, 3, h, w),
        "opt": (export_cfg.trt_opt_batch, 3, h, w),
        "max": (export_cfg.trt_max_batch, 3, h, w),
    }


def parity_batches(export_cfg: ExportConfig) -> tuple[int, ...]:
    """Batch sizes the TensorRT parity check runs: the profile's min, opt and max."""
    return tuple(
        sorted({export_cfg.trt_min_batch, export_cfg.trt_opt_batch, export_cfg.trt_max_batch})
    )


def _fp16_onnx_for_strong_typing(onnx_path: Path, out_path: Path) -> Path:
    """TensorRT >= 11: FP32 ONNX → mixed-precision FP16 ONNX (FP32 I/O) with ModelOpt AutoCast."""
    try:
        import modelopt.onnx.autocast as autocast
    except ImportError as exc:
        raise TensorRTUnavailable(
            "TensorRT 11 has no FP16 builder flag; an FP16 engine needs the ONNX converted "
            f"with NVIDIA ModelOpt AutoCast ({exc}): pip install 'nvidia-modelopt[onnx]', or "
            "set export.trt_fp16=false for an FP32 engine"
        ) from exc
    import onnx

    converted = autocast.convert_to_mixed_precision(
        onnx_path=str(onnx_path), low_precision_type="fp16", keep_io_types=True
    )
    onnx.save(converted, str(out_path))
    return out_path


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    export_cfg: ExportConfig,
    *,
    timing_cache_path: str | Path | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> Path:
    """Build a serialized TensorRT engine from the ONNX model; write it atomically.

    - explicit-batch network parsed by ``OnnxParser`` (parser errors are raised with the
      node they concern);
    - one optimisation profile on ``image`` from :func:`profile_shapes`;
    - FP16 when ``export.trt_fp16`` (see the module docstring for TensorRT 10 vs 11);
    - a timing cache read from and written back to ``timing_cache_path`` (default
      ``<plan>.timing.cache``), so rebuilding on the same GPU model skips kernel timing.

    The plan is tied to the GPU model and TensorRT version it was built with: build it on the
    node type that serves it.
    """

    trt = import_tensorrt()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    img_size = read_onnx_io(onnx_path)  # validates image/depth names and shapes
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path = (
        Path(timing_cache_path)
        if timing_cache_path
        else plan_path.with_name(plan_path.name + ".timing.cache")
    )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    # TensorRT 8 needs EXPLICIT_BATCH for dynamic batch; 10 deprecates it (always explicit);
    # 11 drops the member. Setting it only where it exists keeps one code path.
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None:
        flags |= 1 << int(explicit)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)

    with scratch_dir(plan_path) as scratch:
        source = onnx_path
        if export_cfg.trt_fp16:
            if hasattr(trt.BuilderFlag, "FP16"):  # TensorRT <= 10: weak typing
                config.set_flag(trt.BuilderFlag.FP16)
            else:  # TensorRT >= 11: strongly typed only
                source = _fp16_onnx_for_strong_typing(onnx_path, Path(scratch) / "model_fp16.onnx")
        elif hasattr(trt.BuilderFlag, "TF32"):
            # TF32 (10-bit mantissa) is on by default for FP32 layers on Ampere and newer; an
            # engine requested as FP32 is held to the FP32 parity gate, so turn it off.
            config.clear_flag(trt.BuilderFlag.TF32)
        if not parser.parse_from_file(str(source)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser failed: {'; '.join(errors)}")

    shapes = profile_shapes(export_cfg, img_size)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)

    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    # ignore_mismatch=False: a cache from another GPU/TensorRT is rejected, not silently used.
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log)")
    write_bytes(plan_path, memoryview(serialized))
    write_bytes(cache_path, memoryview(config.get_timing_cache().serialize()))
    return plan_path


def compare_outputs(
    reference: np.ndarray, candidate: np.ndarray, *, atol: float, rtol: float
) -> dict[str, float]:
    """Elementwise ``|candidate - reference| <= atol + rtol * |reference|``.

    Returns ``max_abs_diff`` (m), ``max_rel_diff`` (relative to ``|reference|``, where it is
    non-zero) and ``worst_excess`` (max of ``|diff| - bound``; <= 0 means within tolerance,
    NaN/inf anywhere gives +inf).
    """
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {list(reference.shape)} vs {list(candidate.shape)}")
    ref = reference.astype(np.float64)
    diff = np.abs(candidate.astype(np.float64) - ref)
    if not np.all(np.isfinite(diff)):
        return {
            "max_abs_diff": float("inf"),
            "max_rel_diff": float("inf"),
            "worst_excess": float("inf"),
        }
    nonzero = np.abs(ref) > 0
    rel = diff[nonzero] / np.abs(ref[nonzero])
    return {
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(rel.max()) if rel.size else 0.0,
        "worst_excess": float(np.max(diff - (atol + rtol * np.abs(ref)))),
    }


def check_trt_parity(
    plan_path: str | Path,
    onnx_path: str | Path,
    batch_sizes: Sequence[int] = (1, 4, 8),
    *,
    atol: float = FP16_ATOL_M,
    rtol: float = FP16_RTOL,
    seed: int = 0,
    label: str | Path | None = None,
) -> dict[str, dict[str, float]]:
    """Compare the engine with FP32 ONNX Runtime on seeded inputs for each batch size.

    Returns ``{"batch_<n>": compare_outputs(...)}``; raises :class:`ParityError` naming the
    batch and the measured difference when any element is outside ``atol + rtol * |ort|``.
    See :data:`FP16_ATOL_M` / :data:`FP16_RTOL` for why these defaults. ``label`` names the
    plan in messages (default: ``plan_path``).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    results: dict[str, dict[str, float]] = {}
    with TrtRunner(plan_path) as runner:
        for batch in batch_sizes:
            x = parity_inputs(batch, runner.img_size, seed)
            (ref,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
            stats = compare_outputs(ref, runner.infer(x), atol=atol, rtol=rtol)
            results[f"batch_{batch}"] = stats
            if stats["worst_excess"] > 0:
                raise ParityError(
                    f"{label or plan_path}: TensorRT differs from ONNX Runtime on batch {batch}: max abs "
                    f"{stats['max_abs_diff']:.3g} m, max rel {stats['max_rel_diff']:.3g} "
                    f"(allowed {atol:g} m + {rtol:g} x |depth|)",
                    max_abs_diff=stats["max_abs_diff"],
                    atol=atol,
                    batch=batch,
                )
    return results


@dataclass(frozen=True)
class TrtExport:
    """A built and parity-checked engine: ``plan_path`` and per-batch parity statistics."""

    plan_path: Path
    parity: dict[str, dict[str, float]]
    fp16: bool


def export_tensorrt(
    onnx_path: str | Path,
    plan_path: str | Path,
    export_cfg: ExportConfig,
    *,
    timing_cache_path: str | Path | None = None,
) -> TrtExport:
    """Build the engine and gate it on parity with ONNX Runtime; a failing plan is not kept.

    An FP32 engine (``export.trt_fp16=false``) is held to the ONNX gate's ``parity_atol``;
    an FP16 engine to :data:`FP16_ATOL_M` / :data:`FP16_RTOL`.
    """
    plan_path = Path(plan_path)
    fp16 = export_cfg.trt_fp16
    cache = timing_cache_path or plan_path.with_name(plan_path.name + ".timing.cache")
    # Built under a temporary name and moved onto plan_path only after the parity gate.
    atol, rtol = (FP16_ATOL_M, FP16_RTOL) if fp16 else (export_cfg.parity_atol, 0.0)
    with atomic_path(plan_path) as tmp:
        build_engine(onnx_path, tmp, export_cfg, timing_cache_path=cache)
        parity = check_trt_parity(
            tmp, onnx_path, parity_batches(export_cfg), atol=atol, rtol=rtol, label=plan_path
        )
    return TrtExport(plan_path=plan_path, parity=parity, fp16=fp16)
