"""Scale-out training on a cluster: a Kubeflow Trainer ``TrainJob`` or a Training Operator
``PyTorchJob`` running ``torchrun -m depth_common train`` in the project's component image.

- :mod:`~depth_common.scaleout.job`: the one job description (:class:`ScaleOutJob`) from params;
- :mod:`~depth_common.scaleout.manifests`: both operators' objects derived from it (pure);
- :mod:`~depth_common.scaleout.crd`: offline validation against the vendored CRD schemas;
- :mod:`~depth_common.scaleout.cluster`: submit, wait, stream the master's log (cluster I/O).

The train step's use of all four is :func:`depth_common.scaleout.launch.run_scaled_training`.
"""
