"""log_profile: the reference profile goes to the run's MLflow artifacts; the run and the
registered version get its URI as tag ``reference_profile_uri`` (the monitor's reference)."""

from kfp.dsl import Dataset, Input

from components.image import depth_component


@depth_component
def log_profile(reference: Input[Dataset], run_id: str, version: int, params_json: str) -> str:
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from depth_common.cli.startup import record_startup
    from depth_common.config import params_from_dict
    from depth_common.monitoring.reference import log_reference_profile

    record_startup("log_profile")

    p = params_from_dict(json.loads(params_json))
    with tempfile.TemporaryDirectory() as tmp:  # the artifact's file has no name of its own
        named = Path(tmp) / "profile.json"
        shutil.copyfile(reference.path, named)
        uri = log_reference_profile(named, run_id, p, version=version)
    print(f"reference profile of version {version}: {uri}")
    return uri
