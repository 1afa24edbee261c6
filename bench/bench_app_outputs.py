"""What ``points`` and ``confidence`` cost an app, side by side with a depth-only request.

    python bench/bench_app_outputs.py              # demo model, local Triton + transformer
    python bench/bench_app_outputs.py --tritonclient   # + depth and points via tritonclient.http

One demo model (random weights, the project's own export), one local Triton and one
transformer in front of it, the same 256 x 512 JPEG street scene for every request, batch 1,
v2 with binary outputs (:meth:`DepthClient.infer_images`), one closed-loop client (c=1):

- ``depth``: outputs ``depth``;
- ``points``: outputs ``depth`` + ``points`` (the back-projection and 3x the bytes back);
- ``confidence``: outputs ``depth`` + ``confidence`` (the image and its mirror as one batch-2
  Triton request, and the confidence map back).

With ``--tritonclient`` the ``depth`` and ``points`` requests are also made through
``tritonclient.http.InferenceServerClient`` itself (rows ``depth/tritonclient``,
``points/tritonclient``): what an app pays with tritonclient's own HTTP reader instead of
DepthClient's connection. The kinds take turns (``rounds`` short cells each, merged) so a
change in machine load affects all alike. Targets (issue 21): confidence p50 <= 2.1x depth,
points p50 <= 1.2x. Results go to ``bench/results_app_outputs.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS: dict[str, tuple[str, ...]] = {
    "depth": ("depth",),
    "points": ("depth", "points"),
    "confidence": ("depth", "confidence"),
}
TARGETS = {"points": 1.2, "confidence": 2.1}


def _callers(
    url: str, jpeg: bytes, tritonclient: bool = False
) -> dict[str, Callable[[], tuple[Callable, Callable]]]:
    import numpy as np
    import tritonclient.http as tc

    from depth_common.serving.client import DepthClient

    def make(outputs: tuple[str, ...]) -> Callable[[], tuple[Callable, Callable]]:
        def caller() -> tuple[Callable[[], Any], Callable[[], None]]:
            client = DepthClient(url, mode="image")
            return (lambda: client.infer_images([jpeg], outputs)), client.close

        return caller

    def make_tritonclient(outputs: tuple[str, ...]) -> Callable[[], tuple[Callable, Callable]]:
        def caller() -> tuple[Callable[[], Any], Callable[[], None]]:
            client = tc.InferenceServerClient(url.removeprefix("http://"))
            inp = tc.InferInput("image_bytes", [1], "BYTES")
            inp.set_data_from_numpy(np.array([jpeg], dtype=object), binary_data=True)
            wanted = [tc.InferRequestedOutput(n, binary_data=True) for n in outputs]
            return (lambda: client.infer("depth", [inp], outputs=wanted)), client.close

        return caller

    callers = {kind: make(outputs) for kind, outputs in KINDS.items()}
    if tritonclient:
        for kind in ("depth", "points"):
            callers[f"{kind}/tritonclient"] = make_tritonclient(KINDS[kind])
    return callers


def run(duration_s: float, rounds: int, tritonclient: bool = False) -> dict[str, Any]:
    from bench.bench_serving import default_models, interleaved_load, progress
    from bench.bench_transformer import IMAGE_SIZE, demo_stack, street_jpeg

    spec = next(m for m in default_models() if m.name == "demo")
    work = Path(tempfile.mkdtemp(prefix="bench-app-outputs-"))
    try:
        jpeg = street_jpeg()
        with demo_stack(work, spec) as ((h, w), _, transformer):
            callers = _callers(transformer.url, jpeg, tritonclient)
            stats = interleaved_load(callers, 1, duration_s, rounds)
        rows = [{"kind": kind, **s} for kind, s in stats.items()]
        p50 = {row["kind"]: row["p50_ms"] for row in rows}
        for row in rows:
            base = p50["depth/tritonclient" if row["kind"].endswith("/tritonclient") else "depth"]
            row["x_depth_p50"] = round(row["p50_ms"] / base, 3)
            row["target_x"] = TARGETS.get(row["kind"])
            progress(f"[app outputs] {row['kind']}: p50 {row['p50_ms']:.2f} ms "
                     f"({row['x_depth_p50']:.2f}x depth)")  # fmt: skip
        return {
            "model": spec.name,
            "img_size": [h, w],
            "image_size": list(IMAGE_SIZE),
            "image_bytes": len(jpeg),
            "duration_s": duration_s,
            "rounds": rounds,
            "machine": f"{platform.machine()}, {platform.processor() or platform.system()}",
            "rows": rows,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per kind")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--tritonclient", action="store_true", help="also depth and points via tritonclient.http"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results_app_outputs.json"))
    args = parser.parse_args(argv)
    result = run(args.duration, args.rounds, args.tritonclient)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
