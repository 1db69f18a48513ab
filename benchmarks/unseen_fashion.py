"""Fashion-MNIST, unseen classes: train on classes 0-4, evaluate on the test images of classes 5-9.

The evaluated identities (sandal, shirt, sneaker, bag, ankle boot) never occur
in training. Figures: verification ROC-AUC on 20,000 seeded pairs,
precision@1 and MAP@R (leave-one-out over the 5,000 test images), beside two
baselines measured in the same run: raw pixels (L2-normalised) and the same
network untrained.

    python benchmarks/unseen_fashion.py [--data DIR] [--quick]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import SHARED, write_results  # noqa: E402

import siamsearch  # noqa: E402
from siamsearch.checkpoint import save_checkpoint  # noqa: E402
from siamsearch.data import open_dataset, sample_pairs  # noqa: E402
from siamsearch.distance import pair_distances  # noqa: E402
from siamsearch.metrics.identification import map_at_r, precision_at_1  # noqa: E402
from siamsearch.metrics.verification import roc_auc  # noqa: E402
from siamsearch.model import EmbeddingNet  # noqa: E402

TRAIN_CLASSES = (0, 1, 2, 3, 4)
TEST_CLASSES = (5, 6, 7, 8, 9)


def scores(emb: np.ndarray, ids: np.ndarray, seed: int) -> dict:
    a, b, is_same = sample_pairs(ids, 20000, seed=seed)
    return {"auc": roc_auc(pair_distances(emb[a], emb[b]), is_same),
            "precision_at_1": precision_at_1(emb, ids), "map_at_r": map_at_r(emb, ids)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHARED / "fashion-mnist", help="folder with the four IDX .gz files")
    p.add_argument("--quick", action="store_true", help="a short run to check the pipeline")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--loss", default="contrastive")
    p.add_argument("--input-size", type=int, default=28)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    epochs = args.epochs or 1
    steps = args.steps_per_epoch or (40 if args.quick else 100)
    if not args.data.exists():
        sys.exit(f"missing {args.data}; pass --data pointing at the Fashion-MNIST IDX files")

    train_all = open_dataset(args.data, format="idx", split="train")
    test_all = open_dataset(args.data, format="idx", split="test")
    train_ds = train_all.subset(np.flatnonzero(np.isin(train_all.identities, TRAIN_CLASSES)), reindex=True)
    test_ds = test_all.subset(np.flatnonzero(np.isin(test_all.identities, TEST_CLASSES)), reindex=True)
    print(f"train: {len(train_ds)} images of classes {train_ds.identity_names}; "
          f"test: {len(test_ds)} images of unseen classes {test_ds.identity_names}")
    test_images = [test_ds.load(i) for i in range(len(test_ds))]
    ids = np.asarray(test_ds.identities)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fashion.pt"
        t0 = time.time()
        result = siamsearch.train(train_ds, out, loss=args.loss, input_size=args.input_size, in_channels=1,
                                  epochs=epochs, steps_per_epoch=steps, seed=args.seed,
                                  val_fraction=0.0)  # all 5 classes train; evaluation is on unseen ones
        train_seconds = time.time() - t0
        model = siamsearch.load_model(out)
        trained = scores(model.embed(test_images, batch_size=256), ids, args.seed)
        import torch

        torch.manual_seed(args.seed)
        save_checkpoint(Path(tmp) / "u.pt", model.config, EmbeddingNet(model.config).state_dict(), {"note": "untrained"})
        untrained = scores(siamsearch.load_model(Path(tmp) / "u.pt").embed(test_images, batch_size=256), ids, args.seed)
    pix = np.stack([np.asarray(im, dtype=np.float32).ravel() for im in test_images])
    pix /= np.linalg.norm(pix, axis=1, keepdims=True) + 1e-12
    raw = scores(pix, ids, args.seed)

    payload = {**trained, "train_seconds": round(train_seconds, 1),
               "baselines": {"raw_pixels": raw, "untrained": untrained}, "quick": args.quick,
               "settings": {"epochs": epochs, "steps_per_epoch": steps, "loss": args.loss,
                            "input_size": args.input_size, "seed": args.seed, "best_epoch": result.best_epoch},
               "beats_raw_pixels": all(trained[k] > raw[k] for k in ("auc", "precision_at_1", "map_at_r"))}
    payload["summary"] = {**{k: round(trained[k], 4) for k in ("auc", "precision_at_1", "map_at_r")},
                          **{f"raw_{k}": round(raw[k], 4) for k in ("auc", "precision_at_1", "map_at_r")},
                          "train_minutes": round(train_seconds / 60, 1), "beats_raw_pixels": payload["beats_raw_pixels"]}
    fmt = lambda s: (f"{s['auc']:.4f}", f"{s['precision_at_1']:.4f}", f"{s['map_at_r']:.4f}")  # noqa: E731
    rows = [("siamsearch (trained on classes 0-4)", *fmt(trained)), ("untrained network", *fmt(untrained)),
            ("raw pixels", *fmt(raw))]
    write_results("unseen_fashion", payload, rows, ("method", "ROC-AUC", "precision@1", "MAP@R"),
                  f"Fashion-MNIST unseen classes 5-9 (train {train_seconds / 60:.1f} min on classes 0-4)")
    for name, s in (("trained", trained), ("untrained", untrained), ("raw pixels", raw)):
        print(f"{name:>10}: AUC {s['auc']:.4f}  P@1 {s['precision_at_1']:.4f}  MAP@R {s['map_at_r']:.4f}")
    print("ratio trained/raw: " + ", ".join(f"{k} {trained[k] / raw[k]:.2f}x" for k in ("auc", "precision_at_1", "map_at_r")))
    return payload


if __name__ == "__main__":
    main()
