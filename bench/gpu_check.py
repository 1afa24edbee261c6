"""GPU check: the TensorRT FP16 engine, runtime latency and a CUDA AMP training step → JSON + log.

    bash bench/gpu_check.sh                     # on a GPU node → bench/results_gpu.{json,log}
    python bench/gpu_check.py --dry-run         # anywhere: inputs + the vit_base@224 ONNX, no GPU
    python bench/gpu_check.py --dry-run --set model.encoder=vit_tiny_patch16_224 \\
        --set data.img_size=32 --set model.decoder_features=16     # the same, small and fast

The model is the project's DPT, ``vit_base_patch16_224`` at 224x224 with 256 decoder features
and random weights (nothing is downloaded); ``--set`` changes any param after that. Sections, in
order, each recorded as ``ok``, ``skipped`` (with the reason) or ``failed`` (with the error):

- ``inputs``: params, model, engine profile, output paths and free space (a bad one exits 2
  before anything is written);
- ``onnx``: the real exporter (:func:`depth_common.export.onnx.export_model`, parity gate vs
  PyTorch included): export seconds, size, parity;
- ``training``: 50 AdamW steps of the real model, AMP fp16 + GradScaler, batch 8: samples/s,
  peak memory, loss finite and decreasing (:mod:`bench.gpu_check_train`);
- ``tensorrt``: the FP16 engine via :mod:`depth_common.export.tensorrt` from a cold timing cache:
  build seconds, plan size, parity vs ONNX Runtime at the profile's batches (module tolerance);
- ``latency``: p50/p99 per runtime at batch 1 and 8 (TensorRT FP16, ONNX Runtime CUDA EP,
  torch CUDA FP32 and FP16 autocast, ONNX Runtime CPU), each with its parity vs ONNX Runtime CPU;
- ``triton_tensorrt_plan``: always skipped (it needs NVIDIA's Triton image).

``--dry-run`` runs ``inputs`` and ``onnx`` for real, marks the GPU sections skipped and
rehearses the training step on CPU (2 steps, batch 2) so that its code has run before GPU time
is spent; ``--device cpu`` runs the full run's code on CPU (CPU figures, no TensorRT: what the
tests use to exercise it). The JSON is rewritten atomically after every section (``complete``
is false until the end), so a run cut short keeps what it measured. Exit status: 0, 1 when a
section or a correctness target failed, 2 for bad inputs. Figures explained: docs/gpu-check.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import math
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_check_inputs import (  # noqa: E402  (after the sys.path line: run as a script)
    DEFAULT_MODEL,
    LATENCY_BATCHES,
    InputError,
    check_inputs,
    environment,
    parse_args,
)

log = logging.getLogger("gpu_check")
SCHEMA_VERSION = 1
#: The issue's speed goal: TensorRT FP16 p50 at batch 8 <= this x ONNX Runtime CUDA EP's.
TRT_VS_ORT_CUDA_GOAL = 0.5
TRITON_PLAN_REASON = (
    "serving the tensorrt_plan model needs NVIDIA's Triton server image (its tensorrt "
    "backend); the pip-installable tritonserver (nvidia-pytriton) has the python backend only"
)


class Report:
    """The result document, rewritten atomically to ``out`` after every change."""

    def __init__(self, out: Path, mode: str, config: dict[str, Any], start: float) -> None:
        self.out = out
        self.start = start  # time.perf_counter() when the check began (imports included)
        self.data: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "kind": "gpu_check",
            "mode": mode,
            "complete": False,
            "started_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "wall_s": 0.0,
            "config": config,
            "environment": {},
            "sections": {},
            "targets": [],
            "skipped": {},
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def write(self) -> None:
        from depth_common.data.io import save_json

        self.data["wall_s"] = round(self.elapsed(), 2)
        save_json(self.out, self.data)


def run_section(
    report: Report, name: str, fn: Callable[[], dict[str, Any]], deadline_s: float
) -> dict[str, Any]:
    """Run one section unless the time budget is spent; record ok/skipped/failed and write."""
    start = time.perf_counter()
    if report.elapsed() > deadline_s:
        result = {
            "status": "skipped",
            "reason": f"time budget: {report.elapsed():.0f} s of --deadline-s {deadline_s:g} "
            "were used before this section started",
        }
    else:
        log.info("== %s", name)
        try:
            result = fn()
        except Exception as exc:  # one broken section must not lose the others' figures
            log.exception("section %s failed", name)
            result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = round(time.perf_counter() - start, 2)
    report.data["sections"][name] = result
    status = result["status"].upper()
    log.info("%s %s (%.1f s)%s", status, name, result["seconds"], _why(result))
    report.write()
    return result


def _why(result: dict[str, Any]) -> str:
    return f": {result['reason']}" if result.get("reason") else ""


def onnx_section(model: Any, params: Any, work: Path) -> dict[str, Any]:
    from depth_common.export.onnx import build_metadata, export_model

    img_size = tuple(params.data.img_size)
    meta = build_metadata(
        encoder=params.model.encoder,
        img_size=img_size,
        max_depth=params.data.max_depth,
        run_id=None,
        checkpoint_sha256=None,
    )
    start = time.perf_counter()
    exported = export_model(
        model,
        work / "model.onnx",
        img_size=img_size,
        metadata=meta,
        opset=params.export.opset,
        atol=params.export.parity_atol,
    )
    return {
        "status": "ok",
        "export_s": time.perf_counter() - start,
        "size_mb": exported.path.stat().st_size / 1e6,
        "opset": exported.opset,
        "input": [exported.input_name, "batch", 3, *img_size],
        "output": [exported.output_name, "batch", 1, *img_size],
        "parity_vs_torch": exported.parity,
        "atol_m": params.export.parity_atol,
    }


DRY_RUN_SKIP = "--dry-run: a GPU section, not run"


def _needs_onnx(sections: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    onnx = sections["onnx"]
    if onnx["status"] == "ok":
        return None
    return {"status": "skipped", "reason": f"no ONNX model: onnx section {onnx['status']}"}


def tensorrt_section(
    args: argparse.Namespace, params: Any, work: Path, report: Report
) -> dict[str, Any]:
    from bench.gpu_check_infer import build_tensorrt

    if args.dry_run:
        detail = report.data["environment"]["tensorrt"]["detail"]
        return {"status": "skipped", "reason": f"{DRY_RUN_SKIP} (TensorRT here: {detail})"}
    return _needs_onnx(report.data["sections"]) or build_tensorrt(
        work / "model.onnx", work, params.export
    )


def latency_section(
    args: argparse.Namespace, model: Any, params: Any, work: Path, report: Report
) -> dict[str, Any]:
    import torch

    from bench.gpu_check_infer import measure_latency, runtimes, strict_fp32

    sections = report.data["sections"]
    if args.dry_run:
        return {"status": "skipped", "reason": DRY_RUN_SKIP}
    if missing := _needs_onnx(sections):
        return missing
    trt = sections["tensorrt"]
    plan = Path(trt["plan"]) if trt.get("plan") else None
    found: list[Any] = []
    try:
        found, skipped = runtimes(work / "model.onnx", model, torch.device(args.device), plan)
        if plan is None:
            skipped["tensorrt-fp16"] = f"no engine: tensorrt section {trt['status']}{_why(trt)}"
        for name, reason in skipped.items():
            log.info("latency: SKIPPED %s: %s", name, reason)
        with strict_fp32():
            result = measure_latency(
                found,
                tuple(params.data.img_size),
                LATENCY_BATCHES,
                params.export,
                runs=args.latency_runs,
                warmup=args.latency_warmup,
                budget_s=args.cell_budget_s,
            )
    finally:
        for rt in found:
            rt.close()
        model.cpu()  # free the GPU for the training step
    failed = [name for name, p in result["parity_vs_onnxruntime_cpu"].items() if not p["pass"]]
    status = {"status": "failed", "reason": f"parity outside tolerance: {failed}"} if failed else {}
    return {"status": "ok", **status, **result, "skipped": skipped}


def training_section(args: argparse.Namespace, params: Any) -> dict[str, Any]:
    import torch

    from bench.gpu_check_train import run_training

    if args.dry_run and args.rehearsal_steps == 0:
        return {"status": "skipped", "reason": "--dry-run: the CUDA training step needs a GPU"}
    if args.dry_run:
        rehearsal = run_training(
            params, torch.device("cpu"), steps=args.rehearsal_steps, batch=2, amp=False
        )
        keep = ("device", "amp", "params_m", "batch", "steps", "step_ms_p50", "losses")
        return {
            "status": "skipped",
            "reason": "--dry-run: the CUDA training step needs a GPU; its code ran on CPU "
            "(cpu_rehearsal, fp32, not a figure to compare)",
            "cpu_rehearsal": {
                **{k: rehearsal[k] for k in keep},
                "finite": rehearsal["loss_trend"]["finite"],
            },
        }
    device = torch.device(args.device)
    result = run_training(
        params,
        device,
        steps=args.train_steps,
        batch=args.train_batch,
        amp=device.type == "cuda",  # fp16 + GradScaler; on CPU (tests) fp32
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()  # hand the training step's cached blocks to TensorRT's builder
    return result


def _p50(rows: Sequence[dict[str, Any]], runtime: str, batch: int) -> float | None:
    for row in rows:
        if row["runtime"] == runtime and row["batch"] == batch:
            return row["p50_ms"]
    return None


def evaluate_targets(sections: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's goal and the correctness checks: PASS / MISSED (speed) / FAILED / not run."""
    lat, trt, train = (sections.get(k, {}) for k in ("latency", "tensorrt", "training"))
    rows, skipped = lat.get("rows", []), lat.get("skipped", {})
    trt8, ort8 = _p50(rows, "tensorrt-fp16", 8), _p50(rows, "onnxruntime-cuda", 8)
    speed: dict[str, Any] = {
        "key": "trt_fp16_vs_ort_cuda_b8",
        "target": "TensorRT FP16 p50 / ONNX Runtime CUDA EP p50 at batch 8",
        "threshold": f"<= {TRT_VS_ORT_CUDA_GOAL:.2f}x",
        "measured": None if trt8 is None or not ort8 else trt8 / ort8,
    }
    if speed["measured"] is None:
        missing = [r for r in ("tensorrt-fp16", "onnxruntime-cuda") if r in skipped]
        reasons = "; ".join(f"{r}: {skipped[r]}" for r in missing)
        speed.update(status="not run", reason=reasons or f"latency section {lat.get('status')}")
    else:
        speed["status"] = "PASS" if speed["measured"] <= TRT_VS_ORT_CUDA_GOAL else "MISSED"
    checks = [
        ("trt_fp16_parity", "TensorRT FP16 engine within the module's tolerance of ORT", trt),
        ("train_loss_finite_decreasing", "CUDA AMP training: loss finite and decreasing", train),
    ]
    out = [speed]
    for key, text, section in checks:
        status = {"ok": "PASS", "failed": "FAILED"}.get(section.get("status", ""), "not run")
        entry = {"key": key, "target": text, "status": status}
        if status != "PASS":
            entry["reason"] = section.get("reason", "section not run")
        out.append(entry)
    fp16 = lat.get("parity_vs_onnxruntime_cpu", {}).get("torch-cuda-fp16-autocast")
    out.append(
        {
            "key": "torch_cuda_fp16_parity",
            "target": "torch CUDA FP16 autocast within the FP16 tolerance of ORT (no TensorRT)",
            "status": "not run" if fp16 is None else ("PASS" if fp16["pass"] else "FAILED"),
        }
    )
    return out


def skipped_summary(sections: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Every skipped section and latency runtime with its reason, flat."""
    out = {n: s["reason"] for n, s in sections.items() if s.get("status") == "skipped"}
    for name, reason in sections.get("latency", {}).get("skipped", {}).items():
        out[f"latency.{name}"] = reason
    return out


@contextlib.contextmanager
def logging_to(path: Path) -> Iterator[None]:
    """The check's log to stderr and to ``path`` (overwritten), removed again afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers = [logging.FileHandler(path, mode="w"), logging.StreamHandler(sys.stderr)]
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    level, log.level = log.level, logging.INFO
    try:
        yield
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(level)


def run_check(
    args: argparse.Namespace, params: Any, model: Any, checks: list[str], start: float
) -> int:
    """All sections in order; the JSON and the log are complete when this returns."""
    report = Report(args.out, args.mode, args.config, start)
    report.data["environment"] = environment()
    sections = report.data["sections"]
    gpu = report.data["environment"].get("gpu", {}).get("name", "no GPU")
    log.info("mode %s on %s; results to %s", report.data["mode"], gpu, args.out)
    run_section(report, "inputs", lambda: {"status": "ok", "checks": checks}, math.inf)
    deadline = args.deadline_s
    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        run_section(report, "onnx", lambda: onnx_section(model, params, work), deadline)
        # Training before the engine build: a slow cold build cannot starve it of time.
        run_section(report, "training", lambda: training_section(args, params), deadline)
        run_section(
            report, "tensorrt", lambda: tensorrt_section(args, params, work, report), deadline
        )
        run_section(
            report, "latency", lambda: latency_section(args, model, params, work, report), deadline
        )
    run_section(
        report,
        "triton_tensorrt_plan",
        lambda: {"status": "skipped", "reason": TRITON_PLAN_REASON},
        math.inf,
    )
    report.data["targets"] = evaluate_targets(sections)
    report.data["skipped"] = skipped_summary(sections)
    report.data["complete"] = True
    report.write()
    for t in report.data["targets"]:
        value = f" {t['measured']:.3f}x" if t.get("measured") is not None else ""
        log.info("target %s: %s%s%s", t["key"], t["status"], value, _why(t))
    log.info("wrote %s (%.1f s)", args.out, report.elapsed())
    failed = [n for n, s in sections.items() if s["status"] == "failed"]
    failed += [t["key"] for t in report.data["targets"] if t["status"] == "FAILED"]
    if failed:
        log.error("failed: %s", ", ".join(dict.fromkeys(failed)))
    return 1 if failed else 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds through the scratch directory's cleanup; the JSON written after the
    # last finished section stays (``complete`` false).
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    try:
        params, model, checks = check_inputs(args)
    except (InputError, ValueError, FileNotFoundError) as exc:  # ConfigError is a ValueError
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with logging_to(args.log):
            return run_check(args, params, model, checks, start)
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["DEFAULT_MODEL", "evaluate_targets", "main", "run_check", "skipped_summary"]

if __name__ == "__main__":
    sys.exit(main())
