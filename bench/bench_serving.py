"""Serving latency/throughput: in-process ONNX Runtime vs the real local Triton (HTTP, gRPC).

For each model (the ``vit_base`` DPT at 224 px and the demo model, both from random weights:
nothing is downloaded) the ONNX file comes from the project's own export (with its parity gate)
and the Triton repository from ``build_triton_repository``; a second repository is the same with
``dynamic_batching`` removed. Each cell runs ``concurrency`` closed-loop workers (one client, or
one ``session.run`` caller, per thread) sending batch-1 requests for ``duration_s`` seconds
after a warm-up, and records every request's latency.

Triton here is the ``nvidia-pytriton`` build (Python backend running the same ``model.onnx``
with ONNX Runtime, see :mod:`depth_common.serving.server`), and ONNX Runtime gets the same
number of intra-op threads in-process and in the server, so the comparison is the serving path
(protocol, queueing, batching, Python stub), not two different runtimes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def progress(line: str) -> None:
    """Progress lines, flushed: ``make bench`` output is often piped to a file."""
    print(line, flush=True)


CONCURRENCY: tuple[int, ...] = (1, 4, 16)


@dataclass(frozen=True)
class BenchModel:
    """A model to benchmark: a name and the ``section.key=value`` overrides that build it."""

    name: str
    overrides: tuple[str, ...]


def default_models() -> list[BenchModel]:
    from depth_common.config.params import overlay_overrides

    DEMO = overlay_overrides(ROOT / "params.demo.yaml")

    return [
        BenchModel(
            "vit_base@224",
            ("model.encoder=vit_base_patch16_224", "model.pretrained=false", "data.img_size=224"),
        ),
        BenchModel("demo", (*DEMO, "model.pretrained=false")),
    ]


def load_stats(latencies_s: Sequence[float], wall_s: float, concurrency: int) -> dict[str, Any]:
    """p50/p99/mean latency (ms) and throughput (requests/s) of one measured cell."""
    lat = np.asarray(latencies_s, dtype=np.float64) * 1e3
    return {
        "concurrency": concurrency,
        "requests": int(lat.size),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "mean_ms": float(lat.mean()),
        "throughput_rps": float(lat.size / wall_s),
        "wall_s": float(wall_s),
    }


def run_load(
    make_caller: Callable[[], tuple[Callable[[], Any], Callable[[], None]]],
    concurrency: int,
    duration_s: float,
    warmup: int = 1,
    keep_latencies: bool = False,
) -> dict[str, Any]:
    """``concurrency`` threads, each with its own caller, in a closed loop for ``duration_s``.

    ``keep_latencies`` adds every request's latency (seconds) as ``latencies_s``, so cells
    run in several rounds can be merged.

    ``make_caller`` runs in the worker thread (a gevent HTTP client must live in its thread)
    and returns ``(call, close)``. Every worker warms up, then all start together; a worker
    stops issuing requests at the deadline, and throughput counts requests / wall time.
    """
    start = threading.Barrier(concurrency + 1)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[BaseException] = []
    deadline: list[float] = [0.0]

    def worker(k: int) -> None:
        try:
            call, close = make_caller()
        except BaseException as exc:
            errors.append(exc)
            start.abort()
            return
        try:
            for _ in range(warmup):
                call()
            start.wait()
            out = latencies[k]
            while True:
                t0 = time.perf_counter()
                if t0 >= deadline[0]:
                    break
                call()
                out.append(time.perf_counter() - t0)
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:
            errors.append(exc)
            start.abort()  # a failed warm-up must not leave the others waiting
        finally:
            close()

    deadline[0] = float("inf")  # set once everyone is warm
    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    t_start = time.perf_counter()
    try:
        start.wait(timeout=600)
        t_start = time.perf_counter()
        deadline[0] = t_start + duration_s
    except threading.BrokenBarrierError:
        deadline[0] = 0.0  # a worker failed to start: stop the others
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"load run at concurrency {concurrency} failed: {errors[0]!r}")
    wall = time.perf_counter() - t_start
    flat = [x for per in latencies for x in per]
    stats = load_stats(flat, wall, concurrency)
    return {**stats, "latencies_s": flat} if keep_latencies else stats


def interleaved_load(
    callers: Mapping[str, Callable[[], tuple[Callable[[], Any], Callable[[], None]]]],
    concurrency: int,
    duration_s: float,
    rounds: int,
) -> dict[str, dict[str, Any]]:
    """:func:`run_load` for each caller, ``duration_s`` in all, in ``rounds`` turns taken one
    caller after another (a change in machine load affects all alike), merged → stats by name."""
    lat: dict[str, list[float]] = {name: [] for name in callers}
    wall = dict.fromkeys(callers, 0.0)
    for _ in range(rounds):
        for name, make in callers.items():
            cell = run_load(make, concurrency, duration_s / rounds, 3, keep_latencies=True)
            lat[name] += cell["latencies_s"]
            wall[name] += cell["wall_s"]
    return {name: load_stats(lat[name], wall[name], concurrency) for name in callers}


def _export(model_spec: BenchModel, work: Path) -> tuple[Path, tuple[int, int], float]:
    """Build the DPT from random weights and export it; return (onnx, (H, W), export seconds)."""
    import torch

    from depth_common.config import load_params
    from depth_common.export.onnx import export_model
    from depth_common.model.dpt import build_model

    params = load_params(ROOT / "params.yaml", model_spec.overrides)
    torch.manual_seed(0)
    model = build_model(params).eval()
    t0 = time.perf_counter()
    result = export_model(
        model, work / "model.onnx", img_size=params.data.img_size, opset=params.export.opset
    )
    return result.path, tuple(params.data.img_size), time.perf_counter() - t0


def _repositories(onnx_path: Path, work: Path) -> dict[str, Path]:
    """``{"on": repo with dynamic_batching, "off": the same without}`` (params' export config)."""
    from depth_common.config import load_params
    from depth_common.export.triton import (
        build_triton_repository,
        parse_model_config,
        write_model_config,
    )

    export_cfg = load_params(ROOT / "params.yaml").export
    on = build_triton_repository(onnx_path, work / "repo_on", export_cfg=export_cfg)
    off = build_triton_repository(onnx_path, work / "repo_off", export_cfg=export_cfg)
    cfg = parse_model_config(off / "depth" / "config.pbtxt")
    cfg.ClearField("dynamic_batching")
    write_model_config(cfg, off / "depth" / "config.pbtxt")
    return {"on": on, "off": off}


def _ort_caller(
    session: Any, x: np.ndarray
) -> Callable[[], tuple[Callable[[], Any], Callable[[], None]]]:
    def make() -> tuple[Callable[[], Any], Callable[[], None]]:
        return (lambda: session.run(None, {"image": x})), (lambda: None)

    return make


def _triton_caller(
    url: str, protocol: str, x: np.ndarray
) -> Callable[[], tuple[Callable[[], Any], Callable[[], None]]]:
    def make() -> tuple[Callable[[], Any], Callable[[], None]]:
        from depth_common.serving.client import DepthClient

        client = DepthClient(url, protocol=protocol)
        return (lambda: client.infer_tensor(x)), client.close

    return make


def bench_model(
    spec: BenchModel,
    *,
    duration_s: float,
    concurrency: Sequence[int] = CONCURRENCY,
    ort_threads: int | None = None,
    log: Callable[[str], None] = progress,
) -> dict[str, Any]:
    """All cells for one model: ORT in-process, then Triton HTTP/gRPC with batching on/off."""
    import onnxruntime as ort

    from depth_common.serving.server import LocalTritonServer

    threads = ort_threads or os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix=f"bench-{spec.name.replace('@', '-')}-"))
    try:
        onnx_path, (h, w), export_s = _export(spec, work)
        log(
            f"[serving] {spec.name}: exported {onnx_path.stat().st_size / 1e6:.0f} MB in {export_s:.0f} s"
        )
        x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
        rows: list[dict[str, Any]] = []

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        for c in concurrency:
            row = {
                "path": "onnxruntime",
                "batching": "-",
                **run_load(_ort_caller(session, x), c, duration_s),
            }
            rows.append(row)
            log(
                f"[serving] {spec.name} ORT c={c}: p50 {row['p50_ms']:.1f} ms, {row['throughput_rps']:.1f} req/s"
            )
        del session

        for batching, repo in _repositories(onnx_path, work).items():
            with LocalTritonServer(
                repo, ort_threads=threads, log_path=work / f"triton-{batching}.log"
            ) as srv:
                for protocol, url in (("http", srv.http_url), ("grpc", srv.grpc_url)):
                    for c in concurrency:
                        stats = run_load(_triton_caller(url, protocol, x), c, duration_s)
                        row = {"path": f"triton-{protocol}", "batching": batching, **stats}
                        rows.append(row)
                        log(
                            f"[serving] {spec.name} {protocol} batching {batching} c={c}: "
                            f"p50 {row['p50_ms']:.1f} ms, {row['throughput_rps']:.1f} req/s"
                        )
        return {
            "model": spec.name,
            "overrides": list(spec.overrides),
            "img_size": [h, w],
            "onnx_mb": round(onnx_path.stat().st_size / 1e6, 1),
            "ort_intra_op_threads": threads,
            "duration_s": duration_s,
            "rows": rows,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(
    results: dict[str, Any],
    *,
    duration_s: float = 4.0,
    models: Sequence[BenchModel] | None = None,
    concurrency: Sequence[int] = CONCURRENCY,
    log: Callable[[str], None] = progress,
) -> dict[str, Any]:
    """Fill ``results["serving"]`` (a list, one entry per model) and return ``results``."""
    results["serving"] = [
        bench_model(m, duration_s=duration_s, concurrency=concurrency, log=log)
        for m in (models or default_models())
    ]
    return results
