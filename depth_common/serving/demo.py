"""Gradio demo: upload an image → the image and its depth side by side, in metres.

The depth comes from a v2 endpoint (Triton / KServe, through :class:`DepthClient`) or from an
ONNX file run in-process by ONNX Runtime, whose session is created on the first request (as the
seed did: the page comes up at once, the model loads when needed). Either way the model input
is :func:`depth_common.data.transforms.prepare_image` and the depth is resized back to the
image's own size (bilinear), colourised with inferno (0 m to the 99th percentile) and shown
with a colour bar in metres.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from depth_common.serving.client import DepthClient, resize_depth_bilinear

#: An image (uint8 HxWx3) → depth (float32 HxW, metres, same size).
Predictor = Callable[[np.ndarray], np.ndarray]


class OnnxPredictor:
    """ONNX Runtime in-process; the session (and its H, W) is created on the first call."""

    def __init__(self, onnx_path: str | Path, threads: int = 0) -> None:
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise FileNotFoundError(f"{self.onnx_path}: ONNX model not found (export one first)")
        self.threads = threads
        self._session: Any = None
        self._lock = threading.Lock()

    def _get_session(self) -> Any:
        with self._lock:  # two first requests at once must not build two sessions
            if self._session is None:
                import onnxruntime as ort

                from depth_common.threads import ort_session_options

                # threads > 0 fixes the count; 0: what fits this process's CPUs (env wins)
                options = ort_session_options(self.threads, role="demo")
                self._session = ort.InferenceSession(
                    str(self.onnx_path), options, providers=["CPUExecutionProvider"]
                )
        return self._session

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from depth_common.data.transforms import prepare_image

        session = self._get_session()
        inp = session.get_inputs()[0]
        h, w = int(inp.shape[-2]), int(inp.shape[-1])
        x = prepare_image(image, (h, w))[None]
        depth = session.run(None, {inp.name: x})[0][0, 0]
        return resize_depth_bilinear(depth, image.shape[:2])


class EndpointPredictor:
    """A v2 endpoint through :class:`DepthClient`, one client per Gradio worker thread."""

    def __init__(self, url: str, protocol: str = "http", model_name: str = "depth") -> None:
        self.url, self.protocol, self.model_name = url, protocol, model_name
        self._local = threading.local()
        self._clients: list[DepthClient] = []
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray) -> np.ndarray:
        client = getattr(self._local, "client", None)
        if client is None:
            client = DepthClient(self.url, protocol=self.protocol, model_name=self.model_name)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client.predict([image])[0]

    def close(self) -> None:
        """Close every thread's connection (an open one delays the server's shutdown)."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()


def render_side_by_side(image: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 image + HxW depth (m) → uint8 [image | inferno depth] over a colour bar."""
    from depth_common.viz import colorbar, colorize_depth

    h, w = depth.shape
    depth = np.clip(depth, 0.0, None)
    vmax = float(np.percentile(depth, 99)) or 1.0
    coloured = colorize_depth(depth, 0.0, vmax, invalid=np.zeros(depth.shape, bool))
    # colorbar() adds a 20 px margin on each side for its labels: the bar spans the depth panel.
    bar = colorbar(0.0, vmax, width=max(32, w - 40))
    canvas = Image.new("RGB", (2 * w, h + bar.shape[0] + 4), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, 0))
    canvas.paste(Image.fromarray(coloured), (w, 0))
    canvas.paste(Image.fromarray(bar), (w + max(0, (w - bar.shape[1]) // 2), h + 4))
    return np.asarray(canvas)


def write_examples(
    out_dir: str | Path, count: int = 3, size: tuple[int, int] = (256, 512)
) -> list[Path]:
    """``count`` synthetic street scenes (PNG, ``size`` = (H, W) pixels) to use as examples."""
    from depth_common.data.io import save_png
    from depth_common.synthetic import cityscapes_camera, render_scene

    out_dir = Path(out_dir)
    paths = []
    camera = cityscapes_camera(size)
    for i in range(count):
        rgb, _ = render_scene(np.random.default_rng([2024, i]), size, camera)
        paths.append(save_png(out_dir / f"street_{i}.png", rgb))
    return paths


def _as_rgb_array(image: Any) -> np.ndarray:
    if image is None:
        raise ValueError("no image: upload one or pick an example")
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 4:  # RGBA upload: drop alpha
        arr = arr[..., :3]
    return np.ascontiguousarray(arr.astype(np.uint8, copy=False))


def make_predict_fn(predictor: Predictor) -> Callable[[Any], tuple[np.ndarray, str]]:
    """The Gradio callback: image → (side-by-side picture, a one-line depth summary)."""

    def predict(image: Any) -> tuple[np.ndarray, str]:
        import gradio as gr

        try:
            rgb = _as_rgb_array(image)
            depth = predictor(rgb)
        except Exception as exc:  # shown in the page; the server keeps running
            raise gr.Error(f"depth prediction failed: {exc}") from exc
        summary = (
            f"{rgb.shape[1]}x{rgb.shape[0]} px · depth min {depth.min():.2f} m · "
            f"median {np.median(depth):.2f} m · max {depth.max():.2f} m"
        )
        return render_side_by_side(rgb, depth), summary

    return predict


def build_demo(
    endpoint: str | None = None,
    onnx_path: str | Path | None = None,
    examples: Sequence[str | Path] | None = None,
    *,
    protocol: str = "http",
    model_name: str = "depth",
) -> Any:
    """The Gradio ``Blocks`` app over exactly one of ``endpoint`` (v2) or ``onnx_path`` (ORT).

    ``examples`` default to a few synthetic street scenes written to a temporary directory.
    The prediction is also an API: ``gradio_client.Client(url).predict(img, api_name="/predict")``.
    """
    import gradio as gr

    if (endpoint is None) == (onnx_path is None):
        raise ValueError("build_demo: give exactly one of endpoint= (v2 URL) or onnx_path=")
    if endpoint is not None:
        predictor: Predictor = EndpointPredictor(endpoint, protocol, model_name)
        source = f"v2 endpoint {endpoint} ({protocol}), model {model_name!r}"
    else:
        predictor = OnnxPredictor(onnx_path)  # type: ignore[arg-type]
        source = f"ONNX Runtime, {onnx_path}"
    if examples is None:
        examples = write_examples(tempfile.mkdtemp(prefix="depth-demo-examples-"))
    predict = make_predict_fn(predictor)

    # analytics off: no phone-home from a demo that may run on an offline cluster node.
    with gr.Blocks(title="Monocular depth", analytics_enabled=False) as demo:
        gr.Markdown(
            "# Monocular metric depth\n"
            f"DPT on a ViT; depth in metres from {source}. Upload a street image (any size)."
        )
        with gr.Row():
            image = gr.Image(label="image", type="numpy", image_mode="RGB", elem_id="input-image")
            result = gr.Image(
                label="image | depth (inferno, metres)", elem_id="depth-image", format="png"
            )
        summary = gr.Textbox(label="depth", elem_id="depth-summary", interactive=False)
        run = gr.Button("Estimate depth", variant="primary", elem_id="run")
        run.click(predict, inputs=image, outputs=[result, summary], api_name="predict")
        gr.Examples(
            examples=[[str(p)] for p in examples],
            inputs=image,
            outputs=[result, summary],
            fn=predict,
            cache_examples=False,
            run_on_click=True,
        )
    demo.predictor = predictor  # for tests and callers that want to inspect it
    return demo


def launch_demo(
    endpoint: str | None = None,
    onnx_path: str | Path | None = None,
    *,
    protocol: str = "http",
    model_name: str = "depth",
    host: str = "127.0.0.1",
    port: int = 7860,
) -> None:
    """``python -m depth_common demo``: serve the app until Ctrl-C."""
    build_demo(endpoint, onnx_path, protocol=protocol, model_name=model_name).launch(
        server_name=host, server_port=port, show_error=True
    )
