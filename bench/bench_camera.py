"""Camera-blind vs camera-aware training, scored on a focal length no training image had.

    python bench/bench_camera.py                  # demo model on CPU: about 5 minutes
    python bench/bench_camera.py --epochs 24 --per-split 24

One synthetic Cityscapes (``generate_cityscapes``): train and val cities each get their own
lens, a focal of the Cityscapes focal times a factor in ``--train-focal`` (default 0.7-1.3);
the test cities all have ``--test-focal`` (default 1.8: a narrower lens than any seen). The same
data, seed and DEMO preset train two models that differ only in ``data.camera_aware``:

- camera-blind: targets in metres as recorded; its depth is used as is;
- camera-aware: targets x ``f_canonical / f_image`` (the canonical camera); its depth is
  multiplied back by ``f_image / f_canonical`` with the frame's focal from its camera JSON.

Both are scored by ``depth_common.evaluation.evaluate`` (full-resolution ground truth, the
project's protocol) on val (focals seen in training) and test (the held-out focal), with the
median predicted / true depth ratio. Results go to ``bench/results_camera.json``
(``--test-focal 0.5 --out bench/results_camera_wide.json`` for the wider lens); README's
canonical-camera table quotes both.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _data(root: Path, args: argparse.Namespace) -> Path:
    from depth_common.config import load_params
    from depth_common.config.params import overlay_overrides
    from depth_common.data.preprocess import preprocess_dataset
    from depth_common.data.synthetic import generate_cityscapes

    raw, processed = root / "raw", root / "processed"
    size = (128, 256)
    common = dict(per_split=args.per_split, size=size, seed=args.seed)
    generate_cityscapes(raw, cities=args.cities, splits=("train", "val"),
                        focal_range=tuple(args.train_focal), **common)  # fmt: skip
    generate_cityscapes(raw, cities=2, splits=("test",),
                        focal_range=(args.test_focal, args.test_focal), **common)  # fmt: skip
    params = load_params(ROOT / "params.yaml", overlay_overrides(ROOT / "params.demo.yaml"))
    preprocess_dataset(raw, processed, params.data, progress=False)
    return processed


def _scale_ratio(checkpoint: Path, processed: Path, split: str) -> float:
    """Median over the split's valid pixels of predicted / true depth (model resolution): 1 is
    the right scale, below 1 too near."""
    import numpy as np
    import torch

    from depth_common.data.dataset import DepthDataset
    from depth_common.evaluation.evaluate import metric_scales
    from depth_common.model.checkpoint import model_from_checkpoint

    model, ckpt = model_from_checkpoint(checkpoint)
    ds = DepthDataset(processed, split)
    scales = metric_scales(ckpt, ds.focals)
    ratios = []
    with torch.no_grad():
        for i in range(len(ds)):
            image, depth = ds[i]
            pred = model(image[None]).float()[0, 0].numpy() * scales[i]
            valid = depth[0].numpy() > 0
            ratios.append(pred[valid] / depth[0].numpy()[valid])
    return float(np.median(np.concatenate(ratios)))


def _run(processed: Path, root: Path, aware: bool, args: argparse.Namespace) -> dict:
    from depth_common.config import load_params
    from depth_common.config.params import overlay_overrides
    from depth_common.evaluation.evaluate import evaluate
    from depth_common.training.train import train

    name = "camera-aware" if aware else "camera-blind"
    overrides = overlay_overrides(ROOT / "params.demo.yaml") + (
        f"data.camera_aware={'true' if aware else 'false'}",
        f"training.epochs={args.epochs}",
        f"training.checkpoint_every={args.epochs}",
        'training.init_from=""',  # from scratch: no champion to start from
        f"training.seed={args.seed}",
        f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db",
        *args.set,
    )
    params = load_params(ROOT / "params.yaml", overrides)
    t0 = time.perf_counter()
    result = train(params, processed, root / name, tracking=False)
    seconds = time.perf_counter() - t0
    row: dict = {"model": name, "epochs_run": result.epochs_run, "train_s": round(seconds, 1)}
    for split in ("val", "test"):
        m = evaluate(result.checkpoint_path, processed, params, split=split,
                     out_dir=root / name / split).metrics  # fmt: skip
        row[f"{split}_abs_rel"] = round(m[f"{split}_abs_rel"], 4)
        row[f"{split}_delta_1"] = round(m[f"{split}_delta_1"], 4)
        row[f"{split}_scale_ratio"] = round(
            _scale_ratio(result.checkpoint_path, processed, split), 3
        )
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--cities", type=int, default=6, help="train/val cities (lenses)")
    parser.add_argument("--per-split", type=int, default=12, help="images per city per split")
    parser.add_argument("--train-focal", type=float, nargs=2, default=(0.7, 1.3))
    parser.add_argument("--test-focal", type=float, default=1.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a params override for both models (e.g. augment.crop_scale=[0.3,1.0])",
    )  # fmt: skip
    parser.add_argument("--out", default=str(ROOT / "bench" / "results_camera.json"))
    parser.add_argument("--keep", help="work in this directory and keep it (data, checkpoints)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-camera-") as tmp:
        root = Path(args.keep or tmp)
        processed = _data(root, args)
        rows = [_run(processed, root, aware, args) for aware in (False, True)]
    result = {
        "what": "camera-blind vs camera-aware (canonical camera) on a held-out focal length",
        "setup": {
            "train_val_focal_factors": list(args.train_focal),
            "test_focal_factor": args.test_focal,
            "cities": args.cities,
            "per_split": args.per_split,
            "epochs": args.epochs,
            "seed": args.seed,
            "overrides": list(args.set),
            "preset": "DEMO (vit_tiny, 64x128), full-resolution ground truth (128x256)",
        },
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}",
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
