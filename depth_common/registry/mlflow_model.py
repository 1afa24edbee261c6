"""The MLflow model train logs as ``runs:/<run_id>/model``, in MLflow's "models from code" form.

MLflow's pytorch flavour stores a model as a pickle, and MLflow warns that loading one can
execute code. This file is logged as the model's code instead, and the project's checkpoint as
its one artifact (read with ``torch.load(weights_only=True)``: tensors and builtins only, no
pickle of objects): loading the model runs this file -- the project's own code, readable in the
artifact -- which rebuilds the DPT and loads the weights. ``depth_common`` must be installed
where it is loaded (as it had to be for the pickle).

Input: float32 (B, 3, H, W), images normalised as ``depth_common.data.transforms`` does;
output: float32 (B, 1, H, W), depth in metres.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel

from depth_common.model.checkpoint import model_from_checkpoint
from depth_common.registry.tracking import CHECKPOINT_KEY, INPUT_NAME


class DepthModel(PythonModel):
    """The DPT of a checkpoint, as an MLflow pyfunc model (numpy in, numpy out)."""

    def load_context(self, context: Any) -> None:
        self.model, _ = model_from_checkpoint(context.artifacts[CHECKPOINT_KEY])

    def predict(self, context: Any, model_input: Any, params: Any = None) -> np.ndarray:
        if isinstance(model_input, dict):  # MLflow passes the signature's named tensor
            model_input = model_input[INPUT_NAME]
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.model(x).numpy()


mlflow.models.set_model(DepthModel())
