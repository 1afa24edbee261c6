"""The depth model: the DPT on a timm ViT encoder and its checkpoints (no training code)."""
