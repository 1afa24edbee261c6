"""The container images' build files; ``images.env``, the one place image names and tags live,
ships with the library as package data (``depth_common.config.container_images`` reads it)."""
