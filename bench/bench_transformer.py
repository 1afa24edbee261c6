"""Image endpoint vs tensor endpoint: what the transformer costs an app, side by side.

One demo model (random weights, the project's own export), one local Triton and one
transformer in front of it, the same JPEG street scene (what a camera sends) for every
request, batch 1, closed-loop workers at each concurrency:

- ``tensor``: :class:`DepthClient` over gRPC straight to Triton, given the JPEG: the client
  decodes, preprocesses, sends the tensor and resizes the depth back (what an app must do
  without the transformer);
- ``image``: :class:`DepthClient` image mode: the JPEG goes to the transformer, which does the
  same work server-side and calls Triton over gRPC;
- ``tensor-raw``: the preprocessed tensor alone over gRPC (the floor: no decode, no resize).

The target is image p50 / tensor p50 at c=1; throughput is compared at c=8. The paths take
turns (``rounds`` short cells each, merged) so a change in machine load affects all alike.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.bench_serving import (
    ROOT,
    BenchModel,
    _export,
    default_models,
    interleaved_load,
    progress,
)

if TYPE_CHECKING:
    from depth_common.serving.local_stack import LocalTransformer
    from depth_common.serving.server import LocalTritonServer

CONCURRENCY: tuple[int, ...] = (1, 8)
IMAGE_SIZE = (256, 512)  # (H, W) of the JPEG sent: larger than the demo model's 64 x 128


def street_jpeg(size: tuple[int, int] = IMAGE_SIZE) -> bytes:
    """A synthetic street scene encoded as a camera would (JPEG, quality 90)."""
    from PIL import Image

    from depth_common.data.synthetic import cityscapes_camera, render_scene

    rgb, _ = render_scene(np.random.default_rng([2024, 0]), size, cityscapes_camera(size))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _callers(triton_grpc: str, transformer_http: str, jpeg: bytes, x: np.ndarray):
    from depth_common.serving.client import DepthClient

    def tensor() -> tuple[Callable[[], Any], Callable[[], None]]:
        client = DepthClient(triton_grpc, "grpc")
        return (lambda: client.predict(jpeg)), client.close

    def image() -> tuple[Callable[[], Any], Callable[[], None]]:
        client = DepthClient(transformer_http, mode="image")
        return (lambda: client.predict(jpeg)), client.close

    def tensor_raw() -> tuple[Callable[[], Any], Callable[[], None]]:
        client = DepthClient(triton_grpc, "grpc")
        return (lambda: client.infer_tensor(x)), client.close

    return {"tensor": tensor, "image": image, "tensor-raw": tensor_raw}


@contextmanager
def demo_stack(
    work: Path, spec: BenchModel
) -> Iterator[tuple[tuple[int, int], LocalTritonServer, LocalTransformer]]:
    """``spec``'s model exported into ``work`` and served by one local Triton with one
    transformer in front of it → ((H, W) of the model input, Triton, transformer)."""
    from depth_common.config import load_params
    from depth_common.export.triton import build_triton_repository
    from depth_common.serving.local_stack import LocalTransformer
    from depth_common.serving.server import LocalTritonServer

    onnx_path, size, _ = _export(spec, work)
    repo = build_triton_repository(
        onnx_path, work / "repo", export_cfg=load_params(ROOT / "params.yaml").export
    )
    with (
        LocalTritonServer(repo, log_path=work / "triton.log") as triton,
        LocalTransformer(triton.grpc_url, log_path=work / "transformer.log") as transformer,
    ):
        yield size, triton, transformer


def run(
    results: dict[str, Any],
    *,
    duration_s: float = 4.0,
    concurrency: Sequence[int] = CONCURRENCY,
    model: BenchModel | None = None,
    rounds: int = 4,
    log: Callable[[str], None] = progress,
) -> dict[str, Any]:
    """Fill ``results["transformer"]``: ``duration_s`` per path and concurrency, in ``rounds``
    turns."""
    from depth_common.data.transforms import prepare_image
    from depth_common.serving.codec import load_rgb

    spec = model or next(m for m in default_models() if m.name == "demo")
    work = Path(tempfile.mkdtemp(prefix="bench-transformer-"))
    try:
        jpeg = street_jpeg()
        rows: list[dict[str, Any]] = []
        with demo_stack(work, spec) as ((h, w), triton, transformer):
            x = prepare_image(load_rgb(jpeg), (h, w))[None]
            callers = _callers(triton.grpc_url, transformer.url, jpeg, x)
            for c in concurrency:
                for path, stats in interleaved_load(callers, c, duration_s, rounds).items():
                    rows.append({"path": path, **stats})
                    log(
                        f"[transformer] {path} c={c}: p50 {stats['p50_ms']:.2f} ms, "
                        f"{stats['throughput_rps']:.1f} req/s"
                    )
        results["transformer"] = {
            "model": spec.name,
            "img_size": [h, w],
            "image_size": list(IMAGE_SIZE),
            "image_bytes": len(jpeg),
            "duration_s": duration_s,
            "rounds": rounds,
            "rows": rows,
        }
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def row(entry: dict[str, Any], path: str, c: int) -> dict[str, Any] | None:
    return next((r for r in entry["rows"] if r["path"] == path and r["concurrency"] == c), None)


def format_table(entry: dict[str, Any]) -> list[str]:
    h, w = entry["img_size"]
    ih, iw = entry["image_size"]
    lines = [
        f"-- {entry['model']} ({h}x{w}); a {ih}x{iw} JPEG of {entry['image_bytes']} bytes per "
        f"request, {entry['duration_s']:g} s per cell",
        f"{'conc':>4}  {'path':<12}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>9}"
        f"{'p50 vs tensor':>15}{'req/s vs tensor':>17}",
    ]
    for c in sorted({r["concurrency"] for r in entry["rows"]}):
        base = row(entry, "tensor", c)
        for r in (x for x in entry["rows"] if x["concurrency"] == c):
            p50 = r["p50_ms"] / base["p50_ms"] if base else None
            rps = r["throughput_rps"] / base["throughput_rps"] if base else None
            lines.append(
                f"{c:>4}  {r['path']:<12}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
                f"{r['throughput_rps']:>9.1f}{(f'{p50:.2f}x' if p50 else ''):>15}"
                f"{(f'{rps:.2f}x' if rps else ''):>17}"
            )
    return lines
