"""The serving tests' shared stack: the real local Triton serving the tiny model and the
transformer in front of it (one per test module)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def stack(tiny: Path, tmp_path_factory: pytest.TempPathFactory):
    # Imported here, not at the top: the local server imports tritonclient.grpc, which kserve
    # cannot be imported beside, and the transformer's request cases run in their own process
    # under this conftest (test_transformer_requests.py).
    from depth_common.serving.local_stack import LocalTransformer
    from depth_common.serving.server import LocalTritonServer

    logs = tmp_path_factory.mktemp("logs")
    with (
        LocalTritonServer(tiny, log_path=logs / "triton.log") as triton,
        LocalTransformer(triton.grpc_url, log_path=logs / "transformer.log") as transformer,
    ):
        yield triton, transformer
