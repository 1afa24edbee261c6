"""decide: promote this run? (vs the registry's champion; see depth_common.registry.promotion)."""

from typing import NamedTuple

from kfp.dsl import Markdown, Output

from components.image import depth_component


@depth_component
def decide(run_id: str, params_json: str, decision: Output[Markdown]) -> NamedTuple(
    "Decision", [("promote", bool), ("reason", str)]
):
    import json
    from collections import namedtuple

    from depth_common.cli.startup import record_startup
    from depth_common.config import params_from_dict
    from depth_common.registry.promotion import decide_promotion, format_decision

    record_startup("decide")

    p = params_from_dict(json.loads(params_json))
    d = decide_promotion(run_id, p)
    with open(decision.path, "w") as fh:
        fh.write(format_decision(d, p.mlflow.model_name))
    decision.metadata.update(
        {
            "promote": d.promote,
            "challenger_rmse": d.challenger_rmse,
            "champion_rmse": d.champion_rmse,
            "champion_version": d.champion_version,
        }
    )
    print(d.reason)
    return namedtuple("Decision", ["promote", "reason"])(d.promote, d.reason)
