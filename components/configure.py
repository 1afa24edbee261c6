"""configure: the run's Params = params.yaml (baked in at compile time) ← pipeline parameters
← free-form ``section.key=value`` overrides; validated once, before any work starts (the
encoder against the known ViT names and data.img_size against its patch size, without
importing timm or torch)."""

from typing import NamedTuple

from components.image import depth_component


@depth_component
def configure(base_params: str, keys: dict, values: dict, overrides: list) -> NamedTuple(
    "Config", [("params_json", str), ("data_params", str), ("hf_repo_id", str)]
):
    """``keys`` maps pipeline parameter → dotted params key, ``values`` pipeline parameter →
    value. Outputs the full Params as JSON, its ``data`` section alone (what preprocess
    depends on, so preprocessing stays cached when only training settings change), and
    ``export.hf_repo_id`` (the pipeline branches on it: "" skips the Hub push)."""
    import json
    from collections import namedtuple

    import yaml

    from depth_common.cli.startup import record_startup
    from depth_common.config import params_from_dict
    from depth_common.errors import ConfigError

    record_startup("configure")

    base = json.loads(base_params)

    def like(value, ref):
        # KFP hands struct values back as text ('5.0', '[64.0, 128.0]', 'True') and protobuf
        # numbers are doubles: parse, then restore the types params.yaml has for the key.
        if isinstance(ref, str):
            return value if isinstance(value, str) else str(value)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                value = yaml.safe_load(value)
        if isinstance(value, float) and value.is_integer() and isinstance(ref, int):
            return int(value)
        if isinstance(value, list) and isinstance(ref, list) and ref:
            return [like(v, ref[0]) for v in value]
        return value

    for name, value in values.items():
        section, _, key = keys[name].partition(".")
        sec = base.setdefault(section, {})
        try:
            sec[key] = like(value, sec.get(key))
        except (ValueError, yaml.YAMLError) as exc:
            raise ConfigError(
                f"pipeline parameter {name!r}: cannot read {value!r} ({exc})"
            ) from None
    try:
        params = params_from_dict(base, overrides)
    except ConfigError as exc:
        by_key = {v: k for k, v in keys.items()}
        key = str(exc).partition(":")[0]
        where = f"pipeline parameter {by_key[key]!r} → " if key in by_key else ""
        raise ConfigError(f"{where}{exc}") from None

    full = params.to_dict()
    print(json.dumps(full, indent=1))
    return namedtuple("Config", ["params_json", "data_params", "hf_repo_id"])(
        json.dumps(full, sort_keys=True),
        json.dumps({"data": full["data"]}, sort_keys=True),
        params.export.hf_repo_id,
    )
