"""One command-line entry point: ``python -m depth_common <command> --params params.yaml --set k=v``.

This module builds the parser, one small function per subcommand; the commands themselves are
in :mod:`depth_common.cli.commands` and import their heavy dependencies (torch, mlflow,
tritonclient) only when run, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from depth_common.cli import commands
from depth_common.errors import DepthError, Stopped, exit_code

if TYPE_CHECKING:  # what add_subparsers returns (argparse does not name it publicly)
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


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


def _focal_range(text: str) -> tuple[float, float]:
    """``0.6,1.4`` → (0.6, 1.4): factors on the Cityscapes focal, 0 < low <= high."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--focal-range {text!r}: expected LOW,HIGH factors, e.g. 0.6,1.4"
        ) from None
    if not 0 < lo <= hi < float("inf"):
        raise argparse.ArgumentTypeError(f"--focal-range {text!r}: expected 0 < LOW <= HIGH")
    return lo, hi


class _ParamsFiles(argparse.Action):
    """``--params`` given once or more replaces the default file list, in the order given."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        files = getattr(namespace, self.dest)
        setattr(namespace, self.dest, [*([] if files is self.default else files), values])


def add_params_arguments(parser: argparse.ArgumentParser) -> None:
    """Repeatable ``--params FILE`` and ``--set section.key=value`` (every entry point's)."""
    parser.add_argument(
        "--params",
        action=_ParamsFiles,
        default=["params.yaml"],
        metavar="FILE",
        help="the params file (default: params.yaml); repeated, each later file is laid over "
        "the ones before it, e.g. --params params.yaml --params params.demo.yaml",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one param (repeatable), e.g. training.epochs=2",
    )


def _command(
    sub: _Subparsers,
    name: str,
    fn: Callable[[argparse.Namespace], int],
    help_: str,
    params: bool = True,
) -> argparse.ArgumentParser:
    """The subparser of one command; ``params``: it takes ``--params``/``--set``."""
    p = sub.add_parser(name, help=help_, description=help_)
    if params:
        add_params_arguments(p)
    p.set_defaults(func=fn)
    return p


def _add_synth(sub: _Subparsers) -> None:
    p = _command(
        sub,
        "synth",
        commands.cmd_synth,
        "write a synthetic Cityscapes-format dataset",
        params=False,
    )
    p.add_argument("--out", required=True, help="output root (leftImg8bit/, disparity/, camera/)")
    p.add_argument("--cities", type=int, default=2)
    p.add_argument("--per-split", type=int, default=8, help="images per city per split")
    p.add_argument("--size", type=_size, default=(128, 256), help="HEIGHTxWIDTH (default 128x256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--focal-range",
        type=_focal_range,
        help="LOW,HIGH: each city's focal is the Cityscapes one times a factor drawn from it "
        "(e.g. 0.6,1.4; default: the Cityscapes field of view)",
    )


def _add_preprocess(sub: _Subparsers) -> None:
    p = _command(
        sub,
        "preprocess",
        commands.cmd_preprocess,
        "resize RGB, convert disparity to metric depth (.npy)",
    )
    p.add_argument("--raw", help="raw dataset root (default: data.raw_dir)")
    p.add_argument("--out", help="processed output root (default: data.processed_dir)")


def _add_train(sub: _Subparsers) -> None:
    p = _command(
        sub,
        "train",
        commands.cmd_train,
        "train the DPT; best checkpoint by val RMSE, logged to MLflow",
    )
    p.add_argument("--data", help="processed dataset root (default: data.processed_dir)")
    p.add_argument("--out", help="checkpoint directory (default: training.checkpoint_dir)")
    p.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --out")


def _add_evaluate(sub: _Subparsers) -> None:
    p = _command(
        sub,
        "evaluate",
        commands.cmd_evaluate,
        "evaluate a checkpoint: metrics.json, HTML report, MLflow test_*",
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="processed dataset root (default: data.processed_dir)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", default="reports", help="directory for metrics.json and report.html")
    p.add_argument(
        "--run-id", help="MLflow run to log test_* metrics to (default: the checkpoint's)"
    )


def _add_predict(sub: _Subparsers) -> None:
    p = _command(
        sub,
        "predict",
        commands.cmd_predict,
        "image files → colourised depth PNG + .npy (metres)",
        params=False,
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default="predictions")
    p.add_argument(
        "--focal-px",
        type=float,
        help="focal length in pixels of the upright image (default: EXIF 35 mm equivalent, "
        "else the model's canonical field of view)",
    )
    p.add_argument("--points", metavar="PLY", help="write the coloured 3-D points (one image)")
    p.add_argument(
        "--confidence",
        action="store_true",
        help="also write <stem>_confidence.png (image vs mirror agreement, 255 = sure)",
    )
    p.add_argument("images", nargs="+")


def _add_export_onnx(sub: _Subparsers) -> None:
    p = _command(
        sub,
        "export-onnx",
        commands.cmd_export_onnx,
        "checkpoint → model.onnx, parity-checked in ONNX Runtime",
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", help="ONNX path (default: export.onnx_path)")
    p.add_argument(
        "--run-id", help="MLflow run recorded in the metadata (default: the checkpoint's)"
    )
    p.add_argument("--mlflow", action="store_true", help="log model.onnx to that MLflow run")


def _add_export_tensorrt(sub: _Subparsers) -> None:
    p = _command(
        sub,
        "export-tensorrt",
        commands.cmd_export_tensorrt,
        "model.onnx → TensorRT plan + parity (GPU node)",
    )
    p.add_argument("--onnx", help="ONNX path (default: export.onnx_path)")
    p.add_argument("--out", help="plan path (default: export.trt_path)")
    p.add_argument("--timing-cache", help="timing cache file (default: <plan>.timing.cache)")


def _add_triton_repo(sub: _Subparsers) -> None:
    p = _command(
        sub, "triton-repo", commands.cmd_triton_repo, "write/extend a Triton model repository"
    )
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


def _add_serve(sub: _Subparsers) -> None:
    p = _command(
        sub,
        "serve",
        commands.cmd_serve,
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
    p.add_argument(
        "--monitor-url",
        help="the drift monitor (`monitor`): the transformer posts each request and response "
        "to it as a KServe payload-logger CloudEvent, e.g. http://127.0.0.1:8090/",
    )


def _add_demo(sub: _Subparsers) -> None:
    p = _command(
        sub,
        "demo",
        commands.cmd_demo,
        "Gradio demo: image → depth (a v2 endpoint or ONNX Runtime)",
    )
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


def _add_profile(sub: _Subparsers) -> None:
    p = _command(
        sub,
        "profile",
        commands.cmd_profile,
        "reference profile of training images (size-independent statistics) for drift detection",
        params=False,
    )
    p.add_argument("--images", required=True, help="directory searched recursively for PNG/JPEG")
    p.add_argument("--out", required=True, help="the profile JSON to write")
    p.add_argument("--max-images", type=int, default=4000, help="at most this many images")


def _add_monitor(sub: _Subparsers) -> None:
    p = _command(
        sub,
        "monitor",
        commands.cmd_monitor,
        "drift monitor: takes KServe payload-logger CloudEvents, compares the served images with "
        "the reference profile, serves /drift and /metrics, retrains when drift holds",
        params=False,
    )
    p.add_argument("--reference", required=True, help="the profile JSON (`profile` writes it)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a pod)")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--window", type=int, default=64, help="images per window (default 64)")
    p.add_argument("--alpha", type=float, default=0.001, help="significance level (default 0.001)")
    p.add_argument(
        "--trigger", choices=("none", "local", "kfp"), default="none", help="how to retrain"
    )
    p.add_argument(
        "--consecutive", type=int, default=3, help="drifted windows in a row that start a run"
    )
    p.add_argument("--cooldown-s", type=float, default=3600.0, help="seconds between runs")
    p.add_argument(
        "--local-args",
        default="--demo",
        help="arguments of `python -m pipelines.run_local` for --trigger local (default --demo)",
    )
    p.add_argument("--log-dir", default="runs/monitor", help="logs of local retraining runs")
    p.add_argument(
        "--kfp-host", help="KFP API for --trigger kfp (default $KFP_HOST; token: $KFP_TOKEN)"
    )
    p.add_argument("--kfp-namespace", help="default $KFP_NAMESPACE")
    p.add_argument(
        "--pipeline-package",
        default="pipelines/depth_pipeline.yaml",
        help="the compiled pipeline --trigger kfp submits",
    )
    p.add_argument(
        "--kfp-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a pipeline parameter of the retraining run (e.g. data_uri=s3://...)",
    )


def _add_operations(sub: _Subparsers) -> None:
    """The commands on what serves (no arguments beyond the params)."""
    _command(
        sub,
        "rollback",
        commands.cmd_rollback,
        "serve the registry's previous champion again on deploy.target (aliases follow)",
    )
    _command(
        sub,
        "status",
        commands.cmd_status,
        "what serves on deploy.target, which version, canary share",
    )


def _add_lineage(sub: _Subparsers) -> None:
    p = _command(
        sub,
        "lineage",
        commands.cmd_lineage,
        "where a registered model version came from: code, data, params, runs, files, serving",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--alias", help="the version holding this alias, e.g. champion")
    which.add_argument("--version", type=int, help="this registered model version")
    which.add_argument("--run", metavar="RUN_ID", help="versions from this MLflow run")
    which.add_argument(
        "--dataset", metavar="DIGEST", help="every version trained on this data digest"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


# In the order `--help` lists them.
_SUBCOMMANDS: tuple[Callable[[_Subparsers], None], ...] = (
    _add_synth,
    _add_preprocess,
    _add_train,
    _add_evaluate,
    _add_predict,
    _add_export_onnx,
    _add_export_tensorrt,
    _add_triton_repo,
    _add_serve,
    _add_demo,
    _add_profile,
    _add_monitor,
    _add_operations,
    _add_lineage,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m depth_common",
        description="Monocular depth: data, training, export, serving.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add_subcommand in _SUBCOMMANDS:
        add_subcommand(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DepthError as exc:  # the project's errors: one line, the exit code of their kind
        print(f"{'stopped' if isinstance(exc, Stopped) else 'error'}: {exc}", file=sys.stderr)
        return exit_code(exc)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
