"""deploy: serve the registered challenger (deploy.target: local Triton or a KServe
InferenceService; deploy.strategy: replace, or a canary with analysis at each step); the
Markdown report shows the outcome, one table per analysed step, and the registry's aliases."""

from kfp.dsl import Input, Markdown, Model, Output

from components.image import depth_component


@depth_component
def deploy(
    repository: Input[Model],
    onnx_model: Input[Model],
    params_json: str,
    version: int,
    run_id: str,
    kfp_run: str,
    report: Output[Markdown],
) -> str:
    """Returns the outcome: promoted, replaced, rolled back or superseded."""
    import json
    from pathlib import Path

    from depth_common.cli.startup import record_startup
    from depth_common.config import params_from_dict
    from depth_common.data.synthetic import probe_scenes
    from depth_common.deploy.probe import ProbeSet
    from depth_common.deploy.report import canary_chart_markdown, write_deploy_report
    from depth_common.deploy.rollout import deploy_model, serving_target
    from depth_common.deploy.target import Release
    from depth_common.errors import DeployError
    from depth_common.export.onnx import file_sha256
    from depth_common.export.triton import read_onnx_io
    from depth_common.registry.lineage import record_artifacts, record_serving
    from depth_common.registry.registry import Registry
    from depth_common.registry.tracking import TaskContext, task_run

    record_startup("deploy")

    p = params_from_dict(json.loads(params_json))
    onnx_file = Path(onnx_model.path) / onnx_model.metadata.get("file", "model.onnx")
    # KFP names its MinIO store minio://bucket/key; KServe's storage initializer reads it
    # as the S3 API it is (endpoint from the storage Secret's annotations).
    uri = p.deploy.storage_uri or repository.uri.replace("minio://", "s3://", 1)
    source = uri if p.deploy.target == "kserve" else str(Path(repository.path).resolve())
    # The canary's probes (street scenes with their true depth, at the model's input size) are
    # made here and handed to the deploy: the library's deploy knows no generator.
    probes = None
    if p.deploy.strategy == "canary":
        probes = ProbeSet(*probe_scenes(read_onnx_io(onnx_file), p.deploy.probe_images))
    target = serving_target(p, image=probes.images[0] if probes else None)
    registry = Registry.from_params(p)  # one client for the lineage tags and the whole rollout
    # Lineage: the digest of the file the repository serves, and where the repository lives.
    served = Path(repository.path) / p.export.triton_model_name / str(version) / "model.onnx"
    where = uri if p.deploy.target == "kserve" else repository.uri
    record_artifacts(registry.client, p.mlflow.model_name, int(version), file_sha256(served), where)
    # The rollout's figures and report go to the pipeline run's deploy child run.
    tracked = task_run(p, TaskContext(kfp_run=kfp_run), "deploy", {"train_run_id": run_id})
    try:
        with tracked as deploy_run:
            release = Release(int(version), source, run_id, onnx_file, deploy_run)
            result = deploy_model(p, target, release, probes=probes, registry=registry)
    except DeployError as exc:
        if exc.result is not None:  # what was observed stays visible in the UI
            with open(report.path, "w") as fh:
                fh.write(write_deploy_report(exc.result))
        raise
    if result.outcome in ("promoted", "replaced"):
        record_serving(
            registry.client, p.mlflow.model_name, int(version), result.target, result.endpoint
        )
    text = write_deploy_report(result)
    with open(report.path, "w") as fh:
        fh.write(text + canary_chart_markdown(result))  # the chart: the UI only, not the log
    report.metadata.update(
        {
            "target": result.target,
            "strategy": result.strategy,
            "outcome": result.outcome,
            "endpoint": result.endpoint,
            "model_version": result.model_version,
            "aliases": result.aliases,
        }
    )
    print(text)
    return result.outcome
