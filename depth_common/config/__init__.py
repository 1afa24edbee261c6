"""``params.yaml`` → frozen pydantic models, validated once, with errors that name the dotted
key (``training.epochs: got -1, expected an integer >= 0``).

Every stage reads its configuration through :func:`load_params`. Overrides use the
``section.key=value`` form (the value is parsed as YAML, so ``data.img_size=[64,128]`` and
``model.pretrained=false`` work).
"""

from depth_common.config.base import ConfigModel
from depth_common.config.cluster import ClusterConfig, toleration
from depth_common.config.data import (
    DATA_LAYOUTS,
    MAX_NUM_WORKERS,
    DataConfig,
)
from depth_common.config.params import (
    Params,
    data_config_from_dict,
    load_params,
    params_from_dict,
    parse_override,
)
from depth_common.config.sections import (
    AugmentationConfig,
    EvaluationConfig,
    MlflowConfig,
    ModelConfig,
    PromotionConfig,
    TrainingConfig,
)
from depth_common.config.serving import DeployConfig, ExportConfig
from depth_common.errors import ConfigError

__all__ = [
    "DATA_LAYOUTS",
    "MAX_NUM_WORKERS",
    "AugmentationConfig",
    "ClusterConfig",
    "ConfigError",
    "ConfigModel",
    "DataConfig",
    "DeployConfig",
    "EvaluationConfig",
    "ExportConfig",
    "MlflowConfig",
    "ModelConfig",
    "Params",
    "PromotionConfig",
    "TrainingConfig",
    "data_config_from_dict",
    "load_params",
    "params_from_dict",
    "parse_override",
    "toleration",
]
