"""Triton Python-backend ``model.py`` that runs a model's ``model.onnx`` with ONNX Runtime.

This file is not imported by the library: :mod:`depth_common.serving.server` copies it verbatim
as ``<model>/<version>/model.py`` into the local copy of a Triton repository, because the
``tritonserver`` bundled in the ``nvidia-pytriton`` wheel has the Python backend only (no
``onnxruntime`` backend). On a cluster Triton runs the same ``model.onnx`` with its own
``onnxruntime_onnx`` platform; here the Python stub runs it with ONNX Runtime, so outputs are
the in-process ONNX Runtime outputs.

It must stay self-contained (numpy, onnxruntime and the backend's ``triton_python_backend_utils``
only): the stub imports it from the repository, not from this package.

Model-config ``parameters`` it reads (all optional, string values):

- ``onnx_file``: file name in the version directory (default ``model.onnx``).
- ``intra_op_thread_count``: ONNX Runtime intra-op threads per instance (the name Triton's
  ONNX Runtime backend uses; default 0 = ORT decides);
  the environment variable ``DEPTH_ORT_THREADS`` overrides it, so a benchmark can pin threads
  without rewriting the repository.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort

try:  # present only inside Triton's Python-backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - imported outside Triton (lint, docs)
    pb_utils = None

# Triton's config data types → numpy, for the outputs we return (Triton checks them).
_NUMPY = {
    "TYPE_FP32": np.float32,
    "TYPE_FP16": np.float16,
    "TYPE_FP64": np.float64,
    "TYPE_INT64": np.int64,
    "TYPE_INT32": np.int32,
    "TYPE_UINT8": np.uint8,
}


def _param(config: dict, key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value or default


class TritonPythonModel:
    """One ONNX Runtime session per model instance; a dynamic batch runs as one ORT call."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        path = os.path.join(
            args["model_repository"],
            args["model_version"],
            _param(config, "onnx_file", "model.onnx"),
        )
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{config['name']}: no ONNX file at {path}")
        threads = int(
            os.environ.get("DEPTH_ORT_THREADS") or _param(config, "intra_op_thread_count", "0")
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Requests are already parallel across Triton instances; one inter-op thread per session.
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.name = config["name"]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [
            (o["name"], _NUMPY.get(o["data_type"], np.float32)) for o in config["output"]
        ]
        onnx_inputs = {i.name for i in self.session.get_inputs()}
        missing = [n for n in self.inputs if n not in onnx_inputs]
        if missing:
            raise ValueError(
                f"{self.name}: config inputs {missing} are not inputs of {path} "
                f"(it has {sorted(onnx_inputs)})"
            )

    def execute(self, requests: list) -> list:
        """Concatenate the requests' batches, run ORT once, split the outputs back."""
        try:
            feeds_per_request = [
                {n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs}
                for r in requests
            ]
            if self.batched and len(requests) > 1:
                sizes = [f[self.inputs[0]].shape[0] for f in feeds_per_request]
                feeds = {n: np.concatenate([f[n] for f in feeds_per_request]) for n in self.inputs}
                results = self.session.run([o for o, _ in self.outputs], feeds)
                bounds = np.cumsum([0, *sizes])
                per_request = [
                    [r[bounds[k] : bounds[k + 1]] for r in results] for k in range(len(requests))
                ]
            else:
                per_request = [
                    self.session.run([o for o, _ in self.outputs], f) for f in feeds_per_request
                ]
        except Exception as exc:  # the whole batch failed: every request gets the message
            error = pb_utils.TritonError(f"{self.name}: inference failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(value, dtype=dtype))
                    for (name, dtype), value in zip(self.outputs, values, strict=True)
                ]
            )
            for values in per_request
        ]

    def finalize(self) -> None:
        self.session = None
