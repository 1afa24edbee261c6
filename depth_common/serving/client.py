"""A v2 (KServe Open Inference / Triton) client for the depth model, over ``tritonclient``.

Two modes, one ``predict`` (images of any size in, depth in metres at each image's size out):

- ``mode="tensor"`` (Triton directly, HTTP or gRPC): images are decoded with
  :func:`depth_common.serving.codec.load_rgb`, preprocessed with
  :func:`depth_common.data.transforms.prepare_image` (the function training uses), sent in
  batches of at most the model's ``max_batch_size`` as binary tensors, and the depth is
  resized back here.
- ``mode="image"`` (the KServe transformer, HTTP): each image goes as it is (a file's bytes,
  or a lossless PNG of an array) in the v2 ``image_bytes`` input; the transformer decodes,
  preprocesses and resizes with the same functions and returns the FP32 ``depth`` output.

``timeout_s`` bounds connecting and every call, over HTTP and gRPC; an unreachable server or a
timeout raises :class:`DepthConnectionError` naming the URL (``ready()`` returns False
instead). A client holds one connection and makes one call at a time, so give each thread
its own client. HTTP calls go over :class:`~depth_common.serving.v2_http.V2HttpConnection`
(stdlib ``http.client``; tritonclient builds and parses the bodies).
"""

from __future__ import annotations

# tritonclient's http and grpc modules are imported where a client is made: deploy.probe and
# deploy.smoke import this module for its request helpers.
import io
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.client import HTTPException
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from depth_common.data.transforms import prepare_image
from depth_common.errors import DepthConnectionError, DepthServingError
from depth_common.serving.codec import load_rgb, resize_depth_bilinear
from depth_common.serving.v2_http import V2HttpConnection

try:
    from tritonclient.utils import InferenceServerException
except ImportError as exc:  # pragma: no cover - a declared dependency
    raise ImportError("depth_common.serving.client needs tritonclient[http,grpc]") from exc

__all__ = [
    "DepthClient",
    "DepthConnectionError",
    "DepthServingError",
    "ImageDepth",
    "ModelInfo",
    "resize_depth_bilinear",
]

ImageLike = Image.Image | np.ndarray | bytes | str | os.PathLike
T = TypeVar("T")
MODES = ("tensor", "image")
# gRPC statuses (tritonclient's ``status()`` strings) that mean "could not reach it in time".
_UNREACHABLE = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
#: What the transports let through for a refused or reset connection, a timeout, or a broken
#: answer (``http.client.HTTPException``: a truncated body, a bad status line).
_TRANSPORT_ERRORS = (OSError, socket.timeout, TimeoutError, HTTPException)


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


@dataclass(frozen=True)
class ImageDepth:
    """One image's answer (:meth:`DepthClient.predict_image`), at the upright image's size."""

    depth: np.ndarray  # (H, W) float32 metres
    focal_px: float  # the focal the depth is for, pixels
    points: np.ndarray | None = None  # (H, W, 3) float32 metres: X right, Y down, Z forward
    confidence: np.ndarray | None = None  # (H, W) float32 in [0, 1], 1 = sure


def _strip_scheme(url: str) -> str:
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            return url[len(scheme) :].rstrip("/")
    return url.rstrip("/")


def encode_for_upload(image: ImageLike) -> bytes:
    """The bytes image mode sends: a file's or a bytes object's own bytes, else a PNG."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        with open(image, "rb") as f:
            return f.read()
    buf = io.BytesIO()
    # compress_level 1: lossless and fast; the upload is read once.
    Image.fromarray(load_rgb(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class DepthClient:
    """Depth over a v2 endpoint: ``DepthClient("127.0.0.1:8000").predict([img]) -> [HxW m]``.

    ``url`` is ``host[:port]`` (a leading ``http://`` is accepted; ``https://`` speaks TLS,
    checked against the system's CAs; an HTTP port defaults to 80, or 443 with TLS);
    ``protocol`` is ``"http"`` or ``"grpc"`` (image mode: ``"http"``); ``model_version``
    ``""`` means the server's latest. ``timeout_s`` bounds connecting and every call (seconds).
    """

    def __init__(
        self,
        url: str,
        protocol: str = "http",
        model_name: str = "depth",
        model_version: str = "",
        timeout_s: float = 60.0,
        mode: str = "tensor",
    ) -> None:
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol: got {protocol!r}, expected 'http' or 'grpc'")
        if mode not in MODES:
            raise ValueError(f"mode: got {mode!r}, expected one of {MODES}")
        if url.startswith("https://") and protocol != "http":
            raise ValueError(f"url {url!r}: https:// is for protocol='http'")
        if mode == "image" and protocol != "http":
            raise ValueError("mode 'image': the transformer speaks HTTP (protocol='http')")
        self.url = _strip_scheme(url)
        self.tls = url.startswith("https://")
        self.protocol, self.mode = protocol, mode
        self.model_name = model_name
        self.model_version = model_version
        self.timeout_s = timeout_s
        if protocol == "http":
            import tritonclient.http as tc

            # tritonclient.http for its tensors and bodies; the calls go over V2HttpConnection.
            self._client: Any = V2HttpConnection(self.url, timeout_s, tls=self.tls)
        else:
            import tritonclient.grpc as tc

            self._client = tc.InferenceServerClient(self.url)
        self._tc = tc
        self._info: ModelInfo | None = None

    @property
    def address(self) -> str:
        """The server as errors name it: ``http://``, ``https://`` or ``grpc://`` + url."""
        return f"{'https' if self.tls else self.protocol}://{self.url}"

    # -- calls -------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One call with the timeout; errors become this client's own, naming the URL."""
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            status = exc.status()
            message = exc.message() or str(exc)
            if status in _UNREACHABLE or (status is None and "timed out" in message.lower()):
                raise DepthConnectionError(
                    f"{what}: {self.address} unreachable or no answer within "
                    f"{self.timeout_s:g} s ({status or 'error'}: {message})",
                    status,
                ) from None
            raise DepthServingError(
                f"{what}: server answered {status or 'an error'}: {message}", status
            ) from None
        except _TRANSPORT_ERRORS as exc:
            raise DepthConnectionError(
                f"{what}: {self.address} unreachable or no answer within "
                f"{self.timeout_s:g} s ({type(exc).__name__}: {exc})"
            ) from None

    # -- server state ------------------------------------------------------------------------
    def ready(self) -> bool:
        """True if the server and the model are ready (False, not an error, if unreachable)."""
        try:
            return bool(
                self._call("server ready", self._client.is_server_ready)
                and self._call(
                    "model ready", self._client.is_model_ready, self.model_name, self.model_version
                )
            )
        except DepthServingError:
            return False

    def metadata(self) -> dict[str, Any]:
        """The model's v2 metadata (name, versions, platform, inputs, outputs) as a dict."""
        extra = {"as_json": True} if self.protocol == "grpc" else {}
        return self._call(
            f"metadata of model {self.model_name!r}",
            self._client.get_model_metadata,
            self.model_name,
            self.model_version,
            **extra,
        )

    def config(self) -> dict[str, Any]:
        """The model's Triton config as a dict (``max_batch_size``, ``dynamic_batching``, ...)."""
        what = f"config of model {self.model_name!r}"
        if self.protocol == "grpc":
            fn = self._client.get_model_config
            return self._call(what, fn, self.model_name, self.model_version, as_json=True)["config"]
        return self._call(what, self._client.get_model_config, self.model_name, self.model_version)

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
    def _infer(self, inputs: list[Any], output_names: Sequence[str]) -> Any:
        out_kwargs = {"binary_data": True} if self.protocol == "http" else {}
        outputs = [self._tc.InferRequestedOutput(n, **out_kwargs) for n in output_names]
        return self._call(
            f"inference on model {self.model_name!r}",
            self._client.infer,
            self.model_name,
            inputs,
            model_version=self.model_version,
            outputs=outputs,
        )

    def infer_tensor(self, batch: np.ndarray) -> np.ndarray:
        """Send one raw tensor as is (no checks, no chunking): ``[N,3,H,W] -> [N,1,H,W]``.

        The server decides what is valid; its refusal comes back as :class:`DepthServingError`.
        """
        info = self.info
        batch = np.ascontiguousarray(batch)
        inp = self._tc.InferInput(info.input_name, list(batch.shape), self._datatype(batch))
        if self.protocol == "http":
            inp.set_data_from_numpy(batch, binary_data=True)
        else:
            inp.set_data_from_numpy(batch)
        return self._infer([inp], [info.output_name]).as_numpy(info.output_name)

    def infer_images(
        self,
        images: Sequence[bytes],
        outputs: Sequence[str] = ("depth",),
        focal_px: Sequence[float] | None = None,
    ) -> Any:
        """Image mode: one v2 request with ``images`` (encoded) as the BYTES input
        ``image_bytes`` and, if given, one focal length per image (pixels of the upright
        image) as the FP32 input ``focal_px``; returns tritonclient's result
        (``as_numpy("depth")`` ...)."""
        data = np.empty(len(images), dtype=object)
        data[:] = list(images)
        inp = self._tc.InferInput("image_bytes", [len(images)], "BYTES")
        inp.set_data_from_numpy(data, binary_data=True)
        inputs = [inp]
        if focal_px is not None:
            focals = np.asarray(focal_px, dtype=np.float32)
            if focals.shape != (len(images),):
                raise ValueError(
                    f"focal_px: expected one focal per image ({len(images)}), got {focals.shape}"
                )
            focal = self._tc.InferInput("focal_px", [len(images)], "FP32")
            focal.set_data_from_numpy(focals, binary_data=True)
            inputs.append(focal)
        return self._infer(inputs, outputs)

    def predict_image(
        self,
        image: ImageLike,
        focal_px: float | None = None,
        points: bool = False,
        confidence: bool = False,
    ) -> ImageDepth:
        """Image mode: one image's depth in metres and the focal it is for (``focal_px`` if
        given, else the photo's EXIF, else the model's field of view: the transformer's
        order), with its points and confidence map when asked."""
        if self.mode != "image":
            raise ValueError("predict_image: the camera outputs come from the transformer "
                             "(mode='image')")  # fmt: skip
        names = ["depth", "focal_px"] + ["points"] * points + ["confidence"] * confidence
        focals = None if focal_px is None else [focal_px]
        result = self.infer_images([encode_for_upload(image)], names, focals)
        return ImageDepth(
            depth=result.as_numpy("depth")[0],
            focal_px=float(result.as_numpy("focal_px")[0]),
            points=result.as_numpy("points")[0] if points else None,
            confidence=result.as_numpy("confidence")[0] if confidence else None,
        )

    def predict(self, images: Sequence[ImageLike] | ImageLike) -> list[np.ndarray]:
        """Depth in metres (float32 HxW, each at its input's size) for images of any kind:
        PIL images, arrays, encoded bytes or file paths (see :func:`load_rgb`)."""
        if isinstance(images, Image.Image | np.ndarray | bytes | str | os.PathLike):
            images = [images]
        if self.mode == "image":
            # One image per request: each comes back at its own size.
            return [
                self.infer_images([encode_for_upload(img)]).as_numpy("depth")[0] for img in images
            ]

        info = self.info
        rgbs = [load_rgb(img) for img in images]
        tensors = [prepare_image(rgb, (info.height, info.width)) for rgb in rgbs]
        chunk = max(1, info.max_batch_size)
        depths: list[np.ndarray] = []
        for start in range(0, len(tensors), chunk):
            batch = np.stack(tensors[start : start + chunk]).astype(np.float32, copy=False)
            out = self.infer_tensor(batch)
            depths.extend(out[:, 0] if out.ndim == 4 else out)
        return [
            resize_depth_bilinear(d, rgb.shape[:2]) for d, rgb in zip(depths, rgbs, strict=True)
        ]

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
