"""DPT (Ranftl et al., 2021) on a timm ViT encoder: metric depth in metres.

Stages are named after the paper: the encoder's tokens from four blocks are *reassembled*
into image-like feature maps at 1/4, 1/8, 1/16 and 1/32 of the input resolution, *fused*
coarse-to-fine, and a *head* upsamples to the input size and predicts depth >= 0 (ReLU).

Every interpolation size is computed from the configured ``img_size`` at construction time,
never from runtime tensor shapes, so that ``torch.onnx.export`` produces a graph whose only
dynamic dimension is the batch (Resize nodes with constant sizes; TensorRT-friendly, and
``align_corners=False`` throughout for the same reason).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from depth_common.config import Params

#: Output strides of the four reassemble stages, relative to the input image.
REASSEMBLE_STRIDES: tuple[int, int, int, int] = (4, 8, 16, 32)


def _as_hw(img_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(img_size, int):
        return img_size, img_size
    hw = tuple(int(v) for v in img_size)
    if len(hw) != 2:
        raise ValueError(f"img_size: got {img_size!r}, expected an int or (height, width)")
    return hw  # type: ignore[return-value]


def _bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ReassembleStage(nn.Module):
    """Encoder tokens (B, C_enc, H/p, W/p) → features (B, F, ``out_size``).

    A 1x1 projection to the decoder width, bilinear resampling to the stage's resolution and
    a 3x3 conv (instead of a transposed conv: no checkerboard artefacts).
    """

    def __init__(self, in_channels: int, features: int, out_size: tuple[int, int]) -> None:
        super().__init__()
        self.out_size = out_size
        self.project = nn.Conv2d(in_channels, features, kernel_size=1)
        self.resample = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.resample(_bilinear(self.project(tokens), self.out_size))


class ResidualConvUnit(nn.Module):
    """x + BN(conv(ReLU(BN(conv(x))))), then ReLU: the fusion block's conv + BatchNorm + ReLU."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(features)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class FusionBlock(nn.Module):
    """Fuse the coarser path with this stage's skip features, then upsample to ``out_size``.

    ``out_size`` is the next (finer) stage's resolution, x2 of this one; the last block goes
    to 1/2 of the input. Upsampling is bilinear followed by a 1x1 conv.
    """

    def __init__(self, features: int, out_size: tuple[int, int]) -> None:
        super().__init__()
        self.out_size = out_size
        self.skip_unit = ResidualConvUnit(features)
        self.fuse_unit = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)

    def forward(self, skip: torch.Tensor, coarser: torch.Tensor | None = None) -> torch.Tensor:
        x = self.skip_unit(skip)
        if coarser is not None:
            x = x + coarser
        x = self.fuse_unit(x)
        return self.out_conv(_bilinear(x, self.out_size))


class DepthHead(nn.Module):
    """conv (F → F/2) → bilinear upsample to the input size → conv (→ 32) → ReLU → conv (→ 1) → ReLU.

    The last conv's bias starts at ``init_depth`` metres: with a random head the ReLU output
    is 0 for most pixels at step 0 and a log-depth loss is then flat, so training never
    starts (observed: docs/training-notes.md).
    """

    def __init__(self, features: int, out_size: tuple[int, int], init_depth: float) -> None:
        super().__init__()
        self.out_size = out_size
        self.conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features // 2, 32, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(32, 1, kernel_size=1)
        nn.init.constant_(self.conv3.bias, float(init_depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _bilinear(self.conv1(x), self.out_size)
        x = F.relu(self.conv2(x))
        return F.relu(self.conv3(x))


class DPT(nn.Module):
    """Dense Prediction Transformer: image (B, 3, H, W), ImageNet-normalised → depth (B, 1, H, W) m.

    Args:
        encoder: a timm ViT name (anything with ``forward_intermediates``, e.g.
            ``vit_base_patch16_224``, ``vit_tiny_patch16_224``).
        pretrained: load timm's published weights (hub). Ignored if ``pretrained_path`` is set.
        decoder_features: channels of the reassemble/fusion path.
        img_size: input size in pixels, an int (square) or (H, W); each a multiple of the
            encoder's patch size. The network is built for exactly this size.
        hooks: the four encoder block indices (0-based) tapped for the reassemble stages.
        pretrained_path: a local weights file (``.safetensors`` or a state-dict ``.pth``/``.bin``
            loaded with ``weights_only=True``) for clusters without hub access.
        init_depth: starting value of the head's output bias, metres.
    """

    def __init__(
        self,
        encoder: str = "vit_base_patch16_224",
        pretrained: bool = False,
        decoder_features: int = 256,
        img_size: int | Sequence[int] = 224,
        hooks: Sequence[int] = (2, 5, 8, 11),
        pretrained_path: str | Path | None = None,
        init_depth: float = 10.0,
    ) -> None:
        super().__init__()
        h, w = _as_hw(img_size)
        hooks = tuple(int(i) for i in hooks)
        if len(hooks) != 4:
            raise ValueError(f"hooks: got {list(hooks)}, expected four encoder block indices")
        if decoder_features < 2:
            raise ValueError(f"decoder_features: got {decoder_features}, expected >= 2")
        kwargs: dict = {"img_size": (h, w), "dynamic_img_size": False, "num_classes": 0}
        if pretrained_path is not None:
            path = Path(pretrained_path)
            if not path.is_file():
                raise FileNotFoundError(
                    f"model.pretrained_path: {path} does not exist (expected a local "
                    ".safetensors or state-dict .pth weights file for {encoder})"
                )
            # timm's own file loader: weights_only=True, safetensors, and it resamples the
            # position embedding to img_size and drops the classifier like a hub load does.
            pretrained = True
            kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        try:
            self.encoder = timm.create_model(encoder, pretrained=pretrained, **kwargs)
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ValueError(f"model.encoder: {encoder!r} is not a timm model") from exc
            raise
        if not all(
            hasattr(self.encoder, a)
            for a in ("blocks", "forward_intermediates", "prune_intermediate_layers")
        ):
            raise ValueError(
                f"model.encoder: {encoder!r} is not a ViT-style timm model "
                "(expected blocks, forward_intermediates and prune_intermediate_layers)"
            )
        patch = self.encoder.patch_embed.patch_size
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
        if h % ph or w % pw:
            raise ValueError(
                f"img_size: got ({h}, {w}), expected multiples of {encoder}'s patch size ({ph}, {pw})"
            )
        depth = len(self.encoder.blocks)
        if not all(0 <= i < depth for i in hooks) or list(hooks) != sorted(set(hooks)):
            raise ValueError(
                f"hooks: got {list(hooks)}, expected four increasing indices in [0, {depth - 1}] "
                f"({encoder} has {depth} blocks)"
            )

        # Keep only what the taps use: the blocks after the last hook, the final norm and the
        # classifier head would get no gradient (DDP would then need find_unused_parameters)
        # and cost time for nothing.
        self.encoder.prune_intermediate_layers(list(hooks), prune_norm=True, prune_head=True)

        self.encoder_name = encoder
        self.img_size = (h, w)
        self.hooks = hooks
        self.decoder_features = decoder_features
        embed_dim = int(self.encoder.embed_dim)
        sizes = [(math.ceil(h / s), math.ceil(w / s)) for s in REASSEMBLE_STRIDES]
        self.reassemble = nn.ModuleList(
            ReassembleStage(embed_dim, decoder_features, size) for size in sizes
        )
        # Fusion runs coarse → fine: block i upsamples to stage i-1's size; the finest to H/2.
        fusion_out = [(math.ceil(h / 2), math.ceil(w / 2)), *sizes[:-1]]
        self.fusion = nn.ModuleList(FusionBlock(decoder_features, size) for size in fusion_out)
        self.head = DepthHead(decoder_features, (h, w), init_depth)

    @property
    def config(self) -> dict:
        """Constructor arguments that rebuild this architecture (the checkpoint's model_config)."""
        return {
            "encoder": self.encoder_name,
            "decoder_features": self.decoder_features,
            "img_size": list(self.img_size),
            "hooks": list(self.hooks),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised image → (B, 1, H, W) depth in metres, >= 0."""
        feats = self.encoder.forward_intermediates(
            x, indices=list(self.hooks), output_fmt="NCHW", intermediates_only=True
        )
        stages = [stage(f) for stage, f in zip(self.reassemble, feats, strict=True)]
        path: torch.Tensor | None = None
        for i in reversed(range(len(stages))):
            path = self.fusion[i](stages[i], path)
        return self.head(path)

    def param_groups(self, encoder_lr: float, decoder_lr: float) -> list[dict]:
        """AdamW groups: the (pretrained) encoder at ``encoder_lr``, the rest at ``decoder_lr``."""
        decoder = [p for m in (self.reassemble, self.fusion, self.head) for p in m.parameters()]
        return [
            {"name": "encoder", "params": list(self.encoder.parameters()), "lr": encoder_lr},
            {"name": "decoder", "params": decoder, "lr": decoder_lr},
        ]


def build_model(params: Params, *, init_depth: float = 10.0) -> DPT:
    """The DPT that ``params.model`` and ``params.data.img_size`` describe."""
    m = params.model
    return DPT(
        encoder=m.encoder,
        pretrained=m.pretrained,
        decoder_features=m.decoder_features,
        img_size=params.data.img_size,
        hooks=m.hooks,
        pretrained_path=m.pretrained_path,
        init_depth=init_depth,
    )
