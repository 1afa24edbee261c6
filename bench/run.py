"""``make bench``: every benchmark on this machine, one run, side by side → bench/results.json.

    python -m bench.run                  # serving + preprocessing + export (~6-10 min on 2 cores)
    python -m bench.run --quick          # the demo model only, short cells (a smoke run)
    python -m bench.run --skip export --duration 3

Parts: (a) serving — in-process ONNX Runtime vs the real local Triton over HTTP and gRPC,
p50/p99 latency and throughput at concurrency 1/4/16, dynamic batching on and off
(:mod:`bench.bench_serving`); (a2) the image endpoint (the transformer) vs the tensor
endpoint, JPEG in, on the demo model at concurrency 1 and 8 (:mod:`bench.bench_transformer`);
(a3) what ``points`` and ``confidence`` cost beside a depth-only request through the
transformer (:mod:`bench.bench_app_outputs`); (b) preprocessing images/s with 1 vs 2 workers
(:mod:`bench.bench_preprocess`); (c) PyTorch eager vs ONNX Runtime (:mod:`bench.bench_export`,
when present). The table gives ratios and checks the issue's performance targets.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from depth_common.atomic import write_text

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results.json"

#: (key, description, threshold, "max" = ratio must be <= threshold / "min" = >= threshold)
TARGETS: tuple[tuple[str, str, float, str], ...] = (
    (
        "grpc_p50_vs_ort",
        "Triton gRPC p50 / in-process ORT p50 (vit_base@224, batch 1, c=1)",
        1.15,
        "max",
    ),
    (
        "batching_speedup_c16",
        "dynamic batching on / off, throughput at c=16 (vit_base@224, gRPC)",
        1.3,
        "min",
    ),
    ("preprocess_2_vs_1", "preprocessing images/s, 2 workers / 1 worker", 1.7, "min"),
    (
        "image_p50_vs_tensor",
        "image endpoint (transformer) p50 / tensor endpoint p50 (demo model, JPEG in, c=1)",
        1.25,
        "max",
    ),
    (
        "points_p50_vs_depth",
        "depth + points p50 / depth-only p50 (transformer, demo model, JPEG in, c=1)",
        1.2,
        "max",
    ),
    (
        "confidence_p50_vs_depth",
        "depth + confidence p50 / depth-only p50 (transformer, demo model, JPEG in, c=1)",
        2.1,
        "max",
    ),
)
PRIMARY_MODEL = "vit_base@224"


def _row(rows: Sequence[dict[str, Any]], path: str, batching: str, c: int) -> dict[str, Any] | None:
    for r in rows:
        if r["path"] == path and r["batching"] == batching and r["concurrency"] == c:
            return r
    return None


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def target_values(results: dict[str, Any], model: str = PRIMARY_MODEL) -> dict[str, float | None]:
    """The measured ratio of each target (``None`` where that part was not run)."""
    values: dict[str, float | None] = {k: None for k, *_ in TARGETS}
    for entry in results.get("serving", []):
        if entry["model"] != model:
            continue
        rows = entry["rows"]
        ort1, grpc1 = _row(rows, "onnxruntime", "-", 1), _row(rows, "triton-grpc", "on", 1)
        if ort1 and grpc1:
            values["grpc_p50_vs_ort"] = _ratio(grpc1["p50_ms"], ort1["p50_ms"])
        on16, off16 = _row(rows, "triton-grpc", "on", 16), _row(rows, "triton-grpc", "off", 16)
        if on16 and off16:
            values["batching_speedup_c16"] = _ratio(on16["throughput_rps"], off16["throughput_rps"])
    transformer = results.get("transformer")
    if transformer:
        from bench.bench_transformer import row

        image1, tensor1 = row(transformer, "image", 1), row(transformer, "tensor", 1)
        if image1 and tensor1:
            values["image_p50_vs_tensor"] = _ratio(image1["p50_ms"], tensor1["p50_ms"])
    app = {r["kind"]: r for r in results.get("app_outputs", {}).get("rows", [])}
    for kind in ("points", "confidence"):
        if kind in app and "depth" in app:
            values[f"{kind}_p50_vs_depth"] = _ratio(app[kind]["p50_ms"], app["depth"]["p50_ms"])
    pre = {r["workers"]: r for r in results.get("preprocess", {}).get("rows", [])}
    if 1 in pre and 2 in pre:
        values["preprocess_2_vs_1"] = _ratio(pre[2]["images_per_s"], pre[1]["images_per_s"])
    return values


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per target: description, measured ratio, threshold, status PASS/MISSED/not run."""
    values = target_values(results)
    out = []
    for key, text, threshold, kind in TARGETS:
        value = values[key]
        if value is None:
            status = "not run"
        else:
            ok = value <= threshold if kind == "max" else value >= threshold
            status = "PASS" if ok else "MISSED"
        out.append(
            {
                "key": key,
                "target": text,
                "threshold": f"{'<=' if kind == 'max' else '>='} {threshold:.2f}x",
                "measured": value,
                "status": status,
            }
        )
    return out


def _serving_table(entry: dict[str, Any]) -> list[str]:
    rows = entry["rows"]
    h, w = entry["img_size"]
    lines = [
        f"-- {entry['model']} ({h}x{w}, batch 1 per request, ORT intra-op threads "
        f"{entry['ort_intra_op_threads']}, {entry['duration_s']:g} s per cell)",
        f"{'conc':>4}  {'path':<12}{'batching':>9}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>9}"
        f"{'p50 vs ORT':>12}{'req/s vs ORT':>14}{'req/s on/off':>14}",
    ]
    for c in sorted({r["concurrency"] for r in rows}):
        ort = _row(rows, "onnxruntime", "-", c)
        for r in (x for x in rows if x["concurrency"] == c):
            p50_ratio = _ratio(r["p50_ms"], ort["p50_ms"] if ort else None)
            rps_ratio = _ratio(r["throughput_rps"], ort["throughput_rps"] if ort else None)
            on_off = ""
            if r["batching"] == "on":
                off = _row(rows, r["path"], "off", c)
                ratio = _ratio(r["throughput_rps"], off["throughput_rps"] if off else None)
                on_off = f"{ratio:.2f}x" if ratio is not None else ""
            lines.append(
                f"{c:>4}  {r['path']:<12}{r['batching']:>9}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
                f"{r['throughput_rps']:>9.1f}"
                f"{(f'{p50_ratio:.2f}x' if p50_ratio is not None else ''):>12}"
                f"{(f'{rps_ratio:.2f}x' if rps_ratio is not None else ''):>14}{on_off:>14}"
            )
    return lines


def _app_outputs_table(app: dict[str, Any]) -> list[str]:
    h, w = app["image_size"]
    lines = [
        f"-- {app['model']} behind the transformer, one {h}x{w} JPEG per request, c=1, "
        f"{app['rounds']} rounds",
        f"{'request':<20}{'p50 ms':>10}{'p99 ms':>10}{'vs depth':>10}",
    ]
    base = next((r["p50_ms"] for r in app["rows"] if r["kind"] == "depth"), None)
    for r in app["rows"]:
        ratio = r.get("x_depth_p50") or _ratio(r["p50_ms"], base)  # a client's own depth-only
        name = " + ".join(dict.fromkeys(("depth", r["kind"])))
        lines.append(
            f"{name:<20}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
            f"{(f'{ratio:.2f}x' if ratio is not None else ''):>10}"
        )
    return lines


def _preprocess_table(pre: dict[str, Any]) -> list[str]:
    rows = pre["rows"]
    base = next((r["images_per_s"] for r in rows if r["workers"] == 1), None)
    raw_h, raw_w = pre["raw_size"]
    out_h, out_w = pre["img_size"]
    lines = [
        f"-- preprocess_dataset: synthetic {raw_h}x{raw_w} → {out_h}x{out_w}",
        f"{'workers':>7}{'images':>8}{'seconds':>9}{'img/s':>8}{'vs 1 worker':>13}",
    ]
    for r in rows:
        ratio = _ratio(r["images_per_s"], base)
        lines.append(
            f"{r['workers']:>7}{r['images']:>8}{r['seconds']:>9.2f}{r['images_per_s']:>8.1f}"
            f"{(f'{ratio:.2f}x' if ratio is not None else ''):>13}"
        )
    return lines


def _export_table(entries: Sequence[dict[str, Any]]) -> list[str]:
    try:
        from bench.bench_export import format_table
    except ImportError:  # results from a run that had bench_export, read where it is gone
        return [json.dumps(e) for e in entries]
    return format_table(entries).splitlines()


def format_table(results: dict[str, Any]) -> str:
    """The whole report as plain text: machine, each part that ran, then the targets."""
    m = results.get("machine", {})
    lines = [
        "== bench: " + ", ".join(f"{k} {v}" for k, v in m.items()) if m else "== bench",
    ]
    if results.get("serving"):
        lines += ["", "== (a) serving: in-process ONNX Runtime vs Triton (HTTP, gRPC)"]
        for entry in results["serving"]:
            lines += _serving_table(entry)
    if results.get("transformer"):
        from bench.bench_transformer import format_table as transformer_table

        lines += ["", "== (a2) image endpoint (transformer) vs tensor endpoint"]
        lines += transformer_table(results["transformer"])
    if results.get("app_outputs"):
        lines += ["", "== (a3) points and confidence beside depth only"]
        lines += _app_outputs_table(results["app_outputs"])
    if results.get("preprocess"):
        lines += ["", "== (b) preprocessing", *_preprocess_table(results["preprocess"])]
    if results.get("export"):
        lines += ["", "== (c) PyTorch eager vs ONNX Runtime", *_export_table(results["export"])]
    skipped = results.get("skipped", {})
    for part, why in skipped.items():
        lines.append(f"(part {part} not run: {why})")
    lines += ["", "== targets"]
    for t in results.get("targets") or evaluate_targets(results):
        measured = f"{t['measured']:.2f}x" if t["measured"] is not None else "-"
        lines.append(f"{t['status']:<8}{measured:>8}  (target {t['threshold']})  {t['target']}")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "load1": round(os.getloadavg()[0], 2),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
    }


def write_results(results: dict[str, Any], out: Path) -> Path:
    """Atomic write (:mod:`depth_common.atomic`): the old file or the whole new one."""
    return write_text(out, json.dumps(results, indent=2) + "\n")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per serving cell")
    parser.add_argument("--quick", action="store_true", help="demo model only, 1 s cells")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=("serving", "transformer", "app-outputs", "preprocess", "export"),
    )
    args = parser.parse_args(argv)

    from bench import bench_preprocess, bench_serving

    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C, so every `with LocalTritonServer`
    # stops its server and Python-backend stubs instead of leaving them running.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    results: dict[str, Any] = {"machine": machine_info(), "skipped": {}}
    if "serving" not in args.skip:
        models = (
            [m for m in bench_serving.default_models() if m.name == "demo"] if args.quick else None
        )
        bench_serving.run(results, duration_s=1.0 if args.quick else args.duration, models=models)
    if "transformer" not in args.skip:
        from bench import bench_transformer

        bench_transformer.run(results, duration_s=1.0 if args.quick else args.duration)
    if "app-outputs" not in args.skip:
        from bench import bench_app_outputs

        duration = 3.0 if args.quick else 3 * args.duration
        results["app_outputs"] = bench_app_outputs.run(duration, rounds=3 if args.quick else 6)
    if "preprocess" not in args.skip:
        kwargs = {"raw_size": (256, 512), "per_split": 2} if args.quick else {}
        bench_preprocess.run(results, **kwargs)
    if "export" not in args.skip:
        try:
            from bench import bench_export
        except ModuleNotFoundError as exc:
            if exc.name != "bench.bench_export":
                raise
            results["skipped"]["export"] = "bench/bench_export.py is not in this tree"
        else:
            print("[export] PyTorch eager vs ONNX Runtime ...", flush=True)
            bench_export.run(results, **({"runs": 2} if args.quick else {}))
    for part in args.skip:
        results["skipped"][part] = "--skip"
    results["targets"] = evaluate_targets(results)
    write_results(results, args.out)
    print()
    print(format_table(results))
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
