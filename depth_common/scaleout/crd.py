"""Offline validation of the train jobs against the operators' own CRD schemas.

The CRDs are vendored, unmodified, under ``manifests/training-crds/`` (see its PROVENANCE.md).
The PyTorchJob is checked before it is created; the TrainJob is built by the kubeflow SDK, and
the tests check what the SDK sends (the API server checks it on a cluster).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from depth_common.deploy.manifests import manifests_dir
from depth_common.errors import ConfigError

CRD_FILES = {
    "TrainJob": "trainer.kubeflow.org_trainjobs.yaml",
    "PyTorchJob": "kubeflow.org_pytorchjobs.yaml",
}


def default_crd_dir() -> Path:
    """``manifests/training-crds`` of the installed manifests (or ``$DEPTH_MANIFESTS_DIR``)."""
    return Path(str(manifests_dir())) / "training-crds"


@cache
def crd_schema(kind: str, crd_dir: str | None = None) -> dict:
    """The ``openAPIV3Schema`` of the served version of ``kind``'s CRD (vendored YAML)."""
    path = Path(crd_dir or default_crd_dir()) / CRD_FILES[kind]
    # the C loader: these CRDs are ~0.5 MB of YAML (seconds with the pure-Python one)
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    for version in crd["spec"]["versions"]:
        if version.get("served") and version.get("storage"):
            return version["schema"]["openAPIV3Schema"]
    raise ConfigError(f"{path}: no served storage version")


def validate_job(obj: Mapping[str, Any], crd_dir: str | Path | None = None) -> None:
    """Raise :class:`ConfigError` (field path + reason) unless ``obj`` matches its CRD."""

    if obj.get("kind") not in CRD_FILES:
        raise ConfigError(f"kind: got {obj.get('kind')!r}, expected TrainJob or PyTorchJob")
    schema = crd_schema(obj["kind"], str(crd_dir) if crd_dir else None)
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(dict(obj)), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
        raise ConfigError(f"{obj['kind']} {obj['metadata']['name']}: " + "; ".join(lines))
