"""Named override sets. ``DEMO`` is the small configuration `make run` and the tests use.

The full reference configuration (ViT-Base/16 at 224, 50 epochs) stays the default of
``params.yaml`` for real runs; the demo swaps in a ``vit_tiny`` encoder from random weights
(nothing is downloaded here), small images and a few epochs, with the encoder LR raised to the
decoder's because an encoder from random weights needs it (docs/training-notes.md). It
validates every third epoch (and after the last; patience counts validations) and writes
last.pt at the end only: on a run this short that bookkeeping was about a quarter of the
training time (validation 5 s and last.pt 2.3 s of 29 s).
"""

DEMO: tuple[str, ...] = (
    "model.encoder=vit_tiny_patch16_224",
    "model.pretrained=false",
    "model.decoder_features=64",
    "data.img_size=[64,128]",
    "data.batch_size=8",
    "data.num_workers=0",
    "training.epochs=12",
    "training.encoder_lr=5.0e-4",
    "training.decoder_lr=5.0e-4",
    "training.warmup_epochs=1",
    "training.val_every=3",
    "training.checkpoint_every=12",
    "training.patience=2",
    "training.amp=false",
    # Continuous training: each run fine-tunes the model that serves (none yet: from scratch),
    # so a second `make run` brings a better challenger through the canary.
    "training.init_from=champion",
)

#: Options of ``depth_common.data.synthetic.generate_cityscapes`` for the demo run: 2 cities x 24
#: images per split (48 train / 48 val / 48 test at 128x256). Enough data that 12 epochs show
#: real learning (test AbsRel about 0.24 on the full-resolution protocol) in about a minute.
DEMO_SYNTHETIC: dict[str, int] = {"cities": 2, "per_split": 24}
