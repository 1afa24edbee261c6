"""synthesize: a generated dataset in the official Cityscapes layout (data_uri == "synthetic")."""

from kfp.dsl import Dataset, Output

from components.image import depth_component


@depth_component
def synthesize(options: dict, raw: Output[Dataset]):
    """``options``: keyword arguments of ``depth_common.data.synthetic.generate_cityscapes``
    (cities, per_split, size [H, W] pixels, seed); empty = its defaults."""
    from depth_common.cli.startup import record_startup
    from depth_common.data.synthetic import generate_cityscapes

    record_startup("synthesize")

    # KFP numbers arrive as floats; the generator counts in integers.
    kwargs = {k: [int(x) for x in v] if isinstance(v, list) else int(v) for k, v in options.items()}
    summary = generate_cityscapes(raw.path, **kwargs)
    raw.metadata.update({"source": "synthetic", "layout": "cityscapes", **summary})
