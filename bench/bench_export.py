"""PyTorch eager vs ONNX Runtime: per-call latency of the exported DPT, batch 1 and 8.

    python bench/bench_export.py                 # both models, prints a table
    python bench/bench_export.py --runs 10 --out bench/results_export.json

Models (random weights: nothing is downloaded): params.yaml's default ``vit_base_patch16_224``
DPT at 224x224 with 256 decoder features, and the demo model (``params.demo.yaml``).
Each is exported with the real exporter (:func:`depth_common.export.onnx.export_model`, parity
gate included) into a temporary directory; then each runtime runs the same float32 input, and
the median of ``--runs`` timed calls after ``--warmup`` untimed ones is reported.

``ratio`` is ONNX Runtime's latency as a multiple of PyTorch eager's (< 1: ONNX Runtime is
faster). Both use all cores of this machine with their default thread pools.

The bench runner (another module) calls :func:`run` with a shared dict and merges all parts
into ``bench/results.json``; this module only fills ``results["export"]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCHES: tuple[int, ...] = (1, 8)
#: name → params overrides (applied to params.yaml). vit_base: params.yaml's default model.
MODELS: dict[str, tuple[str, ...]] = {
    "vit_base_224": (
        "model.encoder=vit_base_patch16_224",
        "model.pretrained=false",
        "model.decoder_features=256",
        "data.img_size=224",
    ),
}


def _models() -> dict[str, tuple[str, ...]]:
    from depth_common.config.params import overlay_overrides

    DEMO = overlay_overrides(ROOT / "params.demo.yaml")

    return {**MODELS, "demo": DEMO}


def time_calls(
    fn: Callable[[], object],
    runs: int,
    warmup: int,
    budget_s: float | None = None,
    min_runs: int = 3,
) -> list[float]:
    """Seconds per call of ``fn()``: ``warmup`` untimed calls, then up to ``runs`` timed ones.

    With ``budget_s``, timing stops early once at least ``min_runs`` calls have used up the
    budget (keeps vit_base at batch 8 within the bench's time on a 2-core machine).
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent = 0.0
    while len(times) < runs:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        spent += times[-1]
        if budget_s is not None and len(times) >= min_runs and spent >= budget_s:
            break
    return times


def median_ms(
    fn: Callable[[], object],
    runs: int,
    warmup: int,
    budget_s: float | None = None,
    min_runs: int = 3,
) -> tuple[float, int]:
    """(median wall time of ``fn()`` in milliseconds, number of timed calls): see
    :func:`time_calls`."""
    times = time_calls(fn, runs, warmup, budget_s, min_runs)
    return statistics.median(times) * 1e3, len(times)


def bench_model(
    name: str,
    overrides: Sequence[str],
    workdir: Path,
    *,
    batches: Sequence[int] = BATCHES,
    runs: int = 5,
    warmup: int = 1,
    budget_s: float | None = 10.0,
) -> list[dict]:
    """Export one model and time both runtimes per batch size; one entry per batch."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from depth_common.config import load_params
    from depth_common.export.onnx import export_model
    from depth_common.model.dpt import build_model

    params = load_params(ROOT / "params.yaml", overrides)
    torch.manual_seed(0)
    model = build_model(params).eval()
    h, w = params.data.img_size
    exported = export_model(
        model,
        workdir / f"{name}.onnx",
        img_size=(h, w),
        metadata={"encoder": params.model.encoder},
        opset=params.export.opset,
        atol=params.export.parity_atol,
    )
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    entries = []
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, 3, h, w), dtype=np.float32)
        xt = torch.from_numpy(x)

        def torch_call(xt: torch.Tensor = xt) -> object:
            with torch.inference_mode():
                return model(xt)

        def ort_call(x: np.ndarray = x) -> object:
            return session.run(["depth"], {"image": x})

        torch_ms, torch_runs = median_ms(torch_call, runs, warmup, budget_s)
        ort_ms, ort_runs = median_ms(ort_call, runs, warmup, budget_s)
        entries.append(
            {
                "model": name,
                "encoder": params.model.encoder,
                "img_size": [h, w],
                "batch": batch,
                "torch_ms": round(torch_ms, 3),
                "onnxruntime_ms": round(ort_ms, 3),
                "ratio": round(ort_ms / torch_ms, 3),
                "parity_max_abs_diff": max(exported.parity.values()),
                "runs": min(torch_runs, ort_runs),
            }
        )
    return entries


def run(results: dict, *, runs: int = 5, warmup: int = 1) -> list[dict]:
    """Fill ``results["export"]`` with one entry per (model, batch) and return those entries.

    Entry keys: model, encoder, img_size [H, W] (pixels), batch, torch_ms, onnxruntime_ms
    (median milliseconds per call), ratio (onnxruntime_ms / torch_ms), parity_max_abs_diff
    (metres), runs (timed calls behind each median: `runs`, or fewer but >= 3 once the
    per-measurement time budget is spent).
    """
    entries: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for name, overrides in _models().items():
            entries += bench_model(name, overrides, Path(tmp), runs=runs, warmup=warmup)
    results["export"] = entries
    return entries


def format_table(entries: Sequence[dict]) -> str:
    """Plain-text table of the entries, with the ratio spelled out."""
    lines = [
        f"{'model':<14}{'size':>9}{'batch':>7}{'torch ms':>11}{'ORT ms':>10}  ORT vs torch",
    ]
    for e in entries:
        size = "x".join(str(v) for v in e["img_size"])
        lines.append(
            f"{e['model']:<14}{size:>9}{e['batch']:>7}{e['torch_ms']:>11.1f}"
            f"{e['onnxruntime_ms']:>10.1f}  {e['ratio']:.2f}x"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    parser.add_argument("--out", type=Path, help="also write the entries to this JSON file")
    args = parser.parse_args(argv)
    results: dict = {}
    entries = run(results, runs=args.runs, warmup=args.warmup)
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}")
    print(format_table(entries))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
