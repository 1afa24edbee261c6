"""Kubeflow pipelines of the project; ``compile.py`` compiles each to ``pipelines/<name>.yaml``."""
