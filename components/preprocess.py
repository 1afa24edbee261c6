"""preprocess: raw Cityscapes (or the depth_X/depth_y layout) → hood-cropped, resized RGB PNGs
+ metric depth .npy, and the full-resolution ground truth of the evaluation splits."""

from kfp.dsl import Dataset, Input, Output

from components.image import depth_component


@depth_component
def preprocess(raw: Input[Dataset], data_params: str, processed: Output[Dataset]):
    import json
    import os

    from depth_common.cli.startup import record_startup
    from depth_common.config import data_config_from_dict
    from depth_common.data.preprocess import counts_line, preprocess_dataset

    record_startup("preprocess")

    if not os.path.isdir(raw.path):  # an importer cannot check; this is the first task that can
        raise FileNotFoundError(
            f"pipeline parameter 'data_uri': {raw.uri!r} is not a readable directory "
            "(expected a Cityscapes root with leftImg8bit/ and disparity/, or 'synthetic')"
        )
    data = data_config_from_dict(json.loads(data_params))
    manifest = preprocess_dataset(raw.path, processed.path, data)
    print(f"preprocess: {counts_line(manifest)}")
    for line in manifest["warnings"]:
        print(f"warning: {line}")
    processed.metadata["counts"] = manifest["counts"]
    processed.metadata["img_size"] = list(data.img_size)
    processed.metadata["crop_bottom"] = manifest["params"]["crop_bottom"]
