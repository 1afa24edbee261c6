"""What payload logging costs a request: the transformer with and without ``--logger_url``,
side by side.

    python -m bench.bench_payload_logger                 # 6 rounds x 2 paths x 5 s, c=1
    python -m bench.bench_payload_logger --rounds 2 --duration 1     # a smoke run

One demo model (random weights, the project's own export), one local Triton and three
transformers in front of it, the same 256 x 512 JPEG street scene for every request,
closed-loop at concurrency 1 through :class:`DepthClient` image mode:

- ``plain``: no payload logging;
- ``plain-b``: a second transformer without logging, the A/A control: how far two identical
  paths differ on this machine (the noise floor of the comparison);
- ``logged``: posting every request and response to a sink process that reads and discards
  them: what the logging costs the serving process (the target: p50 <= 1.05 x plain);
- ``logged+monitor``: posting to the real drift monitor (``python -m depth_common monitor``)
  running on the same CPUs, decoding and profiling every image: what a monitor sharing the
  serving machine's cores adds (on a cluster it has a pod of its own).

Every server is its own process (none shares the load generator's interpreter). The paths take
turns (``rounds`` cells each, merged) so a change of machine load hits all alike. Results go to
``bench/results_payload_logger.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.bench_serving import ROOT, _export, default_models, load_stats, run_load
from bench.bench_transformer import street_jpeg
from depth_common.atomic import write_text

DEFAULT_OUT = ROOT / "bench" / "results_payload_logger.json"
TARGET_RATIO = 1.05


class _Sink(BaseHTTPRequestHandler):
    """Reads each event and answers 202: a monitor that costs nothing."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _start(command: list[str], port: int, work: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return process
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{name} did not listen on {port}: see {work / name}.log")


def _reference(work: Path) -> Path:
    """A profile of synthetic street scenes (the monitor's reference)."""
    import numpy as np

    from depth_common.data.scene import render_scene
    from depth_common.data.synthetic import cityscapes_camera
    from depth_common.monitoring.profile import profile_from_images, save_profile

    size = (128, 256)
    images = [
        render_scene(np.random.default_rng([5, k]), size, cityscapes_camera(size), hood=True)[0]
        for k in range(40)
    ]
    return save_profile(profile_from_images(images), work / "profile.json")


def _caller(url: str, jpeg: bytes):
    from depth_common.serving.client import DepthClient

    def make() -> tuple[Any, Any]:
        client = DepthClient(url, mode="image")
        return (lambda: client.predict(jpeg)), client.close

    return make


def run(rounds: int, duration_s: float) -> dict[str, Any]:
    from depth_common.config import load_params
    from depth_common.export.triton import build_triton_repository
    from depth_common.serving.local_stack import LocalTransformer
    from depth_common.serving.server import LocalTritonServer, free_port

    spec = next(m for m in default_models() if m.name == "demo")
    work = Path(tempfile.mkdtemp(prefix="bench-payload-logger-"))
    sink_port, monitor_port = free_port(), free_port()
    sink = _start([sys.executable, "-m", "bench.bench_payload_logger", "--sink", str(sink_port)],
                  sink_port, work, "sink")  # fmt: skip
    monitor = _start(
        [sys.executable, "-m", "depth_common", "monitor", "--reference", str(_reference(work)),
         "--port", str(monitor_port), "--window", "16"], monitor_port, work, "monitor",
    )  # fmt: skip
    try:
        onnx_path, _, _ = _export(spec, work)
        repo = build_triton_repository(
            onnx_path, work / "repo", export_cfg=load_params(ROOT / "params.yaml").export
        )
        jpeg = street_jpeg()
        with (
            LocalTritonServer(repo, log_path=work / "triton.log") as triton,
            LocalTransformer(triton.grpc_url, log_path=work / "plain.log") as plain,
            LocalTransformer(triton.grpc_url) as plain_b,
            LocalTransformer(
                triton.grpc_url, logger_url=f"http://127.0.0.1:{sink_port}/"
            ) as logged,
            LocalTransformer(
                triton.grpc_url, logger_url=f"http://127.0.0.1:{monitor_port}/"
            ) as monitored,
        ):
            paths = {
                "plain": _caller(plain.url, jpeg),
                "plain-b": _caller(plain_b.url, jpeg),
                "logged": _caller(logged.url, jpeg),
                "logged+monitor": _caller(monitored.url, jpeg),
            }
            lat: dict[str, list[float]] = {p: [] for p in paths}
            wall = dict.fromkeys(paths, 0.0)
            for _ in range(rounds):
                for name, make in paths.items():
                    cell = run_load(make, 1, duration_s, 3, keep_latencies=True)
                    lat[name] += cell["latencies_s"]
                    wall[name] += cell["wall_s"]
            time.sleep(2)  # the last events reach the monitor
            with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/drift") as resp:
                state = json.loads(resp.read())
        stats = {p: load_stats(lat[p], wall[p], 1) for p in paths}
        ratio = stats["logged"]["p50_ms"] / stats["plain"]["p50_ms"]
        return {
            "rounds": rounds,
            "duration_s": duration_s,
            "image_bytes": len(jpeg),
            "paths": stats,
            "p50_ratio": ratio,
            "p50_ratio_control": stats["plain-b"]["p50_ms"] / stats["plain"]["p50_ms"],
            "p50_ratio_with_monitor": stats["logged+monitor"]["p50_ms"] / stats["plain"]["p50_ms"],
            "target_ratio_max": TARGET_RATIO,
            "met": ratio <= TARGET_RATIO,
            "monitor_images": state["images_seen"],
            "monitor_responses": state["outputs"]["responses"],
            "machine": platform.platform(),
        }
    finally:
        for process in (sink, monitor):
            process.terminate()
            process.wait(30)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--sink", type=int, help=argparse.SUPPRESS)  # run as the sink on this port
    args = p.parse_args()
    if args.sink:
        ThreadingHTTPServer(("127.0.0.1", args.sink), _Sink).serve_forever()
        return
    results = run(args.rounds, args.duration)
    write_text(args.out, json.dumps(results, indent=2) + "\n")
    for name, s in results["paths"].items():
        print(
            f"{name}: p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, {s['requests']} requests"
        )
    print(f"p50 logged/plain {results['p50_ratio']:.3f} (target <= {TARGET_RATIO}), with the "
          f"monitor on the same CPUs {results['p50_ratio_with_monitor']:.3f}, A/A control "
          f"{results['p50_ratio_control']:.3f}; the monitor saw "
          f"{results['monitor_images']} images → {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
