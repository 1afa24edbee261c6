"""One command-line entry point: ``python -m depth_common <command> --params params.yaml --set k=v``.

Each command is a small function that loads the params once and calls the library; heavy
imports (torch, mlflow, tritonclient) happen inside the command so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from depth_common.config import ConfigError, Params, load_params
from depth_common.errors import DataError


def _params(args: argparse.Namespace) -> Params:
    return load_params(args.params, args.set or ())


def _size(text: str) -> tuple[int, int]:
    """``128x256`` → (128, 256) (height x width, pixels)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--size {text!r}: expected HEIGHTxWIDTH, e.g. 128x256"
        ) from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"--size {text!r}: sizes must be positive")
    return h, w


def cmd_synth(args: argparse.Namespace) -> int:
    from depth_common.synthetic import generate_cityscapes

    summary = generate_cityscapes(
        args.out, cities=args.cities, per_split=args.per_split, size=args.size, seed=args.seed
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

    from depth_common.distributed import TorchrunEnv
    from depth_common.train import train

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
    from depth_common.evaluate import evaluate, format_metrics_table

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
    from depth_common.predict import predict_files

    for out in predict_files(args.checkpoint, args.images, args.out):
        print(out)
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from depth_common.export.onnx import ParityError, export_onnx, log_onnx_to_mlflow

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
    from depth_common.export.onnx import ParityError
    from depth_common.export.tensorrt import TensorRTUnavailable, export_tensorrt

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
    from depth_common.serving.server import TritonServerError
    from depth_common.serving.stack import serve_forever

    repository = args.repository or _params(args).export.repository_dir
    try:
        serve_forever(
            repository,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            log_path=args.log,
            transformer_port=None if args.no_transformer else args.transformer_port,
        )
    except TritonServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from depth_common.serving.demo import launch_demo

    onnx = args.onnx
    if not args.endpoint and not args.transformer and not onnx:
        onnx = _params(args).export.onnx_path
    launch_demo(
        endpoint=args.endpoint,
        transformer=args.transformer,
        onnx_path=onnx,
        protocol=args.protocol,
        model_name=args.model_name,
        host=args.host,
        port=args.port,
    )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from depth_common.deploy.operate import rollback
    from depth_common.deploy.report import DeployError, write_deploy_report

    _log_info()
    try:
        result = rollback(_params(args))
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(write_deploy_report(result))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from depth_common.deploy.operate import status

    print("\n".join(status(_params(args))))
    return 0


def add_params_arguments(parser: argparse.ArgumentParser) -> None:
    """``--params FILE`` and repeatable ``--set section.key=value`` (every entry point's)."""
    parser.add_argument(
        "--params", default="params.yaml", help="the params file (default: params.yaml)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one param (repeatable), e.g. training.epochs=2",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m depth_common",
        description="Monocular depth: data, training, export, serving.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(
        name: str, fn: Callable[[argparse.Namespace], int], help_: str, params: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        if params:
            add_params_arguments(p)
        p.set_defaults(func=fn)
        return p

    p = command("synth", cmd_synth, "write a synthetic Cityscapes-format dataset", params=False)
    p.add_argument("--out", required=True, help="output root (leftImg8bit/, disparity/, camera/)")
    p.add_argument("--cities", type=int, default=2)
    p.add_argument("--per-split", type=int, default=8, help="images per city per split")
    p.add_argument("--size", type=_size, default=(128, 256), help="HEIGHTxWIDTH (default 128x256)")
    p.add_argument("--seed", type=int, default=0)

    p = command(
        "preprocess", cmd_preprocess, "resize RGB, convert disparity to metric depth (.npy)"
    )
    p.add_argument("--raw", help="raw dataset root (default: data.raw_dir)")
    p.add_argument("--out", help="processed output root (default: data.processed_dir)")

    p = command("train", cmd_train, "train the DPT; best checkpoint by val RMSE, logged to MLflow")
    p.add_argument("--data", help="processed dataset root (default: data.processed_dir)")
    p.add_argument("--out", help="checkpoint directory (default: training.checkpoint_dir)")
    p.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --out")

    p = command(
        "evaluate", cmd_evaluate, "evaluate a checkpoint: metrics.json, HTML report, MLflow test_*"
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="processed dataset root (default: data.processed_dir)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", default="reports", help="directory for metrics.json and report.html")
    p.add_argument(
        "--run-id", help="MLflow run to log test_* metrics to (default: the checkpoint's)"
    )

    p = command(
        "predict", cmd_predict, "image files → colourised depth PNG + .npy (metres)", params=False
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default="predictions")
    p.add_argument("images", nargs="+")

    p = command(
        "export-onnx", cmd_export_onnx, "checkpoint → model.onnx, parity-checked in ONNX Runtime"
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", help="ONNX path (default: export.onnx_path)")
    p.add_argument(
        "--run-id", help="MLflow run recorded in the metadata (default: the checkpoint's)"
    )
    p.add_argument("--mlflow", action="store_true", help="log model.onnx to that MLflow run")

    p = command(
        "export-tensorrt", cmd_export_tensorrt, "model.onnx → TensorRT plan + parity (GPU node)"
    )
    p.add_argument("--onnx", help="ONNX path (default: export.onnx_path)")
    p.add_argument("--out", help="plan path (default: export.trt_path)")
    p.add_argument("--timing-cache", help="timing cache file (default: <plan>.timing.cache)")

    p = command("triton-repo", cmd_triton_repo, "write/extend a Triton model repository")
    p.add_argument("--onnx", help="ONNX path (default: export.onnx_path)")
    p.add_argument("--plan", help="TensorRT plan (default: export.trt_path if export.tensorrt)")
    p.add_argument("--out", help="repository directory (default: export.repository_dir)")
    p.add_argument("--version", type=int, default=1, help="model version (the MLflow version)")
    p.add_argument("--model-name", help="default: export.triton_model_name")
    p.add_argument(
        "--instance-kind",
        choices=("KIND_AUTO", "KIND_CPU", "KIND_GPU"),
        default="KIND_AUTO",
        help="instance_group kind of the ONNX model (default KIND_AUTO: GPU if present)",
    )

    p = command(
        "serve",
        cmd_serve,
        "serve a Triton repository with the real local tritonserver and the image transformer "
        "in front of it (127.0.0.1) until Ctrl-C",
    )
    p.add_argument("--repository", help="Triton model repository (default: export.repository_dir)")
    p.add_argument("--http-port", type=int, default=8000, help="0 = pick a free port")
    p.add_argument("--grpc-port", type=int, default=8001, help="0 = pick a free port")
    p.add_argument("--metrics-port", type=int, default=8002, help="0 = pick a free port")
    p.add_argument(
        "--log",
        default="runs/serve/triton.log",
        help="Triton's log file (the transformer logs to transformer.log beside it)",
    )
    p.add_argument(
        "--transformer-port",
        type=int,
        default=8080,
        help="the image transformer's HTTP port (KServe v1/v2 image endpoints; default 8080)",
    )
    p.add_argument(
        "--no-transformer", action="store_true", help="serve Triton only (tensor endpoints)"
    )

    p = command("demo", cmd_demo, "Gradio demo: image → depth (a v2 endpoint or ONNX Runtime)")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--endpoint", help="v2 endpoint host:port (Triton/KServe), e.g. 127.0.0.1:8000"
    )
    src.add_argument(
        "--transformer",
        help="image transformer host:port (`serve` starts one on 127.0.0.1:8080): the demo "
        "sends the uploaded file as is",
    )
    src.add_argument("--onnx", help="ONNX file run in-process (default: export.onnx_path)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--model-name", default="depth")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)

    command(
        "rollback",
        cmd_rollback,
        "serve the registry's previous champion again on deploy.target (aliases follow)",
    )
    command("status", cmd_status, "what serves on deploy.target, which version, canary share")

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
