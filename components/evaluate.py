"""evaluate: checkpoint + processed test split → test metrics (KFP UI and MLflow) + HTML report."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.image import depth_component


@depth_component
def evaluate(
    model: Input[Model],
    processed: Input[Dataset],
    params_json: str,
    run_id: str,
    test: Output[Metrics],
    report: Output[HTML],
    kfp_run: str = "",
):
    """``kfp_run``: the pipeline job name; its ``<kfp_run>/evaluate`` MLflow run nests under
    the pipeline run."""
    import json
    import shutil
    import tempfile

    from depth_common.cli.startup import record_startup
    from depth_common.config import params_from_dict
    from depth_common.evaluation.evaluate import evaluate as evaluate_model
    from depth_common.registry.tracking import TaskContext

    record_startup("evaluate")

    p = params_from_dict(json.loads(params_json))
    with tempfile.TemporaryDirectory() as tmp:  # logs test_* and the report to run_id
        context = TaskContext(kfp_run=kfp_run, dataset_uri=processed.uri)
        result = evaluate_model(
            model.path, processed.path, p, split="test", out_dir=tmp, run_id=run_id,
            context=context,
        )  # fmt: skip
        shutil.copyfile(result.report_path, report.path)  # self-contained (base64 images)
    for key, value in result.metrics.items():
        test.log_metric(key, float(value))
