"""export_tensorrt: ``model.onnx`` → a parity-gated TensorRT engine (``model.plan``), GPU only."""

from kfp import dsl
from kfp.dsl import Input, Model, Output

from components.image import COMPONENT_CUDA_IMAGE


# The CUDA image (TensorRT needs the GPU it builds for); kfp from the image, as depth_component.
@dsl.component(base_image=COMPONENT_CUDA_IMAGE, install_kfp_package=False)
def export_tensorrt(onnx_model: Input[Model], params_json: str, plan: Output[Model]):
    """``plan`` is a directory holding ``model.plan`` (the name Triton's TensorRT backend loads)."""
    import json
    from pathlib import Path

    from depth_common.cli.startup import record_startup
    from depth_common.config import params_from_dict
    from depth_common.export.tensorrt import export_tensorrt as export

    record_startup("export_tensorrt")

    p = params_from_dict(json.loads(params_json))
    onnx_file = Path(onnx_model.path) / onnx_model.metadata.get("file", "model.onnx")
    out_dir = Path(plan.path)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = export(onnx_file, out_dir / "model.plan", p.export)
    plan.metadata.update(
        {
            "file": "model.plan",
            "fp16": result.fp16,
            "parity": result.parity,
            "profile": [p.export.trt_min_batch, p.export.trt_opt_batch, p.export.trt_max_batch],
        }
    )
