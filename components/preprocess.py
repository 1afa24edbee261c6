"""preprocess: raw Cityscapes (or seed layout) → resized RGB PNGs + metric depth .npy."""

from kfp.dsl import Dataset, Input, Output

from components.image import depth_component


@depth_component
def preprocess(raw: Input[Dataset], data_params: str, processed: Output[Dataset]):
    import json
    import os

    from depth_common.config import params_from_dict
    from depth_common.data.preprocess import preprocess_dataset
    from depth_common.startup import record_startup

    record_startup("preprocess")

    if not os.path.isdir(raw.path):  # an importer cannot check; this is the first task that can
        raise FileNotFoundError(
            f"pipeline parameter 'data_uri': {raw.uri!r} is not a readable directory "
            "(expected a Cityscapes root with leftImg8bit/ and disparity/, or 'synthetic')"
        )
    params = params_from_dict(json.loads(data_params))
    manifest = preprocess_dataset(raw.path, processed.path, params.data)
    processed.metadata["counts"] = manifest["counts"]
    processed.metadata["img_size"] = list(params.data.img_size)
