"""profile_data: the reference profile of the raw training images (what the drift monitor
compares served images with; depth_common.monitoring), as a Dataset artifact (the feature
rows of every profiled image, metadata: format, images, features)."""

from kfp.dsl import Dataset, Input, Output

from components.image import depth_component


@depth_component
def profile_data(raw: Input[Dataset], reference: Output[Dataset]):
    from depth_common.cli.startup import record_startup
    from depth_common.monitoring.profile import FORMAT, save_profile
    from depth_common.monitoring.reference import profile_training_split

    record_startup("profile_data")

    profile = profile_training_split(raw.path)
    save_profile(profile, reference.path)
    reference.metadata.update(
        {"format": FORMAT, "images": profile.images, "features": list(profile.features)}
    )
    print(f"profile_data: {profile.images} training images profiled")
