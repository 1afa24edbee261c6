"""bench/: the report table, the target checks and the load generator (no real benchmark run)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bench.bench_serving import load_stats, run_load
from bench.run import evaluate_targets, format_table, target_values, write_results
from depth_common import atomic


def _rows(ort_p50: float, grpc_p50: float, on16: float, off16: float) -> list[dict]:
    def row(path: str, batching: str, c: int, p50: float, rps: float) -> dict:
        return {
            "path": path,
            "batching": batching,
            "concurrency": c,
            "requests": 10,
            "p50_ms": p50,
            "p99_ms": p50 * 1.5,
            "mean_ms": p50,
            "throughput_rps": rps,
            "wall_s": 5.0,
        }

    return [
        row("onnxruntime", "-", 1, ort_p50, 1000 / ort_p50),
        row("triton-grpc", "on", 1, grpc_p50, 1000 / grpc_p50),
        row("triton-http", "on", 1, grpc_p50 + 1, 1000 / (grpc_p50 + 1)),
        row("onnxruntime", "-", 16, ort_p50 * 10, 20.0),
        row("triton-grpc", "on", 16, 400.0, on16),
        row("triton-grpc", "off", 16, 800.0, off16),
    ]


def _results(**kw: float) -> dict:
    return {
        "machine": {"cpus": 2, "load1": 0.5},
        "serving": [
            {
                "model": "vit_base@224",
                "img_size": [224, 224],
                "ort_intra_op_threads": 2,
                "duration_s": 5.0,
                "rows": _rows(kw["ort"], kw["grpc"], kw["on16"], kw["off16"]),
            }
        ],
        "preprocess": {
            "raw_size": [512, 1024],
            "img_size": [224, 224],
            "rows": [
                {
                    "workers": 1,
                    "images": 24,
                    "seconds": 24 / kw["pre1"],
                    "images_per_s": kw["pre1"],
                },
                {
                    "workers": 2,
                    "images": 24,
                    "seconds": 24 / kw["pre2"],
                    "images_per_s": kw["pre2"],
                },
            ],
        },
        "skipped": {"export": "--skip"},
    }


def test_targets_are_ratios_with_pass_and_missed() -> None:
    res = _results(ort=200.0, grpc=210.0, on16=13.0, off16=10.0, pre1=4.0, pre2=6.0)
    values = target_values(res)
    assert values["grpc_p50_vs_ort"] == pytest.approx(1.05)
    assert values["batching_speedup_c16"] == pytest.approx(1.3)
    assert values["preprocess_2_vs_1"] == pytest.approx(1.5)
    status = {t["key"]: t["status"] for t in evaluate_targets(res)}
    assert status == {
        "grpc_p50_vs_ort": "PASS",
        "batching_speedup_c16": "PASS",  # the threshold itself passes
        "preprocess_2_vs_1": "MISSED",
        "image_p50_vs_tensor": "not run",
        "points_p50_vs_depth": "not run",
        "confidence_p50_vs_depth": "not run",
    }
    assert {t["status"] for t in evaluate_targets({})} == {"not run"}


def test_table_shows_ratios_side_by_side(tmp_path) -> None:
    res = _results(ort=200.0, grpc=230.0, on16=13.0, off16=10.0, pre1=4.0, pre2=7.0)
    text = format_table(res)
    assert "vit_base@224 (224x224" in text
    grpc1 = next(ln for ln in text.splitlines() if "triton-grpc" in ln and ln.split()[0] == "1")
    assert "230.00" in grpc1 and "1.15x" in grpc1  # p50 vs ORT
    grpc16 = next(
        ln
        for ln in text.splitlines()
        if "triton-grpc" in ln and " on " in ln and ln.split()[0] == "16"
    )
    assert grpc16.rstrip().endswith("1.30x")  # batching on/off column
    assert "1.75x" in next(ln for ln in text.splitlines() if ln.strip().startswith("2 "))
    assert "MISSED" not in text and text.count("PASS") == 3
    assert "(part export not run: --skip)" in text
    out = write_results(res, tmp_path / "results.json")
    assert out.read_text().startswith("{") and atomic.leftovers(tmp_path) == []


def test_load_stats_percentiles() -> None:
    lat = [0.001 * k for k in range(1, 101)]  # 1..100 ms
    stats = load_stats(lat, wall_s=2.0, concurrency=4)
    assert stats["p50_ms"] == pytest.approx(np.percentile(np.arange(1, 101), 50))
    assert stats["p99_ms"] == pytest.approx(np.percentile(np.arange(1, 101), 99))
    assert stats["throughput_rps"] == pytest.approx(50.0)


def test_run_load_runs_every_worker_and_closes_its_caller() -> None:
    closed: list[int] = []

    def make():
        return (lambda: time.sleep(0.002)), (lambda: closed.append(1))

    stats = run_load(make, concurrency=4, duration_s=0.3, warmup=1)
    assert len(closed) == 4
    assert stats["requests"] >= 4 and stats["p50_ms"] >= 2.0
    assert stats["throughput_rps"] == pytest.approx(stats["requests"] / stats["wall_s"])


def test_run_load_reports_a_failing_caller() -> None:
    def make():
        def boom() -> None:
            raise ConnectionError("server down")

        return boom, (lambda: None)

    with pytest.raises(RuntimeError, match="server down"):
        run_load(make, concurrency=2, duration_s=0.1)


def test_transformer_target_and_table() -> None:
    def row(path: str, c: int, p50: float, rps: float) -> dict:
        return {"path": path, "concurrency": c, "requests": 10, "p50_ms": p50,
                "p99_ms": p50 * 2, "mean_ms": p50, "throughput_rps": rps, "wall_s": 4.0}  # fmt: skip

    res = {
        "transformer": {
            "model": "demo", "img_size": [64, 128], "image_size": [256, 512],
            "image_bytes": 30000, "duration_s": 4.0,
            "rows": [row("tensor", 1, 8.0, 120.0), row("image", 1, 9.6, 100.0),
                     row("tensor", 8, 30.0, 250.0), row("image", 8, 40.0, 200.0)],
        }
    }  # fmt: skip
    assert target_values(res)["image_p50_vs_tensor"] == pytest.approx(1.2)
    status = {t["key"]: t["status"] for t in evaluate_targets(res)}
    assert status["image_p50_vs_tensor"] == "PASS"
    res["transformer"]["rows"][1]["p50_ms"] = 10.4  # 1.3x
    assert {t["key"]: t["status"] for t in evaluate_targets(res)}["image_p50_vs_tensor"] == "MISSED"
    text = format_table(res)
    image8 = next(ln for ln in text.splitlines() if ln.split()[:2] == ["8", "image"])
    assert "1.33x" in image8 and "0.80x" in image8  # p50 and req/s vs the tensor endpoint


def test_app_outputs_targets_and_table() -> None:
    def row(kind: str, p50: float) -> dict:
        return {"kind": kind, "concurrency": 1, "requests": 10, "p50_ms": p50,
                "p99_ms": p50 * 2, "mean_ms": p50, "throughput_rps": 1000 / p50, "wall_s": 4.0}  # fmt: skip

    res = {
        "app_outputs": {
            "model": "demo", "img_size": [64, 128], "image_size": [256, 512], "rounds": 6,
            "rows": [row("depth", 20.0), row("points", 23.0), row("confidence", 44.0)],
        }
    }  # fmt: skip
    values = target_values(res)
    assert values["points_p50_vs_depth"] == pytest.approx(1.15)
    assert values["confidence_p50_vs_depth"] == pytest.approx(2.2)
    status = {t["key"]: t["status"] for t in evaluate_targets(res)}
    assert (status["points_p50_vs_depth"], status["confidence_p50_vs_depth"]) == ("PASS", "MISSED")
    text = format_table(res)
    points = next(ln for ln in text.splitlines() if ln.startswith("depth + points"))
    assert "23.00" in points and points.rstrip().endswith("1.15x")
