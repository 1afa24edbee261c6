"""How well the mirror confidence ranks depth errors on the test split.

    python bench/bench_confidence.py               # demo data and model on CPU: about 2 minutes
    python bench/bench_confidence.py --checkpoint best.pt --processed data/processed

Without ``--checkpoint`` it makes the demo data (``DEMO_SYNTHETIC``) and trains the DEMO model
(what ``make run`` trains). Each test image goes through the model with its mirror as one batch
of two; ``confidence_from_mirror`` gives each pixel's confidence, compared with its true error
at the model's resolution (valid pixels only). Reported: AbsRel of the most and the least
confident half of the pixels (split at the median confidence, pooled over the split), of the
most confident quarter, and the Spearman rank correlation of confidence with the absolute
relative error (negative: more confident, smaller error). Results go to
``bench/results_confidence.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _train_demo(root: Path) -> tuple[Path, Path]:
    from depth_common.config import load_params
    from depth_common.config.params import overlay_overrides
    from depth_common.data.preprocess import preprocess_dataset
    from depth_common.data.synthetic import generate_cityscapes
    from depth_common.training.train import train
    from pipelines.run_local import DEMO_SYNTHETIC

    params = load_params(
        ROOT / "params.yaml",
        (*overlay_overrides(ROOT / "params.demo.yaml"), 'training.init_from=""'),
    )
    generate_cityscapes(root / "raw", size=(128, 256), seed=0, **DEMO_SYNTHETIC)
    preprocess_dataset(root / "raw", root / "processed", params.data, progress=False)
    result = train(params, root / "processed", root / "ckpt", tracking=False)
    return result.checkpoint_path, root / "processed"


def _pixels(checkpoint: Path, processed: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, absolute relative error) of every valid pixel of ``split``."""
    import torch

    from depth_common.data.dataset import DepthDataset
    from depth_common.evaluation.evaluate import metric_scales
    from depth_common.model.checkpoint import model_from_checkpoint
    from depth_common.serving.confidence import confidence_from_mirror

    model, ckpt = model_from_checkpoint(checkpoint)
    ds = DepthDataset(processed, split)
    scales = metric_scales(ckpt, ds.focals)
    conf, err = [], []
    with torch.no_grad():
        for i in range(len(ds)):
            image, depth = ds[i]
            pair = model(torch.stack([image, image.flip(-1)])).float()[:, 0].numpy() * scales[i]
            gt = depth[0].numpy()
            valid = gt > 0
            conf.append(confidence_from_mirror(pair[0], pair[1])[valid])
            err.append(np.abs(pair[0][valid] - gt[valid]) / gt[valid])
    return np.concatenate(conf), np.concatenate(err)


def ranking(conf: np.ndarray, err: np.ndarray) -> dict[str, float]:
    """AbsRel of the most / least confident half and quarter, and Spearman's rho."""
    order = np.argsort(-conf, kind="stable")  # most confident first
    half, quarter = len(order) // 2, len(order) // 4
    ranks_c = np.argsort(np.argsort(conf)).astype(np.float64)
    ranks_e = np.argsort(np.argsort(err)).astype(np.float64)
    return {
        "pixels": int(len(order)),
        "abs_rel_all": round(float(err.mean()), 4),
        "abs_rel_most_confident_half": round(float(err[order[:half]].mean()), 4),
        "abs_rel_least_confident_half": round(float(err[order[half:]].mean()), 4),
        "abs_rel_most_confident_quarter": round(float(err[order[:quarter]].mean()), 4),
        "spearman_confidence_vs_error": round(float(np.corrcoef(ranks_c, ranks_e)[0, 1]), 4),
        "median_confidence": round(float(np.median(conf)), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a trained checkpoint (default: train the demo)")
    parser.add_argument("--processed", help="its preprocessed data (with --checkpoint)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results_confidence.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-confidence-") as tmp:
        if args.checkpoint:
            checkpoint, processed = Path(args.checkpoint), Path(args.processed)
        else:
            checkpoint, processed = _train_demo(Path(tmp))
        result = {
            "what": "mirror confidence vs true error, pooled pixels at model resolution",
            "model": str(args.checkpoint or "DEMO preset trained on DEMO_SYNTHETIC (make run)"),
            "split": args.split,
            **ranking(*_pixels(checkpoint, processed, args.split)),
        }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
