"""Loading and running a TensorRT plan on the GPU: the optional imports, CUDA calls and
:class:`TrtRunner` (``depth_common.export.tensorrt`` builds the plans).

``tensorrt`` and the CUDA bindings are imported only inside the functions here, so machines
without them can import this module; what is missing surfaces as :class:`TensorRTUnavailable`
naming it.

CUDA memory and streams use NVIDIA's ``cuda-python`` (``cuda.bindings.runtime``) rather than
``pycuda``: it ships prebuilt wheels (pycuda compiles against a local CUDA toolkit, which a
slim GPU node image does not have), it is what TensorRT's own Python samples use since
TensorRT 10, and the project's torch build already installs it (``cuda-bindings``).
"""

from __future__ import annotations

# tensorrt and cuda exist only in the CUDA image: they are imported where an engine runs,
# so the module imports (and says what is missing) on a CPU machine.
from pathlib import Path
from typing import Any

import numpy as np

from depth_common.errors import TensorRTUnavailable
from depth_common.export.onnx import INPUT_NAME, OUTPUT_NAME


def import_tensorrt() -> Any:
    """The ``tensorrt`` module; :class:`TensorRTUnavailable` saying how to install it if absent."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "TensorRT export needs the 'tensorrt' Python package and an NVIDIA GPU "
            f"({exc}); install it on a GPU node with `pip install 'depth-common[gpu]'`, "
            "or set export.tensorrt=false"
        ) from exc
    return trt


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise TensorRTUnavailable(
            f"the TensorRT runner needs NVIDIA's CUDA bindings ({exc}): pip install cuda-python"
        ) from exc
    return cudart


def _cuda_call(result: tuple[Any, ...]) -> Any:
    """Unwrap a ``cuda.bindings`` return tuple ``(err, *values)``; raise on a CUDA error."""
    cudart = _import_cudart()
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(err)
        raise RuntimeError(f"CUDA error {err.name}: {text.decode(errors='replace')}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def gpu_available() -> tuple[bool, str]:
    """(True, description) when TensorRT, the CUDA bindings and a CUDA GPU are all usable;
    otherwise (False, the reason), e.g. for ``pytest.skip``."""
    try:
        trt = import_tensorrt()
        cudart = _import_cudart()
    except TensorRTUnavailable as exc:
        return False, str(exc)
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or not count:
        _, text = cudart.cudaGetErrorString(err)
        return False, f"no usable CUDA GPU ({err.name}: {text.decode(errors='replace')})"
    return True, f"{count} CUDA GPU(s), TensorRT {trt.__version__}"


class TrtRunner:
    """Run a TensorRT plan on float32 ``[B, 3, H, W]`` → ``[B, 1, H, W]`` (metres).

    Device buffers are allocated once for the profile's maximum batch; ``infer`` sets the
    input shape per call, so any batch in [min, max] runs. Use as a context manager (or call
    ``close``) to free GPU memory.
    """

    def __init__(self, plan_path: str | Path) -> None:
        trt = import_tensorrt()
        cudart = _import_cudart()
        self._trt, self._cudart = trt, cudart
        self.plan_path = Path(plan_path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(
                f"{self.plan_path}: TensorRT could not deserialize the plan (built with another "
                "TensorRT version or GPU?)"
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        for name in (INPUT_NAME, OUTPUT_NAME):
            if name not in names:
                raise RuntimeError(f"{self.plan_path}: no I/O tensor '{name}' (found {names})")
        self.context = self.engine.create_execution_context()
        lo, _, hi = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.img_size = (int(hi[2]), int(hi[3]))
        self._in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(INPUT_NAME)))
        self._out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(OUTPUT_NAME)))
        h, w = self.img_size
        self._stream = _cuda_call(cudart.cudaStreamCreate())
        self._d_in = self._d_out = None
        self._d_in = _cuda_call(
            cudart.cudaMalloc(self.max_batch * 3 * h * w * self._in_dtype.itemsize)
        )
        self._d_out = _cuda_call(
            cudart.cudaMalloc(self.max_batch * h * w * self._out_dtype.itemsize)
        )
        self.context.set_tensor_address(INPUT_NAME, int(self._d_in))
        self.context.set_tensor_address(OUTPUT_NAME, int(self._d_out))

    def infer(self, images: np.ndarray) -> np.ndarray:
        """float32 ``[B, 3, H, W]`` normalised images → float32 ``[B, 1, H, W]`` depth (m)."""
        cudart = self._cudart
        h, w = self.img_size
        if images.ndim != 4 or images.shape[1:] != (3, h, w):
            raise ValueError(
                f"TrtRunner: input shape {list(images.shape)}, expected [B, 3, {h}, {w}]"
            )
        batch = images.shape[0]
        if not self.min_batch <= batch <= self.max_batch:
            raise ValueError(
                f"TrtRunner: batch {batch} outside the engine's profile "
                f"[{self.min_batch}, {self.max_batch}]"
            )
        x = np.ascontiguousarray(images, dtype=self._in_dtype)
        if not self.context.set_input_shape(INPUT_NAME, tuple(x.shape)):
            raise RuntimeError(f"TrtRunner: TensorRT rejected input shape {list(x.shape)}")
        out = np.empty(tuple(self.context.get_tensor_shape(OUTPUT_NAME)), dtype=self._out_dtype)
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _cuda_call(cudart.cudaMemcpyAsync(self._d_in, x.ctypes.data, x.nbytes, h2d, self._stream))
        if not self.context.execute_async_v3(int(self._stream)):
            raise RuntimeError("TrtRunner: TensorRT execution failed (see the TensorRT log)")
        _cuda_call(
            cudart.cudaMemcpyAsync(out.ctypes.data, self._d_out, out.nbytes, d2h, self._stream)
        )
        _cuda_call(cudart.cudaStreamSynchronize(self._stream))
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        """Free the device buffers and the stream (idempotent)."""
        cudart = self._cudart
        for attr in ("_d_in", "_d_out"):
            ptr = getattr(self, attr, None)
            if ptr is not None:
                _cuda_call(cudart.cudaFree(ptr))
                setattr(self, attr, None)
        if getattr(self, "_stream", None) is not None:
            _cuda_call(cudart.cudaStreamDestroy(self._stream))
            self._stream = None

    def __enter__(self) -> TrtRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
