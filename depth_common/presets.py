"""Named override sets. ``DEMO`` is the small configuration `make run` and the tests use.

The full seed configuration stays the default of ``params.yaml`` for real runs; the demo
swaps in a ``vit_tiny`` encoder from random weights (nothing is downloaded here), small
images and a few epochs, with the encoder LR raised to the decoder's because an encoder from
random weights needs it (see docs/training-notes).
"""

DEMO: tuple[str, ...] = (
    "model.encoder=vit_tiny_patch16_224",
    "model.pretrained=false",
    "model.decoder_features=64",
    "data.img_size=[64,128]",
    "data.batch_size=8",
    "data.num_workers=0",
    "training.epochs=12",
    "training.encoder_lr=3.0e-4",
    "training.decoder_lr=3.0e-4",
    "training.warmup_epochs=1",
    "training.patience=6",
    "training.amp=false",
)
