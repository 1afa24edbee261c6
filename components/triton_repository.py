"""triton_repository: ``model.onnx`` → a Triton model repository (version = registry version)."""

from kfp.dsl import Input, Model, Output

from components.image import depth_component


@depth_component
def triton_repository(
    onnx_model: Input[Model],
    params_json: str,
    version: int,
    repository: Output[Model],
    plan: Input[Model] = None,
):
    """With ``plan`` (the export_tensorrt output, only when export.tensorrt) adds ``<name>_trt``."""
    import json
    from pathlib import Path

    from depth_common.cli.startup import record_startup
    from depth_common.config import params_from_dict
    from depth_common.export.triton import build_triton_repository

    record_startup("triton_repository")

    p = params_from_dict(json.loads(params_json))
    onnx_file = Path(onnx_model.path) / onnx_model.metadata.get("file", "model.onnx")
    plan_file = None if plan is None else Path(plan.path) / plan.metadata.get("file", "model.plan")
    build_triton_repository(
        onnx_file,
        repository.path,
        model_name=p.export.triton_model_name,
        version=int(version),
        plan_path=plan_file,
        export_cfg=p.export,
    )
    repository.metadata.update(
        {
            "model_name": p.export.triton_model_name,
            "version": int(version),
            "format": "triton",
            "tensorrt": plan_file is not None,
        }
    )
