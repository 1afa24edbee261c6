"""register: the run's model becomes a registry version with alias ``champion`` (idempotent)."""

from components.image import depth_component


@depth_component
def register(run_id: str, params: str, pipeline_run: str) -> int:
    import json

    from depth_common.config import params_from_dict
    from depth_common.promotion import register_champion
    from depth_common.startup import record_startup

    record_startup("register")

    p = params_from_dict(json.loads(params))
    version = register_champion(run_id, p, pipeline_run=pipeline_run)
    print(f"{p.mlflow.model_name} version {version} is now the champion (run {run_id})")
    return version
