"""The ``cluster:`` section: where the train job and the served model run on Kubernetes
(namespace, service account, node placement) and the Secrets their pods mount.

Its keys once lived under ``training:`` and ``deploy:``; :func:`move_cluster_keys` still
accepts them there, with a ``FutureWarning`` that names the new key.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from pydantic import field_validator

from depth_common.config.base import ConfigError, ConfigModel, Str, reject

_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

#: Former ``section.key`` → its key under ``cluster:``.
MOVED_TO_CLUSTER = {
    ("training", "node_selector"): "node_selector",
    ("training", "tolerations"): "tolerations",
    ("training", "mlflow_secret"): "mlflow_secret",
    ("training", "storage_secret"): "storage_secret",
    ("deploy", "namespace"): "namespace",
    ("deploy", "service_account"): "service_account",
}


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


def _same(a: Any, b: Any) -> bool:
    norm = [list(v) if isinstance(v, list | tuple) else v for v in (a, b)]
    return norm[0] == norm[1]


def cluster_key(section: str, key: str) -> str | None:
    """The ``cluster:`` key a former ``section.key`` moved to (warning that it moved), or None."""
    new = MOVED_TO_CLUSTER.get((section, key))
    if new is not None:
        warnings.warn(
            f"{section}.{key} is deprecated, use cluster.{new} (the settings train and deploy "
            "share on the cluster)",
            FutureWarning,
            stacklevel=4,
        )
    return new


def move_cluster_keys(sections: dict[str, Any]) -> None:
    """Move the former keys of ``sections`` (a mutable ``{section: {key: value}}``) under
    ``cluster:``; a former key and its new one with different values is an error."""
    for (section, key), new in MOVED_TO_CLUSTER.items():
        old = sections.get(section)
        if not isinstance(old, dict) or key not in old:
            continue
        cluster_key(section, key)
        value = old.pop(key)
        cluster = sections.setdefault("cluster", {})
        if cluster is None:
            cluster = sections["cluster"] = {}
        if not isinstance(cluster, Mapping):
            continue  # validation names the malformed section
        if new in cluster and not _same(cluster[new], value):
            raise ConfigError(
                f"{section}.{key}: got {value!r}, expected it unset (it moved to cluster.{new}, "
                f"which is {cluster[new]!r}); set cluster.{new} only"
            )
        sections["cluster"] = {**cluster, new: value}
