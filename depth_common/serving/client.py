"""A v2 (KServe Open Inference / Triton) client for the depth model, over ``tritonclient``.

``DepthClient.predict`` takes images of any size, preprocesses them with
:func:`depth_common.data.transforms.prepare_image` (the function training uses), sends them in
batches of at most the model's ``max_batch_size`` as binary tensors (a depth map as JSON floats
is several MB), and returns each depth map in metres at its input's size.

A client holds one connection; the HTTP flavour (gevent) must be used from the thread that
created it, so give each thread its own client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

try:
    from tritonclient.utils import InferenceServerException
except ImportError as exc:  # pragma: no cover - a declared dependency
    raise ImportError("depth_common.serving.client needs tritonclient[http,grpc]") from exc

ImageLike = Image.Image | np.ndarray


class DepthServingError(RuntimeError):
    """The server refused or failed a request; ``str()`` keeps the server's own message."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ModelInfo:
    """What the client learns from the server once: tensor names, input size, batch limit."""

    name: str
    version: str
    input_name: str
    output_name: str
    height: int  # pixels, the model's input size
    width: int
    max_batch_size: int  # 0 = the model does not batch (one image per request)
    datatype: str


def _strip_scheme(url: str) -> str:
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            return url[len(scheme) :].rstrip("/")
    return url.rstrip("/")


def _server_error(exc: InferenceServerException, what: str) -> DepthServingError:
    status = exc.status()
    message = exc.message() or str(exc)
    return DepthServingError(f"{what}: server answered {status or 'an error'}: {message}", status)


def resize_depth_bilinear(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float32 HxW depth map (metres) to ``size`` = (H, W) pixels, bilinear.

    Bilinear (PIL, mode ``F``) rather than nearest: the prediction is smooth, and nearest would
    show the model's pixel grid when a 224 px map is shown at 1024 px.
    """
    h, w = size
    if depth.shape == (h, w):
        return depth.astype(np.float32, copy=False)
    img = Image.fromarray(np.ascontiguousarray(depth, dtype=np.float32), mode="F")
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


class DepthClient:
    """Depth over a v2 endpoint: ``DepthClient("127.0.0.1:8000").predict([img]) -> [HxW m]``.

    ``url`` is ``host:port`` (a leading ``http://`` is accepted); ``protocol`` is ``"http"``
    or ``"grpc"``; ``model_version`` ``""`` means the server's latest. ``timeout_s`` bounds
    connecting and each request (seconds).
    """

    def __init__(
        self,
        url: str,
        protocol: str = "http",
        model_name: str = "depth",
        model_version: str = "",
        timeout_s: float = 60.0,
    ) -> None:
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol: got {protocol!r}, expected 'http' or 'grpc'")
        self.url = _strip_scheme(url)
        self.protocol = protocol
        self.model_name = model_name
        self.model_version = model_version
        self.timeout_s = timeout_s
        if protocol == "http":
            import tritonclient.http as tc

            self._client: Any = tc.InferenceServerClient(
                self.url, connection_timeout=timeout_s, network_timeout=timeout_s
            )
        else:
            import tritonclient.grpc as tc

            self._client = tc.InferenceServerClient(self.url)
        self._tc = tc
        self._info: ModelInfo | None = None

    # -- server state ------------------------------------------------------------------------
    def ready(self) -> bool:
        """True if the server and the model are ready (False, not an error, if unreachable)."""
        try:
            return bool(
                self._client.is_server_ready()
                and self._client.is_model_ready(self.model_name, self.model_version)
            )
        except (InferenceServerException, OSError):
            return False

    def metadata(self) -> dict[str, Any]:
        """The model's v2 metadata (name, versions, platform, inputs, outputs) as a dict."""
        try:
            if self.protocol == "grpc":
                return self._client.get_model_metadata(
                    self.model_name, self.model_version, as_json=True
                )
            return self._client.get_model_metadata(self.model_name, self.model_version)
        except InferenceServerException as exc:
            raise _server_error(exc, f"metadata of model {self.model_name!r}") from None

    def config(self) -> dict[str, Any]:
        """The model's Triton config as a dict (``max_batch_size``, ``dynamic_batching``, ...)."""
        try:
            if self.protocol == "grpc":
                return self._client.get_model_config(
                    self.model_name, self.model_version, as_json=True
                )["config"]
            return self._client.get_model_config(self.model_name, self.model_version)
        except InferenceServerException as exc:
            raise _server_error(exc, f"config of model {self.model_name!r}") from None

    @property
    def info(self) -> ModelInfo:
        """Tensor names, input H x W and batch limit, read from the server on first use."""
        if self._info is None:
            meta, cfg = self.metadata(), self.config()
            inp, out = meta["inputs"][0], meta["outputs"][0]
            shape = [int(d) for d in inp["shape"]]
            if len(shape) < 3 or shape[-3] != 3:
                raise DepthServingError(
                    f"model {self.model_name!r}: input {inp['name']!r} has shape {shape}, "
                    "expected [batch, 3, H, W]"
                )
            self._info = ModelInfo(
                name=meta["name"],
                version=self.model_version or str(meta.get("versions", [""])[-1]),
                input_name=inp["name"],
                output_name=out["name"],
                height=shape[-2],
                width=shape[-1],
                max_batch_size=int(cfg.get("max_batch_size", 0)),
                datatype=inp["datatype"],
            )
        return self._info

    # -- inference ---------------------------------------------------------------------------
    def infer_tensor(self, batch: np.ndarray) -> np.ndarray:
        """Send one raw tensor as is (no checks, no chunking): ``[N,3,H,W] -> [N,1,H,W]``.

        The server decides what is valid; its refusal comes back as :class:`DepthServingError`.
        """
        info = self.info
        batch = np.ascontiguousarray(batch)
        datatype = self._datatype(batch)
        inp = self._tc.InferInput(info.input_name, list(batch.shape), datatype)
        out_kwargs: dict[str, Any] = {}
        if self.protocol == "http":
            inp.set_data_from_numpy(batch, binary_data=True)
            out_kwargs["binary_data"] = True
        else:
            inp.set_data_from_numpy(batch)
        outputs = [self._tc.InferRequestedOutput(info.output_name, **out_kwargs)]
        try:
            if self.protocol == "grpc":
                result = self._client.infer(
                    self.model_name,
                    [inp],
                    model_version=self.model_version,
                    outputs=outputs,
                    client_timeout=self.timeout_s,
                )
            else:
                result = self._client.infer(
                    self.model_name, [inp], model_version=self.model_version, outputs=outputs
                )
        except InferenceServerException as exc:
            raise _server_error(exc, f"inference on model {self.model_name!r}") from None
        return result.as_numpy(info.output_name)

    def predict(self, images: Sequence[ImageLike] | ImageLike) -> list[np.ndarray]:
        """Depth in metres (float32 HxW, each at its input's size) for PIL / uint8 HxWx3 images."""
        from depth_common.data.transforms import prepare_image

        if isinstance(images, Image.Image | np.ndarray):
            images = [images]
        info = self.info
        sizes = [_image_size(img) for img in images]
        tensors = [prepare_image(img, (info.height, info.width)) for img in images]
        chunk = max(1, info.max_batch_size)
        depths: list[np.ndarray] = []
        for start in range(0, len(tensors), chunk):
            batch = np.stack(tensors[start : start + chunk]).astype(np.float32, copy=False)
            out = self.infer_tensor(batch)
            depths.extend(out[:, 0] if out.ndim == 4 else out)
        return [resize_depth_bilinear(d, s) for d, s in zip(depths, sizes, strict=True)]

    @staticmethod
    def _datatype(batch: np.ndarray) -> str:
        from tritonclient.utils import np_to_triton_dtype

        return np_to_triton_dtype(batch.dtype) or str(batch.dtype)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection (an open HTTP connection delays the server's shutdown)."""
        self._client.close()

    def __enter__(self) -> DepthClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _image_size(image: ImageLike) -> tuple[int, int]:
    """(H, W) pixels of a PIL image or an HxWx3 array."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        raise ValueError(
            f"expected a PIL image or a uint8 HxWx3 array, got {type(image).__name__}"
            + (f" of shape {image.shape}" if isinstance(image, np.ndarray) else "")
        )
    return int(image.shape[0]), int(image.shape[1])
