"""evaluate: checkpoint + processed test split → test metrics (KFP UI and MLflow) + HTML report."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.image import depth_component


@depth_component
def evaluate(
    model: Input[Model],
    processed: Input[Dataset],
    params: str,
    run_id: str,
    test: Output[Metrics],
    report: Output[HTML],
):
    import json
    import shutil
    import tempfile

    from depth_common.cli.startup import record_startup
    from depth_common.config import params_from_dict
    from depth_common.evaluation.evaluate import evaluate as evaluate_model

    record_startup("evaluate")

    p = params_from_dict(json.loads(params))
    with tempfile.TemporaryDirectory() as tmp:  # logs test_* and the report to run_id
        result = evaluate_model(
            model.path, processed.path, p, split="test", out_dir=tmp, run_id=run_id
        )
        shutil.copyfile(result.report_path, report.path)  # self-contained (base64 images)
    for key, value in result.metrics.items():
        test.log_metric(key, float(value))
