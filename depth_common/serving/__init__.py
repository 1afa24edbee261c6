"""Serving: a real local Triton (:mod:`.server`), the v2 client (:mod:`.client`), the demo.

Submodules are imported on demand (``from depth_common.serving.client import DepthClient``):
the client must not pay for the server's or the demo's imports.
"""
