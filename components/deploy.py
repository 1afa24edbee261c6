"""deploy: serve the Triton repository (deploy.target: local Triton, or a KServe InferenceService)
after a smoke test against ONNX Runtime; the Markdown report shows endpoint, version, latency."""

from kfp.dsl import Input, Markdown, Model, Output

from components.image import depth_component


@depth_component
def deploy(
    repository: Input[Model],
    onnx_model: Input[Model],
    params: str,
    version: int,
    report: Output[Markdown],
) -> str:
    """Returns the v2 endpoint that passed the smoke test."""
    import json
    from pathlib import Path

    from depth_common.config import params_from_dict
    from depth_common.deploy.report import write_deploy_report
    from depth_common.startup import record_startup

    record_startup("deploy")

    p = params_from_dict(json.loads(params))
    onnx_file = Path(onnx_model.path) / onnx_model.metadata.get("file", "model.onnx")
    model_name = p.export.triton_model_name
    if p.deploy.target == "local":
        from depth_common.deploy.local import deploy_local

        result = deploy_local(
            repository.path,
            p.export.repository_dir,
            model_name=model_name,
            model_version=int(version),
            onnx_path=onnx_file,
            atol=p.export.parity_atol,
        )
    else:
        from depth_common.deploy.kserve import deploy_kserve

        # KFP names its MinIO store minio://bucket/key; KServe's storage initializer reads it
        # as the S3 API it is (endpoint from the storage Secret's annotations).
        uri = p.deploy.storage_uri or repository.uri.replace("minio://", "s3://", 1)
        result = deploy_kserve(
            uri,
            int(version),
            p.deploy,
            model_name=model_name,
            onnx_path=onnx_file,
            atol=p.export.parity_atol,
        )
    with open(report.path, "w") as fh:
        fh.write(write_deploy_report(result))
    report.metadata.update(
        {
            "target": result.target,
            "endpoint": result.endpoint,
            "model_version": result.model_version,
        }
    )
    return result.endpoint
