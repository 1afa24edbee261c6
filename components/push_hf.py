"""push_hf: model.onnx + the Triton repository + a model card to the Hugging Face Hub
(only when export.hf_repo_id is set; HF_TOKEN comes from a Kubernetes Secret)."""

from kfp.dsl import HTML, Input, Metrics, Model

from components.image import depth_component


@depth_component
def push_hf(
    onnx_model: Input[Model],
    repository: Input[Model],
    test: Input[Metrics],
    params_json: str,
    run_id: str,
    version: int,
    report: Input[HTML] = None,
) -> str:
    """Returns the Hub commit URL."""
    import json
    from pathlib import Path

    from depth_common.cli.startup import record_startup
    from depth_common.config import params_from_dict
    from depth_common.export.hub import (
        REPORT_IN_REPO,
        ModelCardInfo,
        push_to_hub,
        with_onnx_camera,
    )
    from depth_common.export.onnx import file_sha256, read_metadata
    from depth_common.registry.lineage import ONNX_SHA256, carried

    record_startup("push_hf")

    p = params_from_dict(json.loads(params_json))
    h, w = p.data.img_size
    onnx_file = Path(onnx_model.path) / onnx_model.metadata.get("file", "model.onnx")
    card = ModelCardInfo(
        title=f"DPT ({p.model.encoder}) monocular metric depth, {h}x{w}",
        metrics={k: float(v) for k, v in test.metadata.items()},
        params=p.flat(),
        data=f"Cityscapes-layout data ({p.data.layout} layout), test split",
        model_version=str(version),
        mlflow_run_id=run_id,
        registered_model=p.mlflow.model_name,
        lineage={**carried(read_metadata(onnx_file)), ONNX_SHA256: file_sha256(onnx_file)},
        report=REPORT_IN_REPO if report is not None else "",
    )
    card = with_onnx_camera(card, onnx_file)  # the canonical camera, as exported
    result = push_to_hub(
        onnx_file,
        p.export.hf_repo_id,
        card=card,
        repository_dir=repository.path,
        report_path=None if report is None else report.path,
    )
    print(f"pushed to {result.repo_url}: {result.commit_url}")
    return result.commit_url
