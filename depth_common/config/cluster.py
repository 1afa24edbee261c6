"""The ``cluster:`` section: where the train job and the served model run on Kubernetes
(namespace, service account, node placement) and the Secrets their pods mount."""

from __future__ import annotations

from pydantic import field_validator

from depth_common.config.base import ConfigModel, Str, reject

_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def toleration(text: str) -> dict[str, str]:
    """kubectl taint syntax → a Kubernetes toleration; ``ValueError`` (what it expected) if
    ``text`` is not one.

    ``"key=value:Effect"`` → ``Equal``; ``"key:Effect"`` or ``"key"`` → ``Exists`` (any value;
    no effect = every effect).
    """
    spec, colon, effect = text.partition(":")
    if colon and effect not in _EFFECTS:
        raise ValueError(f"effect one of {', '.join(_EFFECTS)}")
    name, eq, value = spec.partition("=")
    if not name or (eq and not value):
        raise ValueError("'key=value:Effect', 'key:Effect' or 'key'")
    tol = {"key": name, "operator": "Equal" if eq else "Exists"}
    if eq:
        tol["value"] = value
    if effect:
        tol["effect"] = effect
    return tol


class ClusterConfig(ConfigModel):
    """Kubernetes settings shared by the train job (TrainJob / PyTorchJob) and the deploy."""

    namespace: Str = "kubeflow-user-example-com"
    service_account: Str = "depth-pipeline"
    node_selector: tuple[Str, ...] = ()  # "key=value"
    tolerations: tuple[Str, ...] = ()  # kubectl taint syntax
    mlflow_secret: Str = ""
    storage_secret: Str = ""

    @field_validator("node_selector")
    @classmethod
    def _key_value_pairs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, item in enumerate(value):
            k, eq, _ = item.partition("=")
            if not (k and eq):
                reject(f"[{i}]", item, "'key=value'")
        return value

    @field_validator("tolerations")
    @classmethod
    def _taint_syntax(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, item in enumerate(value):
            try:
                toleration(item)
            except ValueError as exc:
                reject(f"[{i}]", item, str(exc))
        return value

    def node_selector_pairs(self) -> tuple[tuple[str, str], ...]:
        """``node_selector`` as ``(key, value)`` pairs."""
        return tuple((k, v) for k, _, v in (s.partition("=") for s in self.node_selector))

    def toleration_specs(self) -> tuple[dict[str, str], ...]:
        """``tolerations`` as Kubernetes tolerations."""
        return tuple(toleration(s) for s in self.tolerations)
