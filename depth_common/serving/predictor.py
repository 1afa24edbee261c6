"""What the transformer reads from its Triton predictor: the model's tensor names and input
size (v2 model metadata) and the canonical focal its depth is for (Triton's model config).

The transformer calls the predictor with kserve's gRPC client; Triton's ModelConfig RPC is not
in kserve's v2 protocol, so :data:`ConfigResponse` declares the few config fields needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from depth_common.errors import FocalError
from depth_common.serving.camera import CANONICAL_FOCAL_PARAMETER, CanonicalCamera, check_focal
from depth_common.serving.kserve_import import pb


@dataclass(frozen=True)
class PredictorGeometry:
    """What the transformer needs to know about the Triton model (read from its metadata)."""

    input_name: str
    output_name: str
    height: int
    width: int
    batched: bool  # the input has a leading batch dimension
    # The camera the model's depth is for; None: the export does not say (Cityscapes rig).
    canonical_focal_px: float | None = None

    @property
    def camera(self) -> CanonicalCamera:
        if self.canonical_focal_px is None:
            return CanonicalCamera.cityscapes(self.width)
        return CanonicalCamera(self.canonical_focal_px, self.width)


def geometry_from_metadata(meta: pb.ModelMetadataResponse) -> PredictorGeometry:
    """Input/output names and H x W from a v2 ``ModelMetadataResponse``."""
    if not meta.inputs or not meta.outputs:
        raise ValueError(f"model {meta.name!r}: metadata lists no inputs or outputs")
    inp, out = meta.inputs[0], meta.outputs[0]
    shape = [int(d) for d in inp.shape]
    if len(shape) not in (3, 4) or shape[-3] != 3 or min(shape[-2:]) <= 0:
        raise ValueError(
            f"model {meta.name!r}: input {inp.name!r} has shape {shape}, expected [batch, 3, H, W]"
        )
    if inp.datatype != "FP32":
        raise ValueError(f"model {meta.name!r}: input {inp.name!r} is {inp.datatype}, not FP32")
    return PredictorGeometry(inp.name, out.name, shape[-2], shape[-1], len(shape) == 4)


def _config_response_type() -> type:
    """A message type reading only ``config.parameters`` of Triton's ``ModelConfigResponse``.

    kserve's v2 protocol has no ModelConfig RPC and ``tritonclient.grpc`` cannot be imported
    beside kserve (module docstring of kserve_import), so the few fields needed are declared
    here with Triton's field numbers (response.config = 1, ModelConfig.parameters = 14,
    ModelParameter.string_value = 1) in a private pool; every other field is skipped.
    """
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="depth_config_subset.proto", package="subset")
    param = proto.message_type.add(name="ModelParameter")
    param.field.add(name="string_value", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    config = proto.message_type.add(name="ModelConfig")
    entry = config.nested_type.add(name="ParametersEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".subset.ModelParameter")  # fmt: skip
    config.field.add(name="parameters", number=14, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                     type_name=".subset.ModelConfig.ParametersEntry")  # fmt: skip
    response = proto.message_type.add(name="ModelConfigResponse")
    response.field.add(name="config", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                       type_name=".subset.ModelConfig")  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("subset.ModelConfigResponse"))


ConfigResponse = _config_response_type()


def canonical_focal_from_config(response: Any, model: str) -> float | None:
    """The ``canonical_focal_px`` config parameter (pixels at the input width), None if unset."""
    param = response.config.parameters.get(CANONICAL_FOCAL_PARAMETER)
    if param is None or not param.string_value:
        return None
    try:
        return check_focal(float(param.string_value), CANONICAL_FOCAL_PARAMETER)
    except (ValueError, FocalError):
        raise ValueError(
            f"model {model!r}: config parameter {CANONICAL_FOCAL_PARAMETER} is "
            f"{param.string_value!r}, expected a number of pixels in (1, 100000]"
        ) from None
