"""The commands behind ``python -m depth_common <command>`` (the parser is ``depth_common.cli.parser``).

Each command is a small function that loads the params once and calls the library; heavy
imports (torch, mlflow, tritonclient) happen inside the command so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys

from depth_common.config import Params, load_params


def _params(args: argparse.Namespace) -> Params:
    return load_params(args.params, args.set or ())


def cmd_synth(args: argparse.Namespace) -> int:
    from depth_common.data.synthetic import generate_cityscapes

    summary = generate_cityscapes(
        args.out,
        cities=args.cities,
        per_split=args.per_split,
        size=args.size,
        seed=args.seed,
        focal_range=args.focal_range,
    )
    print(json.dumps(summary, indent=2))
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from depth_common.data.preprocess import preprocess_dataset

    params = _params(args)
    manifest = preprocess_dataset(
        args.raw or params.data.raw_dir, args.out or params.data.processed_dir, params.data
    )
    print(json.dumps(manifest["counts"], indent=2))
    for line in manifest["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from torch.distributed.elastic.multiprocessing.errors import record

    from depth_common.training.distributed import TorchrunEnv
    from depth_common.training.train import train

    params = _params(args)
    _log_info()  # epoch summaries and the AMP mode go to stderr
    # Under torchrun, `record` hands a failing rank's traceback to torchrun's error summary.
    result = record(train)(
        params,
        args.data or params.data.processed_dir,
        args.out or params.training.checkpoint_dir,
        resume=args.resume,
    )
    if TorchrunEnv.from_environ().rank == 0:  # one report per job, not one per rank
        print(f"best checkpoint: {result.checkpoint_path}")
        print(json.dumps(result.best_val, indent=2))
    return 0


def _log_info() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # no-op if already set up


def cmd_evaluate(args: argparse.Namespace) -> int:
    from depth_common.evaluation.evaluate import evaluate, format_metrics_table

    params = _params(args)
    _log_info()
    result = evaluate(
        args.checkpoint,
        args.data or params.data.processed_dir,
        params,
        split=args.split,
        out_dir=args.out,
        run_id=args.run_id,
    )
    print(format_metrics_table(result.metrics))
    print(f"protocol: {result.protocol}")
    print(f"report: {result.report_path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from depth_common.serving.predict import predict_files

    outputs = predict_files(
        args.checkpoint,
        args.images,
        args.out,
        focal_px=args.focal_px,
        points=args.points,
        confidence=args.confidence,
    )
    for out in outputs:
        print(out)
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from depth_common.errors import ParityError
    from depth_common.export.onnx import export_onnx, log_onnx_to_mlflow

    params = _params(args)
    try:
        result = export_onnx(
            args.checkpoint,
            args.out or params.export.onnx_path,
            opset=params.export.opset,
            atol=params.export.parity_atol,
            run_id=args.run_id,
        )
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    run_id = result.metadata.get("mlflow_run_id")
    if args.mlflow and run_id:
        print(f"logged: {log_onnx_to_mlflow(result.path, run_id, params.mlflow.tracking_uri)}")
    print(json.dumps({"path": str(result.path), "parity_max_abs_diff": result.parity}, indent=2))
    return 0


def cmd_export_tensorrt(args: argparse.Namespace) -> int:
    from depth_common.errors import ParityError, TensorRTUnavailable
    from depth_common.export.tensorrt import export_tensorrt

    params = _params(args)
    try:
        result = export_tensorrt(
            args.onnx or params.export.onnx_path,
            args.out or params.export.trt_path,
            params.export,
            timing_cache_path=args.timing_cache,
        )
    except (TensorRTUnavailable, ParityError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {"path": str(result.plan_path), "fp16": result.fp16, "parity": result.parity}, indent=2
        )
    )
    return 0


def cmd_triton_repo(args: argparse.Namespace) -> int:
    from depth_common.export.triton import build_triton_repository

    params = _params(args)
    plan = args.plan or (params.export.trt_path if params.export.tensorrt else None)
    repo = build_triton_repository(
        args.onnx or params.export.onnx_path,
        args.out or params.export.repository_dir,
        model_name=args.model_name or params.export.triton_model_name,
        version=args.version,
        plan_path=plan,
        export_cfg=params.export,
        instance_kind=args.instance_kind,
    )
    print(repo)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from depth_common.errors import TritonServerError
    from depth_common.serving.local_stack import serve_forever

    params = _params(args)
    repository = args.repository or params.export.repository_dir
    try:
        serve_forever(
            repository,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            log_path=args.log,
            transformer_port=None if args.no_transformer else args.transformer_port,
            limits=params.deploy,
            monitor_url=args.monitor_url,
        )
    except TritonServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from depth_common.serving.demo import launch_demo

    params = _params(args)
    onnx = args.onnx
    if not args.endpoint and not args.transformer and not onnx:
        onnx = params.export.onnx_path
    launch_demo(
        endpoint=args.endpoint,
        transformer=args.transformer,
        onnx_path=onnx,
        protocol=args.protocol,
        model_name=args.model_name,
        host=args.host,
        port=args.port,
        limits=params.deploy,
    )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from depth_common.deploy.report import write_deploy_report
    from depth_common.deploy.rollback import rollback
    from depth_common.deploy.rollout import serving_target
    from depth_common.errors import DeployError
    from depth_common.registry.registry import Registry

    _log_info()
    params = _params(args)
    try:
        # must_exist: a mistyped mlflow.tracking_uri creates no empty store
        result = rollback(Registry.from_params(params, must_exist=True), serving_target(params))
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(write_deploy_report(result))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from depth_common.deploy.rollback import status
    from depth_common.deploy.rollout import serving_target
    from depth_common.registry.registry import Registry

    params = _params(args)
    registry = Registry.from_params(params, must_exist=True)  # status creates no store
    print("\n".join(status(registry, serving_target(params))))
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    """One version (``--alias`` / ``--version``) as an object; ``--run`` / ``--dataset`` as
    ``{"versions": [...]}`` (JSON) or one table per version."""
    from depth_common.registry import lineage
    from depth_common.registry.aliases import registry_client
    from depth_common.registry.store import require_sqlite_store

    params = _params(args)
    uri = params.mlflow.tracking_uri
    require_sqlite_store(uri)  # never create an empty store just to say "none"
    client = registry_client(uri)
    name = params.mlflow.model_name
    if args.alias is not None:
        versions = [lineage.alias_version(client, name, args.alias)]
    elif args.version is not None:
        versions = [args.version]
    elif args.run is not None:
        versions = lineage.versions_of_run(client, name, args.run)
    else:
        versions = lineage.versions_of_dataset(client, name, args.dataset)
    entries = [lineage.describe_version(client, name, v) for v in versions]
    one = args.alias is not None or args.version is not None
    if args.json:
        print(json.dumps(entries[0] if one else {"versions": entries}, indent=2))
    else:
        print("\n\n".join(lineage.format_lineage(e) for e in entries))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from depth_common.monitoring.profile import profile_directory, save_profile

    profile = profile_directory(args.images, max_images=args.max_images)
    path = save_profile(profile, args.out)
    print(f"profile of {profile.images} images from {args.images} → {path}")
    return 0


def _kfp_arguments(pairs: list[str]) -> dict[str, object]:
    import yaml

    from depth_common.errors import ConfigError

    out: dict[str, object] = {}
    for text in pairs:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--kfp-arg {text!r}: expected NAME=VALUE")
        out[name.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def cmd_monitor(args: argparse.Namespace) -> int:
    import os
    import shlex

    from depth_common.monitoring.drift import KSDriftDetector
    from depth_common.monitoring.profile import load_profile
    from depth_common.monitoring.service import DriftMonitor, serve_monitor
    from depth_common.monitoring.trigger import LocalLauncher, Retrainer, build_launcher

    _log_info()
    detector = KSDriftDetector(load_profile(args.reference), alpha=args.alpha)
    launcher = build_launcher(
        args.trigger,
        local_command=[sys.executable, "-m", "pipelines.run_local", *shlex.split(args.local_args)],
        log_dir=args.log_dir,
        kfp_host=args.kfp_host,
        package=args.pipeline_package,
        arguments=_kfp_arguments(args.kfp_arg),
        namespace=args.kfp_namespace or os.environ.get("KFP_NAMESPACE"),
    )
    retrainer = Retrainer(launcher, consecutive=args.consecutive, cooldown_s=args.cooldown_s)
    monitor = DriftMonitor(detector, window=args.window, retrainer=retrainer)
    try:
        serve_monitor(monitor, args.host, args.port, ready=lambda line: print(line, flush=True))
    finally:
        if isinstance(launcher, LocalLauncher):  # its runs are this process's children
            launcher.stop_all()
    return 0
