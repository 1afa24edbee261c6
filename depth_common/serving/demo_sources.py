"""Where the demo's depth comes from: an ONNX file run in-process, or a v2 endpoint (the image
transformer or Triton) through :class:`~depth_common.serving.client.DepthClient`.

Each source is a :data:`Predictor` (the image as given and its decoded pixels → depth in
metres at the image's size) with ``with_confidence`` (the depth and the mirror-agreement
confidence, :mod:`depth_common.serving.confidence`).
"""

from __future__ import annotations

# onnxruntime is imported when the first request needs the session: the page comes up at once.
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from depth_common.data.transforms import prepare_image
from depth_common.serving.client import DepthClient
from depth_common.serving.codec import ImageSource, load_rgb, resize_depth_bilinear
from depth_common.serving.confidence import confidence_from_mirror, mirror_input
from depth_common.threads import ort_session_options

#: (the image as given, its decoded uint8 HxWx3) → depth (float32 HxW, metres, same size).
Predictor = Callable[[ImageSource, np.ndarray], np.ndarray]


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

                # threads > 0 fixes the count; 0: what fits this process's CPUs (env wins)
                options = ort_session_options(self.threads, role="demo")
                self._session = ort.InferenceSession(
                    str(self.onnx_path), options, providers=["CPUExecutionProvider"]
                )
        return self._session

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def __call__(self, image: ImageSource, rgb: np.ndarray | None = None) -> np.ndarray:

        image = load_rgb(image) if rgb is None else rgb
        session = self._get_session()
        inp = session.get_inputs()[0]
        h, w = int(inp.shape[-2]), int(inp.shape[-1])
        x = prepare_image(image, (h, w))[None]
        depth = session.run(None, {inp.name: x})[0][0, 0]
        return resize_depth_bilinear(depth, image.shape[:2])

    def with_confidence(self, image: ImageSource, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(depth, confidence) at the image's size: the image and its mirror as one batch."""

        session = self._get_session()
        inp = session.get_inputs()[0]
        x = prepare_image(rgb, (int(inp.shape[-2]), int(inp.shape[-1])))
        a, b = session.run(None, {inp.name: np.stack([x, mirror_input(x)])})[0][:, 0]
        return _at_size(a, b, rgb.shape[:2])


class EndpointPredictor:
    """A v2 endpoint through :class:`DepthClient`, one client per Gradio worker thread.

    ``mode="tensor"``: Triton (the decoded image is preprocessed here); ``mode="image"``: the
    transformer (the image is sent as it was uploaded, and decoded there).
    """

    def __init__(
        self, url: str, protocol: str = "http", model_name: str = "depth", mode: str = "tensor"
    ) -> None:
        self.url, self.protocol, self.model_name, self.mode = url, protocol, model_name, mode
        self._local = threading.local()
        self._clients: list[DepthClient] = []
        self._lock = threading.Lock()

    def __call__(self, image: ImageSource, rgb: np.ndarray | None = None) -> np.ndarray:
        client = getattr(self._local, "client", None)
        if client is None:
            client = DepthClient(self.url, self.protocol, self.model_name, mode=self.mode)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        if self.mode == "image":
            return client.predict([image])[0]
        return client.predict([load_rgb(image) if rgb is None else rgb])[0]

    def with_confidence(self, image: ImageSource, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(depth, confidence) at the image's size: the transformer's ``confidence`` output,
        or (tensor mode) the image and its mirror as one batch of two."""

        client = DepthClient(self.url, self.protocol, self.model_name, mode=self.mode)
        try:
            if self.mode == "image":
                answer = client.predict_image(image, confidence=True)
                return answer.depth, answer.confidence
            x = prepare_image(rgb, (client.info.height, client.info.width))
            a, b = client.infer_tensor(np.stack([x, mirror_input(x)]))[:, 0]
        finally:
            client.close()
        return _at_size(a, b, rgb.shape[:2])

    def close(self) -> None:
        """Close every thread's connection (an open one delays the server's shutdown)."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()


def _at_size(
    depth: np.ndarray, mirrored: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Model-size depth and the mirror's → (depth, confidence) at the image's ``size``."""
    confidence = confidence_from_mirror(depth, mirrored)
    return resize_depth_bilinear(depth, size), resize_depth_bilinear(confidence, size)
