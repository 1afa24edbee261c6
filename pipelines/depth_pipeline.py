"""The depth pipeline: data → preprocess → train → evaluate → decide → (promote | record why not).

How the configuration reaches the tasks, how secrets enter them, the promotion branch and the
data branches: docs/pipeline.md.
"""

import inspect
import json
from pathlib import Path
from typing import Any

from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Input

from components import (
    COMPONENT_CUDA_IMAGE,
    configure,
    decide,
    deploy,
    evaluate,
    export_onnx,
    export_tensorrt,
    log_profile,
    preprocess,
    profile_data,
    push_hf,
    record_no_promotion,
    register,
    synthesize,
    train,
    triton_repository,
)
from depth_common.config import Params, load_params
from depth_common.registry.running_image import POD_NAME_ENV, POD_NAMESPACE_ENV
from depth_common.scaleout.job import MLFLOW_SECRET_KEYS, SHARED_MOUNT, STORAGE_SECRET_KEYS

PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"
PIPELINE_NAME = "depth-pipeline"

#: Pipeline parameter → the ``params.yaml`` key it sets (its default is that key's value).
PARAM_KEYS: dict[str, str] = {
    "encoder": "model.encoder",
    "pretrained": "model.pretrained",
    "img_size": "data.img_size",
    "batch_size": "data.batch_size",
    "epochs": "training.epochs",
    "encoder_lr": "training.encoder_lr",
    "decoder_lr": "training.decoder_lr",
    "mlflow_uri": "mlflow.tracking_uri",
    "mlflow_experiment": "mlflow.experiment",
    "min_improvement": "promotion.min_improvement",
    "hf_repo_id": "export.hf_repo_id",
    "deploy_target": "deploy.target",
}

#: The KFP run's name (the pipeline job name, under kfp.local too): names the MLflow parent run
#: that the tracking tasks' runs nest under (depth_common.registry.lineage).
KFP_RUN = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
#: The Secret holding the Hugging Face token (key HF_TOKEN), mounted on push_hf only.
HF_SECRET = "hf-token"


def _mlflow_task(task: dsl.PipelineTask, params: Params) -> dsl.PipelineTask:
    """A task that writes to MLflow: the MLflow / object-store credentials (if their Secrets
    are configured), and its pod's name and namespace (downward API), from which lineage reads
    the image digest the task runs (depth_common.registry.running_image)."""
    kubernetes.use_field_path_as_env(task, POD_NAME_ENV, "metadata.name")
    kubernetes.use_field_path_as_env(task, POD_NAMESPACE_ENV, "metadata.namespace")
    for name, keys in (
        (params.cluster.mlflow_secret, MLFLOW_SECRET_KEYS),
        (params.cluster.storage_secret, STORAGE_SECRET_KEYS),
    ):
        if name:
            # optional: a Secret may hold only some of the keys (e.g. a token, no password).
            kubernetes.use_secret_as_env(
                task, secret_name=name, secret_key_to_env={k: k for k in keys}, optional=True
            )
    return task


def _export_and_serve(
    trained: dsl.PipelineTask,
    evaluated: dsl.PipelineTask,
    params_json: str,
    version: Any,
    run_id: Any,
    hf_repo_id: str,
    use_trt: bool,
    settings: Params,
) -> None:
    """export ONNX [→ TensorRT] → Triton repository → [Hub push] and deploy (canary or replace)."""
    onnx = export_onnx(
        model=trained.outputs["model"], params_json=params_json, run_id=run_id
    ).set_display_name("export ONNX")
    _mlflow_task(onnx, settings)  # it reads the training run's lineage tags
    trt_inputs = {}
    if use_trt:  # compile-time: no GPU task at all when export.tensorrt is false
        trt = export_tensorrt(onnx_model=onnx.outputs["onnx_model"], params_json=params_json)
        trt.set_display_name("export TensorRT")
        trt.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        trt_inputs["plan"] = trt.outputs["plan"]
    repo = triton_repository(
        onnx_model=onnx.outputs["onnx_model"],
        params_json=params_json,
        version=version,
        **trt_inputs,
    ).set_display_name("Triton repository")
    with dsl.If(hf_repo_id != "", name="hub-push"):  # "" = skipped (shown as not run)
        pushed = push_hf(
            onnx_model=onnx.outputs["onnx_model"],
            repository=repo.outputs["repository"],
            test=evaluated.outputs["test"],
            report=evaluated.outputs["report"],
            params_json=params_json,
            run_id=run_id,
            version=version,
        ).set_display_name("push to Hugging Face Hub")
        pushed.set_caching_options(False)
        kubernetes.use_secret_as_env(
            pushed, secret_name=HF_SECRET, secret_key_to_env={"HF_TOKEN": "HF_TOKEN"}
        )
    served = deploy(
        repository=repo.outputs["repository"],
        onnx_model=onnx.outputs["onnx_model"],
        params_json=params_json,
        version=version,
        run_id=run_id,
        kfp_run=KFP_RUN,
    ).set_display_name("deploy")
    served.set_caching_options(False)  # the serving side changes outside the pipeline
    _mlflow_task(served, settings)  # it moves the registry's aliases and logs the analysis


def _train_task(prep: dsl.PipelineTask, params_json: str, settings: Params) -> dsl.PipelineTask:
    """The train task with its resources, GPU request, credentials and scale-out volume."""
    trained = train(processed=prep.outputs["processed"], params_json=params_json, kfp_run=KFP_RUN)
    # CPU limit = request: its cgroup quota is what the thread policy (depth_common.threads)
    # sizes torch's pools by, so the task runs training.train_cpu threads.
    cpu = str(settings.training.train_cpu)
    trained.set_display_name("train").set_cpu_request(cpu).set_cpu_limit(cpu)
    trained.set_memory_request(settings.training.train_memory)
    train_gpu = settings.training.train_gpu
    if train_gpu > 0:
        trained.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(train_gpu)
        trained.set_container_image(COMPONENT_CUDA_IMAGE)
    _mlflow_task(trained, settings)
    if settings.training.shared_pvc:  # scale-out: data and checkpoints move through it
        kubernetes.mount_pvc(
            trained, pvc_name=settings.training.shared_pvc, mount_path=SHARED_MOUNT
        )
    return trained


def _evaluate_and_decide(
    trained: dsl.PipelineTask, prep: dsl.PipelineTask, params_json: str, settings: Params
) -> tuple[dsl.PipelineTask, dsl.PipelineTask]:
    """evaluate the trained model on the test split, then decide against the champion."""
    run_id = trained.outputs["Output"]
    evaluated = evaluate(
        model=trained.outputs["model"],
        processed=prep.outputs["processed"],
        params_json=params_json,
        run_id=run_id,
        kfp_run=KFP_RUN,
    ).set_display_name("evaluate")
    _mlflow_task(evaluated, settings)

    decided = decide(run_id=run_id, params_json=params_json).set_display_name("decide")
    decided.after(evaluated)  # reads the test_rmse that evaluate logs to MLflow
    decided.set_caching_options(False)  # the registry changes between runs
    _mlflow_task(decided, settings)
    return evaluated, decided


def _record_why_not(run_id: Any, reason: Any) -> dsl.PipelineTask:
    """The note of a run that is not promoted (both "no" branches: decide's and register's)."""
    task = record_no_promotion(run_id=run_id, reason=reason).set_display_name("record why not")
    return task.set_caching_options(False)


def _register_and_serve(
    trained: dsl.PipelineTask,
    evaluated: dsl.PipelineTask,
    params_json: str,
    hf_repo_id: str,
    settings: Params,
    profiled: dsl.PipelineTask,
) -> None:
    """register the challenger; when it still wins under the lock, log its reference profile,
    export and serve it, else record why it stood down."""
    run_id = trained.outputs["Output"]
    registered = register(
        run_id=run_id, params_json=params_json, pipeline_run=KFP_RUN
    ).set_display_name("register challenger")
    registered.set_caching_options(False)
    _mlflow_task(registered, settings)
    version = registered.outputs["version"]
    use_trt = settings.export.tensorrt
    # register re-decides under the registry lock: a run crowned meanwhile may win.
    with dsl.If(registered.outputs["promoted"] == True, name="registered"):  # noqa: E712
        logged = log_profile(
            reference=profiled.outputs["reference"],
            run_id=run_id,
            version=version,
            params_json=params_json,
        ).set_display_name("log reference profile")
        _mlflow_task(logged.set_caching_options(False), settings)
        _export_and_serve(
            trained, evaluated, params_json, version, run_id, hf_repo_id, use_trt, settings
        )
    with dsl.Else(name="stood-down"):
        _record_why_not(run_id, registered.outputs["reason"])


def _train_and_promote_pipeline(settings: Params) -> Any:
    """The sub-pipeline each data branch runs; its compile-time settings from ``settings``
    (its own ``params_json`` input is the resolved params_json as JSON)."""

    @dsl.pipeline(
        name="train-and-promote",
        description="preprocess → train → evaluate → decide → promote or record why not",
    )
    def train_and_promote(raw: Input[Dataset], params_json: str, data_params: str, hf_repo_id: str):
        prep = preprocess(raw=raw, data_params=data_params).set_display_name("preprocess")
        prep.set_caching_options(True)  # the slow, deterministic step: reuse when inputs match
        # The drift monitor's reference: the raw training images, as clients send them.
        profiled = profile_data(raw=raw).after(prep).set_display_name("profile training data")
        trained = _train_task(prep, params_json, settings)
        evaluated, decided = _evaluate_and_decide(trained, prep, params_json, settings)
        with dsl.If(decided.outputs["promote"] == True, name="promote"):  # noqa: E712
            _register_and_serve(trained, evaluated, params_json, hf_repo_id, settings, profiled)
        with dsl.Else(name="keep-champion"):
            _record_why_not(trained.outputs["Output"], decided.outputs["reason"])

    return train_and_promote


def _train_on_data(
    train_and_promote: Any, cfg: dsl.PipelineTask, data_uri: str, synthetic: dict
) -> None:
    """The data branches: generate a synthetic dataset, or import ``data_uri``; each runs the
    same ``train_and_promote`` sub-pipeline on its raw Dataset."""
    resolved, data_params = cfg.outputs["params_json"], cfg.outputs["data_params"]
    hub = cfg.outputs["hf_repo_id"]
    with dsl.If(data_uri == "synthetic", name="synthetic-data"):
        raw = synthesize(options=synthetic).set_display_name("synthesize data")
        train_and_promote(
            raw=raw.outputs["raw"], params_json=resolved, data_params=data_params, hf_repo_id=hub
        ).set_display_name("train and promote")
    with dsl.Else(name="imported-data"):
        imported = dsl.importer(
            artifact_uri=data_uri, artifact_class=Dataset, reimport=False
        ).set_display_name("import data")
        train_and_promote(
            raw=imported.output, params_json=resolved, data_params=data_params, hf_repo_id=hub
        ).set_display_name("train and promote")


def make_pipeline(params: Params, name: str = PIPELINE_NAME) -> Any:
    """Build the pipeline function with its defaults and compile-time settings from ``params``."""
    base_params = json.dumps(params.to_dict(), sort_keys=True)
    train_and_promote = _train_and_promote_pipeline(params)

    def depth_pipeline(*values: Any):
        """``data_uri``: "synthetic", a local directory or an s3:// / gs:// / minio:// URI of a
        Cityscapes root. ``synthetic``: options of depth_common.data.synthetic.generate_cityscapes.
        ``params_overrides``: extra ``section.key=value`` settings, applied last."""
        named = dict(zip(signature.parameters, values, strict=True))
        cfg = configure(
            base_params=base_params,
            keys=PARAM_KEYS,
            values={name: named[name] for name in PARAM_KEYS},
            overrides=named["params_overrides"],
        ).set_display_name("configure")
        _train_on_data(train_and_promote, cfg, named["data_uri"], named["synthetic"])

    # KFP reads the pipeline's parameters from its signature: one per PARAM_KEYS entry, its
    # default and type that key's value in ``params``, between the data and the overrides.
    signature = _pipeline_signature(params)
    depth_pipeline.__signature__ = signature
    description = (
        "Monocular metric depth (DPT on a timm ViT): train, evaluate, and promote through the "
        "MLflow registry; defaults from params.yaml"
    )
    return dsl.pipeline(name=name, description=description)(depth_pipeline)


def _pipeline_signature(params: Params) -> inspect.Signature:
    """``data_uri``, ``synthetic``, the ``PARAM_KEYS`` parameters, ``params_overrides``."""
    flat = params.flat()
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    keyed = [
        inspect.Parameter(name, kind, default=flat[key], annotation=type(flat[key]))
        for name, key in PARAM_KEYS.items()
    ]
    return inspect.Signature(
        [
            inspect.Parameter("data_uri", kind, default=params.data.raw_dir, annotation=str),
            inspect.Parameter("synthetic", kind, default={}, annotation=dict),
            *keyed,
            inspect.Parameter("params_overrides", kind, default=[], annotation=list),
        ]
    )


#: The pipeline with the defaults of the committed params.yaml (what compile.py compiles).
depth_pipeline = make_pipeline(load_params(PARAMS_FILE))
