"""The project's Kubernetes manifests (kustomize), shipped with the library as package data:
``depth_common.deploy.manifests`` reads them through ``importlib.resources``."""
