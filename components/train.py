"""train: processed dataset → best checkpoint (Model) + its val metrics; returns the MLflow run."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import depth_component


@depth_component
def train(
    processed: Input[Dataset],
    params_json: str,
    model: Output[Model],
    val: Output[Metrics],
    kfp_run: str = "",
) -> str:
    """``kfp_run``: the pipeline job name; the MLflow run is ``<kfp_run>/train``, a child of
    that pipeline run's parent run."""
    import json
    import os
    import shutil
    from pathlib import Path

    from depth_common.cli.startup import record_startup
    from depth_common.config import params_from_dict
    from depth_common.registry.tracking import TaskContext, nest_run
    from depth_common.scaleout.launch import job_name_for, needs_cluster, run_scaled_training
    from depth_common.training.train import train as train_model

    record_startup("train")
    p = params_from_dict(json.loads(params_json))
    # Scratch next to the artifact (not uploaded); only the best checkpoint becomes the Model.
    work = Path(model.path).parent / "train-work"
    context = TaskContext(kfp_run=kfp_run, dataset_uri=processed.uri)
    if needs_cluster(p):  # torchrun DDP in a TrainJob / PyTorchJob; this pod waits for it
        run_name = job_name_for(os.environ.get("HOSTNAME", "depth-train"))
        result = run_scaled_training(p, processed.path, work, run_name=run_name)
        if result.mlflow_run_id:  # rank 0 made the run: nest it under the pipeline run
            nest_run(p, result.mlflow_run_id, context, "train")
    else:
        # resume: a retried task whose scratch survived (SIGTERM saved last.pt) continues it.
        result = train_model(p, processed.path, work, resume=True, tracking=True, context=context)
    if not result.mlflow_run_id:
        raise RuntimeError("train: no MLflow run was created; promotion needs one")
    shutil.move(str(result.checkpoint_path), model.path)
    shutil.rmtree(work, ignore_errors=True)
    for key, value in result.best_val.items():
        val.log_metric(key, float(value))
    model.metadata.update(
        {
            "format": "depth_common.checkpoint/v1",
            "encoder": p.model.encoder,
            "img_size": list(p.data.img_size),
            "best_val_rmse": float(result.best_val.get("val_rmse", float("nan"))),
            "epochs_run": result.epochs_run,
            "mlflow_run_id": result.mlflow_run_id,
        }
    )
    return result.mlflow_run_id
