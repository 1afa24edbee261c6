"""What a deploy did, as a dataclass and as the Markdown report the pipeline shows."""

from __future__ import annotations

from dataclasses import dataclass

from depth_common.deploy.smoke import SmokeResult


@dataclass(frozen=True)
class DeployResult:
    """One deploy: where the model is served, which version, and its smoke test."""

    target: str  # "kserve" | "local"
    endpoint: str  # v2 base URL (http://host[:port]); for local, the address it was tested on
    model_name: str  # Triton model name the smoke test called
    model_version: str  # MLflow model version being served
    source: str  # storageUri (kserve) or repository directory (local)
    smoke: SmokeResult
    resource: str | None = None  # "namespace/name" of the InferenceService (kserve)
    rolled_back_to: str | None = None  # storageUri restored after a failure


class DeployError(RuntimeError):
    """A deploy failed; ``result`` holds what was observed (smoke test, rollback)."""

    def __init__(self, message: str, result: DeployResult | None = None) -> None:
        super().__init__(message)
        self.result = result


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_deploy_report(result: DeployResult) -> str:
    """Markdown: endpoint, model version, smoke-test result and latency (milliseconds)."""
    smoke = result.smoke
    status = "passed" if smoke.ok else "FAILED"
    rows = [
        ("target", result.target),
        ("endpoint", f"`{result.endpoint}`"),
        ("model", f"`{result.model_name}`"),
        ("model version", result.model_version),
        ("source", f"`{result.source}`"),
    ]
    if result.resource:
        rows.append(("InferenceService", f"`{result.resource}`"))
    rows.append(("smoke test", f"{status}: {smoke.detail}"))
    if smoke.latency_ms is not None:
        rows.append(("smoke-test latency", f"{smoke.latency_ms:.1f} ms (one request, batch 1)"))
    if smoke.output_shape is not None:
        rows.append(("output shape", "x".join(str(d) for d in smoke.output_shape)))
    if smoke.max_abs_diff is not None:
        rows.append(("max abs diff vs ONNX Runtime", f"{smoke.max_abs_diff:.3g} m"))
    if result.rolled_back_to:
        rows.append(("rolled back to", f"`{result.rolled_back_to}`"))
    lines = [f"# Deploy: {status}", "", "| item | value |", "| --- | --- |"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows]
    if result.target == "kserve":
        path = f"/v2/models/{result.model_name}/infer"
        lines += ["", f"Call it: `POST {result.endpoint.rstrip('/')}{path}` (v2 protocol)."]
    return "\n".join(lines) + "\n"
