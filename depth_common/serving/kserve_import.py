"""``import kserve`` without letting it read our command line.

``kserve.model_server`` parses ``sys.argv`` at import time (``parse_known_args``): a flag of the
importing program that abbreviates one of kserve's (``--log`` matched ``--log_config_file``)
changes kserve's defaults or fails the import. Every module of this package that needs kserve
imports it from here, with ``sys.argv`` reduced to the program name for the import.

kserve must not be imported in a process that uses ``tritonclient.grpc``: the two register the
same protobuf messages (``inference.ServerLiveRequest``) and the second import fails. The
transformer therefore runs as its own process and reaches Triton with kserve's gRPC client.
"""

from __future__ import annotations

import sys

_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    import kserve
    from kserve import model_server
    from kserve.errors import InferenceError, InvalidInput, ServerNotReady
    from kserve.predictor_config import PredictorConfig
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
    from kserve.protocol.infer_type import (
        InferInput,
        InferOutput,
        InferRequest,
        InferResponse,
        RequestedOutput,
    )
    from kserve.protocol.rest.server import RESTServer
finally:
    sys.argv = _argv

__all__ = [
    "DataPlane",
    "GRPCInferenceServiceStub",
    "InferInput",
    "InferOutput",
    "InferRequest",
    "InferResponse",
    "InferenceError",
    "InvalidInput",
    "PredictorConfig",
    "RESTServer",
    "RequestedOutput",
    "ServerNotReady",
    "kserve",
    "model_server",
    "pb",
]
