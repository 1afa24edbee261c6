"""export_onnx: the promoted checkpoint → ``model.onnx`` (parity-checked against PyTorch)."""

from kfp.dsl import Input, Model, Output

from components.image import depth_component


@depth_component
def export_onnx(model: Input[Model], params_json: str, run_id: str, onnx_model: Output[Model]):
    """``onnx_model`` is a directory holding ``model.onnx`` (the name Triton and the Hub use)."""
    import json
    from pathlib import Path

    from depth_common.cli.startup import record_startup
    from depth_common.config import params_from_dict
    from depth_common.export.onnx import export_onnx as export
    from depth_common.registry.aliases import registry_client
    from depth_common.registry.lineage import lineage_tags

    record_startup("export_onnx")

    p = params_from_dict(json.loads(params_json))
    result = export(
        model.path,
        Path(onnx_model.path) / "model.onnx",
        opset=p.export.opset,
        atol=p.export.parity_atol,
        run_id=run_id,
        # code, data, params, runs: the file says where it came from
        lineage=lineage_tags(registry_client(p.mlflow.tracking_uri), run_id),
    )
    onnx_model.metadata.update(
        {
            "file": "model.onnx",
            "opset": result.opset,
            "img_size": list(result.img_size),
            "input": result.input_name,
            "output": result.output_name,
            "parity_max_abs_diff_m": result.parity,
            "mlflow_run_id": run_id,
        }
    )
