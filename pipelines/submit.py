"""Compile the depth pipeline and submit a run to a Kubeflow Pipelines cluster.

    python -m pipelines.submit --host https://kfp.example.com --experiment depth \\
        --run-name nightly --arg data_uri=s3://bucket/cityscapes --set training.epochs=30
    python -m pipelines.submit --dry-run ...   # print what would be submitted; no network
    python -m pipelines.submit --schedule "0 3 * * 1" ...   # a KFP recurring run (weekly)

Host and token come from ``--host`` / ``--token`` or the environment (``KFP_HOST``,
``KFP_TOKEN``); the token is never printed. ``--arg NAME=VALUE`` sets a pipeline parameter
(the value is parsed as YAML: numbers, lists, booleans), ``--set section.key=value`` adds to
the ``params_overrides`` parameter. Arguments are checked against the pipeline's parameters
before anything is sent. ``--schedule CRON`` creates a recurring run instead of one run (KFP's
cron has a seconds field first: a five-field expression gets ``0`` seconds). Credentials for MLflow / object storage are Kubernetes Secrets on the
cluster (see ``pipelines/depth_pipeline.py``), never arguments.
"""

import argparse
import json
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from depth_common.config import load_params, parse_override
from depth_common.errors import ConfigError

DEFAULT_EXPERIMENT = "depth-estimation"


@dataclass(frozen=True)
class Submission:
    """Everything one submission sends (the token only as "is it set")."""

    host: str | None
    experiment: str
    run_name: str
    package: Path
    arguments: dict[str, Any]
    namespace: str | None = None
    token_set: bool = False
    service_account: str | None = None  # cluster.service_account: may manage InferenceServices

    def kfp_cli(self) -> str:
        """The equivalent ``kfp run create`` command line."""
        cmd = ["kfp"]
        if self.host:
            cmd += ["--endpoint", self.host]
        if self.namespace:
            cmd += ["--namespace", self.namespace]
        if self.token_set:
            cmd += ["--existing-token", "$KFP_TOKEN"]
        cmd += ["run", "create", "--experiment-name", self.experiment]
        cmd += ["--run-name", self.run_name, "--package-file", str(self.package)]
        for name, value in self.arguments.items():
            text = value if isinstance(value, str) else json.dumps(value)
            cmd.append(f"{name}={text}")
        return " ".join(c if c == "$KFP_TOKEN" else shlex.quote(c) for c in cmd).replace(
            "$KFP_TOKEN", '"$KFP_TOKEN"'
        )


def pipeline_parameters(pipeline: Any) -> dict[str, Any]:
    """``{name: default}`` of the pipeline's parameters (from its component spec)."""
    return {name: spec.default for name, spec in (pipeline.component_spec.inputs or {}).items()}


def build_arguments(
    pipeline: Any, args: Sequence[str] = (), overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Pipeline arguments from ``NAME=VALUE`` texts and ``section.key=value`` overrides.

    Unknown parameter names and malformed overrides fail here, naming the offending text.
    """
    known = pipeline_parameters(pipeline)
    arguments: dict[str, Any] = {}
    for text in args:
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--arg {text!r}: expected NAME=VALUE")
        if name not in known:
            raise ConfigError(
                f"--arg {text!r}: the pipeline has no parameter {name!r}; "
                f"known: {', '.join(sorted(known))}"
            )
        try:
            arguments[name] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--arg {text!r}: value is not valid YAML ({exc})") from None
    if overrides:
        for text in overrides:
            parse_override(text)  # fail early on a malformed override
        arguments["params_overrides"] = [*arguments.get("params_overrides", []), *overrides]
    return arguments


def prepare(
    *,
    host: str | None,
    experiment: str,
    run_name: str | None,
    args: Sequence[str],
    overrides: Sequence[str],
    params_path: str | Path,
    out_dir: str | Path,
    namespace: str | None = None,
    token_set: bool = False,
) -> Submission:
    """Compile the pipeline built from ``params_path`` into ``out_dir`` and check the arguments."""
    from compile import compile_to
    from pipelines.depth_pipeline import make_pipeline

    params = load_params(params_path)
    params.with_overrides(overrides)  # validate the overrides against the config now
    pipeline = make_pipeline(params)
    arguments = build_arguments(pipeline, args, overrides)
    package = compile_to(pipeline, Path(out_dir) / "depth_pipeline.yaml")
    name = run_name or f"{pipeline.name}-{params.model.encoder}"
    account = params.cluster.service_account or None
    return Submission(host, experiment, name, package, arguments, namespace, token_set, account)


def submit(sub: Submission, token: str | None) -> str:
    """Send ``sub`` to the KFP API; return the run id."""
    import kfp

    client = kfp.Client(host=sub.host, existing_token=token, namespace=sub.namespace)
    result = client.create_run_from_pipeline_package(
        str(sub.package),
        arguments=sub.arguments,
        run_name=sub.run_name,
        experiment_name=sub.experiment,
        namespace=sub.namespace,
        service_account=sub.service_account,
    )
    return result.run_id


_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?/,\-]+$")


def kfp_cron(text: str) -> str:
    """``--schedule``: a 5-field cron (minute first) or KFP's 6-field one (seconds first)."""
    fields = text.split()
    if len(fields) not in (5, 6) or not all(_CRON_FIELD.match(f) for f in fields):
        raise ConfigError(
            f"--schedule {text!r}: expected a cron expression of 5 fields (e.g. '0 3 * * 1') "
            "or KFP's 6 (seconds first)"
        )
    return " ".join(["0", *fields] if len(fields) == 5 else fields)


def submit_recurring(sub: Submission, token: str | None, cron: str) -> str:
    """A KFP recurring run of ``sub`` on ``cron`` (6 fields); return its id."""
    import kfp

    client = kfp.Client(host=sub.host, existing_token=token, namespace=sub.namespace)
    experiment = client.create_experiment(sub.experiment, namespace=sub.namespace)
    result = client.create_recurring_run(
        experiment_id=experiment.experiment_id,
        job_name=sub.run_name,
        cron_expression=cron,
        max_concurrency=1,  # a retraining that overruns its period is not doubled
        no_catchup=True,  # a paused schedule resumes; it does not replay the missed runs
        params=sub.arguments,
        pipeline_package_path=str(sub.package),
        service_account=sub.service_account,
    )
    return result.recurring_run_id


def describe(sub: Submission) -> Mapping[str, Any]:
    return {
        "host": sub.host,
        "namespace": sub.namespace,
        "experiment": sub.experiment,
        "run_name": sub.run_name,
        "service_account": sub.service_account,
        "package": str(sub.package),
        "arguments": sub.arguments,
        "token": "set" if sub.token_set else "not set",
        "kfp_cli": sub.kfp_cli(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.submit", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default=os.environ.get("KFP_HOST"), help="KFP API (KFP_HOST)")
    parser.add_argument("--token", help="bearer token (default: $KFP_TOKEN); never printed")
    parser.add_argument("--namespace", default=os.environ.get("KFP_NAMESPACE"))
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    parser.add_argument("--run-name")
    parser.add_argument("--params", default="params.yaml", help="params file for the defaults")
    parser.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", help="where to write the compiled package (default: a temp dir)")
    parser.add_argument("--dry-run", action="store_true", help="print the submission, send nothing")
    parser.add_argument("--schedule", metavar="CRON", help="a recurring run on this cron schedule")
    a = parser.parse_args(argv)
    token = a.token or os.environ.get("KFP_TOKEN") or None
    if not a.dry_run and not a.host:
        print("error: no KFP host: pass --host or set KFP_HOST", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cron = kfp_cron(a.schedule) if a.schedule else None
            sub = prepare(
                host=a.host,
                experiment=a.experiment,
                run_name=a.run_name,
                args=a.arg,
                overrides=a.set,
                params_path=a.params,
                out_dir=a.out or tmp,
                namespace=a.namespace,
                token_set=token is not None,
            )
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps({**describe(sub), "schedule": cron}, indent=2))
        if a.dry_run:
            return 0
        if cron:
            job = submit_recurring(sub, token, cron)
            print(f"recurring run {job} on {a.host}: {cron!r} (experiment {a.experiment})")
            return 0
        run_id = submit(sub, token)
    print(f"submitted run {run_id} to {a.host} (experiment {a.experiment})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
