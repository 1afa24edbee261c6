"""The GPU check's command line, its input checks and the environment it records.

Everything here runs before the first result file is written: a bad input exits with a message
naming the option or the param and what was expected, and leaves nothing behind.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
from pathlib import Path
from typing import Any

from bench.bench_export import MODELS
from depth_common.cli.parser import add_params_arguments
from depth_common.config import Params, load_params
from depth_common.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
#: The measured model: params.yaml's default vit_base_patch16_224 DPT at 224x224, random weights.
DEFAULT_MODEL: tuple[str, ...] = MODELS["vit_base_224"]
LATENCY_BATCHES: tuple[int, ...] = (1, 8)
GPU_OUT = ROOT / "bench" / "results_gpu.json"
DRY_RUN_OUT = ROOT / "runs" / "gpu_check" / "dry_run.json"


class InputError(ValueError):
    """A command-line input or the machine is not what the check needs; the message says how."""


def _count(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: expected an integer >= {minimum}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value}: expected seconds > 0")
    return value


def parse_args(argv: list[str] | tuple[str, ...] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/gpu_check.py",
        description="TensorRT FP16, runtime latency and a CUDA AMP training step (one JSON + log)",
    )
    add_params_arguments(parser)
    parser.set_defaults(params=str(ROOT / "params.yaml"))
    parser.add_argument("--dry-run", action="store_true", help="no GPU: inputs + ONNX only")
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu: the full run's code on CPU (CPU figures, no TensorRT; for tests)",
    )
    parser.add_argument(
        "--out", type=Path, help=f"result JSON (default {GPU_OUT}; dry run {DRY_RUN_OUT})"
    )
    parser.add_argument("--log", type=Path, help="log file (default: --out with .log)")
    parser.add_argument("--work-dir", type=Path, help="scratch parent (default: system temp)")
    parser.add_argument("--train-steps", type=_count(2), default=50)
    parser.add_argument("--train-batch", type=_count(1), default=8)
    parser.add_argument(
        "--rehearsal-steps",
        type=_count(0),
        default=2,
        help="dry run: CPU training steps of the check's model, batch 2 (0: none)",
    )
    parser.add_argument("--latency-runs", type=_count(1), default=200, help="timed calls/cell")
    parser.add_argument("--latency-warmup", type=_count(0), default=10)
    parser.add_argument("--cell-budget-s", type=_seconds, default=8.0, help="per latency cell")
    parser.add_argument(
        "--deadline-s",
        type=_seconds,
        default=420.0,
        help="sections not started by then are skipped (default 420: 7 minutes)",
    )
    args = parser.parse_args(argv)
    if args.rehearsal_steps == 1:
        parser.error("--rehearsal-steps: got 1, expected 0 (none) or >= 2 (a loss trend)")
    args.mode = "dry-run" if args.dry_run else {"cuda": "gpu", "cpu": "cpu"}[args.device]
    if args.out is None:
        if args.mode == "cpu":
            parser.error("--device cpu: give --out (bench/results_gpu.json is for the GPU run)")
        args.out = DRY_RUN_OUT if args.dry_run else GPU_OUT
    if args.log is None:
        args.log = args.out.with_suffix(".log")
    return args


def _check_paths(args: argparse.Namespace, model_bytes: int) -> list[str]:
    if args.out.suffix != ".json":
        raise InputError(f"--out {args.out}: expected a .json file")
    if args.log.resolve() == args.out.resolve():
        raise InputError(f"--log {args.log}: must differ from --out")
    for flag, path in (("--out", args.out), ("--log", args.log)):
        parent = path.parent
        if parent.exists() and not (parent.is_dir() and os.access(parent, os.W_OK)):
            raise InputError(f"{flag} {path}: {parent} is not a writable directory")
    work = args.work_dir or Path(os.environ.get("TMPDIR", "/tmp"))
    if not work.is_dir():
        raise InputError(f"--work-dir {work}: not a directory")
    # The ONNX file, its temporary copy and the engine are each about the FP32 weights' size.
    need, free = 3 * model_bytes, shutil.disk_usage(work).free
    if free < need:
        raise InputError(
            f"--work-dir {work}: {free / 2**30:.1f} GiB free, the check needs about "
            f"{need / 2**30:.1f} GiB (ONNX, its temporary copy and the engine)"
        )
    return [f"{work}: {free / 2**30:.0f} GiB free (needs ~{need / 2**30:.1f} GiB)"]


def _check_params(params: Params) -> list[str]:
    m, e = params.model, params.export
    if m.pretrained and m.pretrained_path is None:
        raise ConfigError(
            "model.pretrained: true loads weights from the hub, which a GPU node may not reach; "
            "set model.pretrained=false (random weights, the default here) or "
            "model.pretrained_path to a local weights file"
        )
    if not e.trt_fp16:
        raise ConfigError("export.trt_fp16: got false, expected true (the check is FP16)")
    lo, hi = e.trt_min_batch, e.trt_max_batch
    if not all(lo <= b <= hi for b in LATENCY_BATCHES):
        raise ConfigError(
            f"export.trt_min_batch/trt_max_batch: got [{lo}, {hi}], expected a profile that "
            f"holds the latency batches {list(LATENCY_BATCHES)}"
        )
    weights = f"weights {m.pretrained_path}" if m.pretrained_path else "random weights"
    return [
        f"model {m.encoder} at {'x'.join(map(str, params.data.img_size))} pixels, "
        f"decoder {m.decoder_features}, {weights}",
        f"engine profile batches min {lo} / opt {e.trt_opt_batch} / max {hi}",
    ]


def check_inputs(args: argparse.Namespace) -> tuple[Params, Any, list[str]]:
    """(params, the model, what was checked). Raises InputError / ConfigError / ValueError."""
    params = load_params(args.params, (*DEFAULT_MODEL, *args.set))
    checks = [f"params {args.params} + {len(args.set)} --set override(s): valid"]
    checks += _check_params(params)
    import torch

    if args.mode == "gpu" and not torch.cuda.is_available():
        raise InputError(
            f"no CUDA device visible to torch {torch.__version__} (CUDA build "
            f"{torch.version.cuda}); run with --dry-run on a machine without a GPU"
        )
    from depth_common.model.dpt import build_model

    torch.manual_seed(0)
    try:
        model = build_model(params).eval()  # the DPT's own checks: encoder, patch size, hooks
    except TypeError as exc:  # timm passes ViT-only arguments (img_size) to any model class
        raise ConfigError(
            f"model.encoder: {params.model.encoder!r} cannot be built as a ViT encoder ({exc})"
        ) from exc
    n_params = sum(p.numel() for p in model.parameters())
    checks.append(f"model built: {n_params / 1e6:.1f}M parameters")
    checks += _check_paths(args, 4 * n_params)
    args.config = describe_config(args, params)
    return params, model, checks


def describe_config(args: argparse.Namespace, params: Params) -> dict[str, Any]:
    """What was measured, as recorded in the result file."""
    from depth_common.export.tensorrt import FP16_ATOL_M, FP16_RTOL, profile_shapes

    m = params.model
    return {
        "encoder": m.encoder,
        "img_size": list(params.data.img_size),
        "decoder_features": m.decoder_features,
        "weights": str(m.pretrained_path) if m.pretrained_path else "random",
        "overrides": list(args.set),
        "opset": params.export.opset,
        "latency_batches": list(LATENCY_BATCHES),
        "latency_runs": args.latency_runs,
        "latency_warmup": args.latency_warmup,
        "cell_budget_s": args.cell_budget_s,
        "train_steps": args.train_steps,
        "train_batch": args.train_batch,
        "trt_profile": profile_shapes(params.export, params.data.img_size),
        "fp16_tolerance": {"atol_m": FP16_ATOL_M, "rtol": FP16_RTOL},
        "fp32_atol_m": params.export.parity_atol,
        "deadline_s": args.deadline_s,
        "device": "cpu" if args.mode != "gpu" else "cuda",
    }


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Versions, the GPU and which accelerated runtimes are importable."""
    import onnxruntime as ort
    import torch

    from depth_common.export.tensorrt import gpu_available

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        **{k: _version(k) for k in ("timm", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy")},
        "onnxruntime_providers": ort.get_available_providers(),
        "cuda_bindings": _version("cuda-bindings"),
        "modelopt": importlib.util.find_spec("modelopt") is not None,
    }
    if env["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
        }
        env["cudnn"] = torch.backends.cudnn.version()
    usable, detail = gpu_available()
    env["tensorrt"] = {"usable": usable, "version": _version("tensorrt"), "detail": detail}
    return env
