"""KFP v2 lightweight components: each adapts typed artifacts to one ``depth_common`` call.

Every component imports ``depth_common`` inside its body (it runs in the component image,
``images/``), takes the run's resolved Params as a JSON string from ``configure``, and records
what it made in its output artifacts' metadata.
"""

from components.configure import configure
from components.decide import decide
from components.deploy import deploy
from components.evaluate import evaluate
from components.export_onnx import export_onnx
from components.export_tensorrt import export_tensorrt
from components.image import COMPONENT_CUDA_IMAGE, COMPONENT_IMAGE
from components.log_profile import log_profile
from components.preprocess import preprocess
from components.profile_data import profile_data
from components.push_hf import push_hf
from components.record_no_promotion import record_no_promotion
from components.register import register
from components.synthesize import synthesize
from components.train import train
from components.triton_repository import triton_repository

__all__ = [
    "COMPONENT_CUDA_IMAGE",
    "COMPONENT_IMAGE",
    "configure",
    "decide",
    "deploy",
    "evaluate",
    "export_onnx",
    "export_tensorrt",
    "log_profile",
    "preprocess",
    "profile_data",
    "push_hf",
    "record_no_promotion",
    "register",
    "synthesize",
    "train",
    "triton_repository",
]
