"""Which timm encoders the DPT supports, known without importing timm or torch.

The DPT taps the blocks of a timm ``VisionTransformer`` (``forward_intermediates``), so the
supported family is timm's ``vision_transformer`` module: the names with a patch size in them
(``vit_tiny_patch16_224``, ``vit_small_patch14_dinov2``, ...). They are listed in
``vit_encoders.json`` so that validating ``model.encoder`` (and that ``data.img_size`` is a
multiple of its patch size) costs a JSON read instead of a 3-second timm import; a test keeps
the list equal to the installed timm's and checks the patch sizes against built models. After
a timm upgrade, regenerate it with ``python -m depth_common.config.encoders``.
"""

from __future__ import annotations

# timm is imported only by regenerate(): `import depth_common.config` stays free of timm and
# torch (tests/config/test_params.py), the list is read from JSON instead.
import json
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from depth_common.errors import ConfigError

ENCODERS_FILE = Path(__file__).with_name("vit_encoders.json")
FAMILY = "timm vision_transformer ViTs (vit_<size>_patch<N>_..., e.g. vit_tiny_patch16_224)"
_PATCH = re.compile(r"_patch(\d+)")


@cache
def supported_encoders() -> frozenset[str]:
    """The encoder names of ``vit_encoders.json``."""
    return frozenset(json.loads(ENCODERS_FILE.read_text())["encoders"])


def patch_size(encoder: str) -> int:
    """The (square) patch size in pixels that ``encoder``'s name states."""
    match = _PATCH.search(encoder)
    if match is None:
        raise ConfigError(f"{encoder!r}: no _patch<N> in the name (expected one of {FAMILY})")
    return int(match.group(1))


def check_encoder(encoder: str, img_size: Sequence[int]) -> None:
    """Raise ``ConfigError`` (message starting with the dotted key) unless ``encoder`` is a
    supported ViT and both sides of ``img_size`` are multiples of its patch size."""
    if encoder not in supported_encoders():
        raise ConfigError(
            f"model.encoder: {encoder!r} is not a supported encoder: expected one of the "
            f"{FAMILY}; the full list is {ENCODERS_FILE.name}"
        )
    patch = patch_size(encoder)
    h, w = (int(v) for v in img_size)
    if h % patch or w % patch:
        fit = [max(patch, round(v / patch) * patch) for v in (h, w)]
        raise ConfigError(
            f"data.img_size: {[h, w]} is not a multiple of {encoder}'s patch size {patch} "
            f"(expected e.g. {fit})"
        )


def regenerate(path: Path = ENCODERS_FILE) -> list[str]:
    """Rewrite ``path`` from the installed timm; returns the names."""
    import timm

    names = sorted(
        n for n in timm.list_models(module="vision_transformer") if _PATCH.search(n) is not None
    )
    doc = {"timm": timm.__version__, "module": "vision_transformer", "encoders": names}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return names


if __name__ == "__main__":
    print(f"{len(regenerate())} encoders written to {ENCODERS_FILE}")
