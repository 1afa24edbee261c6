"""register: the run's model becomes the registry's ``challenger`` -- if, re-checked under the
registry's promotion lock, it still beats the champion and any rollout in flight."""

from typing import NamedTuple

from components.image import depth_component


@depth_component
def register(run_id: str, params_json: str, pipeline_run: str) -> NamedTuple(
    "Registration", [("promoted", bool), ("version", int), ("reason", str)]
):
    import json
    from collections import namedtuple

    from depth_common.cli.startup import record_startup
    from depth_common.config import params_from_dict
    from depth_common.registry.promotion import register_model

    record_startup("register")

    p = params_from_dict(json.loads(params_json))
    reg = register_model(run_id, p, pipeline_run=pipeline_run)
    print(reg.reason)
    if reg.promoted:
        print(f"{p.mlflow.model_name} version {reg.version} is the challenger (run {run_id})")
    out = namedtuple("Registration", ["promoted", "version", "reason"])
    return out(reg.promoted, reg.version or 0, reg.reason)
