"""Gradio demo: upload an image → the image and its depth side by side, in metres.

The depth comes from one of three sources: the image transformer (the uploaded file is sent as
it is, :class:`DepthClient` image mode), a v2 tensor endpoint (Triton, :class:`DepthClient`),
or an ONNX file run in-process by ONNX Runtime, whose session is created on the first request
(the page comes up at once, the model loads when needed). The upload is decoded once with
:func:`depth_common.serving.codec.load_rgb` (EXIF orientation, 16-bit, alpha...); the model
input is :func:`depth_common.data.transforms.prepare_image` and the depth is resized back to the
image's own size (bilinear), colourised with inferno (0 m to the 99th percentile) and shown
with a colour bar in metres. Very large results are downscaled for display (the summary is
computed at full size); tiny ones are enlarged so the colour bar's labels stay readable.

Below it, the confidence map (the image and its mirror predicted as one batch of two,
:mod:`depth_common.serving.confidence`; white = sure) and an interactive 3-D view of the points
(Gradio ``Model3D`` over a coloured PLY; :mod:`depth_common.serving.camera`, with the focal
from EXIF or the default field of view, at most ``VIEW_MAX_POINTS`` points).

:func:`launch_demo` serves the app on uvicorn itself rather than through gradio's ``launch()``,
which offers no read timeout and no connection cap: :func:`demo_server` sets both
(:mod:`depth_common.serving.http_guard`, ``deploy.read_timeout_s`` / ``deploy.max_connections``).
"""

from __future__ import annotations

# gradio, fastapi and onnxruntime are imported where the demo starts or a model runs:
# its image helpers are used without a UI.
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from PIL import Image

from depth_common.config import DeployConfig
from depth_common.data.io import save_png
from depth_common.data.synthetic import cityscapes_camera, render_scene
from depth_common.evaluation.viz import colorbar, colorize_depth
from depth_common.serving.camera import (
    CanonicalCamera,
    back_project,
    encode_ply,
    exif_focal_35mm,
    resolve_focal,
)
from depth_common.serving.codec import load_rgb, resize_depth_bilinear
from depth_common.serving.demo_sources import EndpointPredictor, OnnxPredictor, Predictor
from depth_common.serving.http_guard import guard_uvicorn

#: Display limits of each panel: the longer side at most, the width at least.
DISPLAY_MAX_SIDE = 1024
DISPLAY_MIN_WIDTH = 160
#: Points sent to the browser's 3-D view at most (a 12 MP photo would be 144 MB of PLY).
VIEW_MAX_POINTS = 60_000


def display_size(h: int, w: int) -> tuple[int, int]:
    """(H, W) of each displayed panel: the longer side at most ``DISPLAY_MAX_SIDE``; an image
    narrower than ``DISPLAY_MIN_WIDTH`` enlarged by a whole factor (pixels stay square)."""
    if max(h, w) > DISPLAY_MAX_SIDE:
        scale = DISPLAY_MAX_SIDE / max(h, w)
        return max(1, round(h * scale)), max(1, round(w * scale))
    if w < DISPLAY_MIN_WIDTH:
        factor = -(-DISPLAY_MIN_WIDTH // w)
        return h * factor, w * factor
    return h, w


def render_side_by_side(image: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 image + HxW depth (m) → uint8 [image | inferno depth] over a colour bar.

    The colour scale comes from the full-size depth; the panels are shown at
    :func:`display_size`.
    """

    depth = np.clip(depth, 0.0, None)
    vmax = float(np.percentile(depth, 99)) or 1.0
    h, w = display_size(*depth.shape)
    if (h, w) != depth.shape:
        enlarge = h > depth.shape[0]
        depth = _resize_for_display(depth, (h, w), enlarge)
        image = np.asarray(
            Image.fromarray(image).resize(
                (w, h), Image.Resampling.NEAREST if enlarge else Image.Resampling.LANCZOS
            )
        )
    coloured = colorize_depth(depth, 0.0, vmax, invalid=np.zeros(depth.shape, bool))
    # colorbar() adds a 20 px margin on each side for its labels: the bar spans the depth panel.
    bar = colorbar(0.0, vmax, width=max(120, w - 40))
    canvas = Image.new("RGB", (max(2 * w, w + bar.shape[1]), h + bar.shape[0] + 4), "white")
    canvas.paste(Image.fromarray(image), (0, 0))
    canvas.paste(Image.fromarray(coloured), (w, 0))
    canvas.paste(Image.fromarray(bar), (w + max(0, (w - bar.shape[1]) // 2), h + 4))
    return np.asarray(canvas)


def _resize_for_display(depth: np.ndarray, size: tuple[int, int], enlarge: bool) -> np.ndarray:
    if not enlarge:
        return resize_depth_bilinear(depth, size)
    fy, fx = size[0] // depth.shape[0], size[1] // depth.shape[1]
    return np.repeat(np.repeat(depth, fy, axis=0), fx, axis=1)


def render_confidence(confidence: np.ndarray) -> np.ndarray:
    """Confidence (H, W) in [0, 1] → uint8 grey picture (white = sure) at :func:`display_size`."""
    grey = np.clip(np.rint(np.nan_to_num(confidence) * 255), 0, 255).astype(np.uint8)
    h, w = display_size(*grey.shape)
    picture = Image.fromarray(grey).resize((w, h), Image.Resampling.BILINEAR).convert("RGB")
    return np.asarray(picture)


def view_ply(rgb: np.ndarray, depth: np.ndarray, focal_px: float, out_dir: Path) -> Path:
    """A coloured PLY of the points for the 3-D view, every k-th row and column so that at
    most :data:`VIEW_MAX_POINTS` remain (the focal scales with the subsampling). Y points up
    here (the viewer's convention; the camera frame's Y points down)."""
    h, w = depth.shape
    step = max(1, int(np.ceil(np.sqrt(h * w / VIEW_MAX_POINTS))))
    points = back_project(depth[::step, ::step], focal_px / step)
    points[..., 1] *= -1
    path = Path(tempfile.mkstemp(suffix=".ply", dir=out_dir)[1])
    path.write_bytes(encode_ply(points, np.ascontiguousarray(rgb[::step, ::step])))
    return path


def write_examples(
    out_dir: str | Path, count: int = 3, size: tuple[int, int] = (256, 512)
) -> list[Path]:
    """``count`` synthetic street scenes (PNG, ``size`` = (H, W) pixels) to use as examples."""

    out_dir = Path(out_dir)
    paths = []
    camera = cityscapes_camera(size)
    for i in range(count):
        rgb, _ = render_scene(np.random.default_rng([2024, i]), size, camera)
        paths.append(save_png(out_dir / f"street_{i}.png", rgb))
    return paths


def make_predict_fn(predictor: Predictor) -> Callable[[Any], tuple[np.ndarray, str]]:
    """The Gradio callback: image → (side-by-side picture, a one-line depth summary)."""

    def predict(image: Any) -> tuple[np.ndarray, str]:
        import gradio as gr

        if image is None:
            raise gr.Error("no image: upload one or pick an example")
        try:
            rgb = load_rgb(image)
            depth = predictor(image, rgb)
        except Exception as exc:  # shown in the page; the server keeps running
            raise gr.Error(f"depth prediction failed: {exc}") from exc
        summary = (
            f"{rgb.shape[1]}x{rgb.shape[0]} px · depth min {depth.min():.2f} m · "
            f"median {np.median(depth):.2f} m · max {depth.max():.2f} m"
        )
        return render_side_by_side(rgb, depth), summary

    return predict


def make_extras_fn(predictor: Predictor) -> Callable[[Any], tuple[np.ndarray, str]]:
    """The Gradio callback for the second row: image → (confidence picture, PLY path)."""
    out_dir = Path(tempfile.mkdtemp(prefix="depth-demo-points-"))

    def extras(image: Any) -> tuple[np.ndarray, str]:
        import gradio as gr

        if image is None:
            raise gr.Error("no image: upload one or pick an example")
        try:
            rgb = load_rgb(image)
            depth, confidence = predictor.with_confidence(image, rgb)  # type: ignore[attr-defined]
        except Exception as exc:  # shown in the page; the server keeps running
            raise gr.Error(f"confidence / points failed: {exc}") from exc
        h, w = rgb.shape[:2]
        f35 = exif_focal_35mm(Path(image).read_bytes()) if isinstance(image, str) else None
        focal, _ = resolve_focal(None, f35, (h, w), CanonicalCamera.cityscapes(w))
        return render_confidence(confidence), str(view_ply(rgb, depth, focal, out_dir))

    return extras


def build_demo(
    endpoint: str | None = None,
    onnx_path: str | Path | None = None,
    examples: Sequence[str | Path] | None = None,
    *,
    transformer: str | None = None,
    protocol: str = "http",
    model_name: str = "depth",
) -> Any:
    """The Gradio ``Blocks`` app over exactly one of ``endpoint`` (v2 tensors, Triton),
    ``transformer`` (the image transformer) or ``onnx_path`` (ONNX Runtime in-process).

    ``examples`` default to a few synthetic street scenes written to a temporary directory.
    The prediction is also an API: ``gradio_client.Client(url).predict(img, api_name="/predict")``.
    """
    import gradio as gr

    if sum(x is not None for x in (endpoint, transformer, onnx_path)) != 1:
        raise ValueError(
            "build_demo: give exactly one of endpoint= (v2 URL), transformer= or onnx_path="
        )
    if transformer is not None:
        predictor: Predictor = EndpointPredictor(transformer, "http", model_name, mode="image")
        source = f"the image transformer {transformer}, model {model_name!r}"
    elif endpoint is not None:
        predictor = EndpointPredictor(endpoint, protocol, model_name)
        source = f"v2 endpoint {endpoint} ({protocol}), model {model_name!r}"
    else:
        predictor = OnnxPredictor(onnx_path)  # type: ignore[arg-type]
        source = f"ONNX Runtime, {onnx_path}"
    if examples is None:
        examples = write_examples(tempfile.mkdtemp(prefix="depth-demo-examples-"))
    predict, extras = make_predict_fn(predictor), make_extras_fn(predictor)

    def predict_all(image: Any) -> tuple[np.ndarray, str, np.ndarray, str]:
        return (*predict(image), *extras(image))

    # analytics off: no phone-home from a demo that may run on an offline cluster node.
    with gr.Blocks(title="Monocular depth", analytics_enabled=False) as demo:
        gr.Markdown(
            "# Monocular metric depth\n"
            f"DPT on a ViT; depth in metres from {source}. Upload a street image (any size)."
        )
        with gr.Row():
            # filepath + no image_mode: Gradio hands over the uploaded file untouched (its own
            # conversion would clip a 16-bit PNG and drop the EXIF orientation).
            image = gr.Image(label="image", type="filepath", image_mode=None, elem_id="input-image")
            result = gr.Image(
                label="image | depth (inferno, metres)", elem_id="depth-image", format="png"
            )
        summary = gr.Textbox(label="depth", elem_id="depth-summary", interactive=False)
        with gr.Row():
            confidence = gr.Image(
                label="confidence (image vs mirror; white = sure)", elem_id="confidence-image"
            )
            view = gr.Model3D(
                label="3-D points (metres; drag to turn)",
                elem_id="points-3d",
                display_mode="point_cloud",
                clear_color=(1.0, 1.0, 1.0, 1.0),
            )
        run = gr.Button("Estimate depth", variant="primary", elem_id="run")
        # /predict keeps its two outputs (its API); confidence and points follow it (/extras).
        run.click(predict, inputs=image, outputs=[result, summary], api_name="predict").then(
            extras, inputs=image, outputs=[confidence, view], api_name="extras"
        )
        gr.Examples(
            examples=[[str(p)] for p in examples],
            inputs=image,
            outputs=[result, summary, confidence, view],
            fn=predict_all,
            cache_examples=False,
            run_on_click=True,
        )
    demo.predictor = predictor  # for tests and callers that want to inspect it
    return demo


def launch_demo(
    endpoint: str | None = None,
    onnx_path: str | Path | None = None,
    *,
    transformer: str | None = None,
    protocol: str = "http",
    model_name: str = "depth",
    host: str = "127.0.0.1",
    port: int = 7860,
    limits: DeployConfig | None = None,
) -> None:
    """``python -m depth_common demo``: serve the app until Ctrl-C (``limits``: the read
    timeout and connection cap of ``params.deploy``; default: their defaults)."""
    demo = build_demo(
        endpoint, onnx_path, transformer=transformer, protocol=protocol, model_name=model_name
    )
    print(f"demo: http://{host}:{port}", flush=True)
    demo_server(demo, host, port, limits).run()


def demo_server(demo: Any, host: str, port: int, limits: DeployConfig | None = None) -> Any:
    """A ``uvicorn.Server`` (not started) serving ``demo`` on ``host:port``, with a deadline to
    send each request and a cap on connections (over it: 408, 503)."""
    import gradio as gr  # heavy: only the demo needs it
    from fastapi import FastAPI

    limits = limits if limits is not None else DeployConfig()
    app = gr.mount_gradio_app(
        FastAPI(), demo, path="", server_name=host, server_port=port, show_error=True
    )
    config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    guard_uvicorn(config, limits.read_timeout_s, limits.max_connections)
    return uvicorn.Server(config)
