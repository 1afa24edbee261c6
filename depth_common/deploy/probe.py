"""The canary's probe set and how it is sent: the measuring half of the analysis.

The probe set is given by the caller (the deploy component renders fixed street scenes with
:func:`depth_common.data.synthetic.probe_scenes` at the model's input size), each image with its
true depth (metres) -- the known reference output. :func:`measure` sends every probe to both versions, one request of batch 1
at a time, alternating which version goes first so drift on a shared machine (load, caches)
falls on both; a warm-up request per version is sent first and not counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from depth_common.data.transforms import prepare_image
from depth_common.deploy.analysis import VersionSample
from depth_common.serving.client import DepthClient, resize_depth_bilinear


@dataclass(frozen=True)
class ProbeSet:
    images: tuple[np.ndarray, ...]  # uint8 HxWx3
    depths: tuple[np.ndarray, ...]  # float32 HxW metres, 0 = sky (no depth)

    def __post_init__(self) -> None:
        if not self.images or len(self.images) != len(self.depths):
            raise ValueError(
                f"probe set: {len(self.images)} images and {len(self.depths)} depth maps; "
                "expected at least one image, each with its depth"
            )

    @property
    def size(self) -> tuple[int, int]:
        h, w = self.images[0].shape[:2]
        return int(h), int(w)


@dataclass(frozen=True)
class VersionEndpoint:
    """One version to call: ``model_version`` "" means the one the endpoint serves."""

    role: str  # "champion" | "challenger"
    label: str  # e.g. "v3" (the MLflow model version)
    url: str  # v2 base URL (host:port or http://...)
    model_name: str
    model_version: str = ""

    @property
    def title(self) -> str:
        return f"{self.role} {self.label}"


class _Caller:
    """One version's client, its prepared inputs and what it answered."""

    def __init__(self, endpoint: VersionEndpoint, probes: ProbeSet, timeout_s: float) -> None:

        self.endpoint = endpoint
        self.client = DepthClient(
            endpoint.url, "http", endpoint.model_name, endpoint.model_version, timeout_s
        )
        self.probes = probes
        self.inputs: list[np.ndarray] = []
        self.unreachable: str | None = None  # why the warm-up failed: every request fails
        self.depths: list[np.ndarray | None] = []
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def warm_up(self) -> None:

        try:
            info = self.client.info  # the version's own input size
            size = (info.height, info.width)
            self.inputs = [
                prepare_image(im, size)[None].astype(np.float32) for im in self.probes.images
            ]
            self.client.infer_tensor(self.inputs[0])
        except Exception as exc:
            self.unreachable = f"{type(exc).__name__}: {exc}"

    def call(self, i: int) -> None:

        problem = self.unreachable
        if problem is None:
            start = time.perf_counter()
            try:
                out = self.client.infer_tensor(self.inputs[i])
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                elapsed_ms = (time.perf_counter() - start) * 1e3
                depth, problem = _check_output(out, self.inputs[i].shape[2:])
        if problem is not None:
            self.depths.append(None)
            self.errors.append(problem)
            return
        self.latencies.append(elapsed_ms)
        self.depths.append(resize_depth_bilinear(depth, self.probes.size))

    def sample(self) -> VersionSample:
        return VersionSample(
            self.endpoint.title, tuple(self.depths), tuple(self.latencies), tuple(self.errors)
        )

    def close(self) -> None:
        self.client.close()


def _check_output(out: np.ndarray, hw: tuple[int, ...]) -> tuple[np.ndarray, str | None]:
    expected = (1, 1, *hw)
    if tuple(out.shape) != expected:
        return out, f"output shape {tuple(out.shape)}, expected {expected}"
    if not np.isfinite(out).all():
        return out, "output has NaN or inf values"
    return out[0, 0].astype(np.float32), None


def measure(
    champion: VersionEndpoint,
    challenger: VersionEndpoint,
    probes: ProbeSet,
    timeout_s: float = 30.0,
) -> tuple[VersionSample, VersionSample]:
    """Send every probe to both versions (interleaved); never raises for a bad endpoint."""
    callers = [_Caller(champion, probes, timeout_s), _Caller(challenger, probes, timeout_s)]
    try:
        for caller in callers:
            caller.warm_up()
        for i in range(len(probes.images)):
            for caller in callers if i % 2 == 0 else callers[::-1]:
                caller.call(i)
        return callers[0].sample(), callers[1].sample()
    finally:
        for caller in callers:
            caller.close()
