"""Omniglot 20-way within-alphabet one-shot accuracy (Lake et al. 2015 runs).

Trains through the library on the two Omniglot "minimal" background splits
(8 distinct alphabets, 242 characters; each character also seen rotated by
90/180/270 degrees as 3 further identities), then scores the official 20 runs
in all_runs.zip: the share of the 400 queries whose nearest reference is the
correct one. Baselines measured in the same run: raw pixels (L2-normalised
105x105 images) and the same network untrained.

Recipe: smallcnn at 32 px, triplet loss with batch-hard mining (the library's
default; 128 images of 32 identities per batch), a 15-minute wall-clock budget
per seed. Each seed (default 0, 1, 2) trains its own model; the top-level
``accuracy`` is the mean over seeds, with ``accuracy_std`` (sample standard
deviation over seeds), ``accuracy_min``/``accuracy_max`` and every seed's figures
in ``per_seed``. Single 15-minute runs have given 95.75%, 93.25% and 93.0% on
this machine: a one-seed figure is not a result.

Reference figures: Koch et al. 2015 Siamese network 92.0% (30 alphabets, GPU),
humans 95.5%.

    python benchmarks/oneshot_omniglot.py [--data DIR] [--quick] [--seeds 0 1 2] [--max-minutes 15]

The full run takes 3 x 15 minutes of training; ``--quick`` (one seed, one epoch)
or ``--max-minutes 2`` checks the pipeline without reaching the target figure.
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
from siamsearch.core.checkpoint import save_checkpoint
from siamsearch.data import ImageDataset, open_dataset
from siamsearch.training.losses import MINING
from siamsearch.metrics.oneshot import load_oneshot_runs, oneshot_accuracy
from siamsearch.core.model import EmbeddingNet


def with_rotations(ds: ImageDataset, rotations: int) -> ImageDataset:
    """Each character rotated by k*90 degrees (k < rotations) becomes its own identity."""
    images = np.stack([np.asarray(ds.load(i).convert("L")) for i in range(len(ds))])
    ids = np.asarray(ds.identities)
    all_images, all_ids, names = [], [], []
    k_ids = ds.num_identities
    for k in range(rotations):
        all_images.append(np.rot90(images, k, axes=(1, 2)))
        all_ids.append(ids + k * k_ids)
        names += [f"{n}@rot{90 * k}" for n in ds.identity_names]
    return ImageDataset.from_arrays(np.concatenate(all_images), np.concatenate(all_ids), names, name="omniglot-rot")


def raw_pixels(images: list) -> np.ndarray:
    x = np.stack([np.asarray(im.convert("L"), dtype=np.float32).ravel() for im in images])
    x = x - x.mean(axis=1, keepdims=True)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def run_seed(ds: ImageDataset, runs: list, args, seed: int, epochs: int) -> dict:
    """Train one model with ``seed``; its one-shot accuracy and that of the same network untrained."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out.with_name(f"{args.out.stem}-seed{seed}{args.out.suffix}") if args.out else Path(tmp) / "omniglot.pt"
        t0 = time.time()
        result = siamsearch.train(
            ds, out, loss=args.loss, input_size=args.input_size, in_channels=1, epochs=epochs,
            batch_size=args.batch_size, m_per_class=args.m_per_class, lr=args.lr, seed=seed, mining=args.mining,
            val_fraction=0.1, val_pairs=2000, device="auto", max_minutes=None if args.quick else args.max_minutes,
            progress=False,
        )
        train_seconds = time.time() - t0
        model = siamsearch.load_model(out)
        accuracy = oneshot_accuracy(runs, model.embed)
        torch.manual_seed(seed)
        untrained_path = Path(tmp) / "untrained.pt"
        save_checkpoint(untrained_path, model.config, EmbeddingNet(model.config).state_dict(), {"note": "untrained baseline"})
        untrained = oneshot_accuracy(runs, siamsearch.load_model(untrained_path).embed)
    print(f"seed {seed}: one-shot accuracy {accuracy:.2%} (untrained {untrained:.2%}) after "
          f"{train_seconds / 60:.1f} min, {len(result.history)} epochs (best {result.best_epoch})", flush=True)
    return {"seed": seed, "accuracy": accuracy, "untrained": untrained, "train_seconds": round(train_seconds, 1),
            "epochs_run": len(result.history), "best_epoch": result.best_epoch, "backbone": model.config.backbone,
            "history": result.history}


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min and max."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHARED / "omniglot", help="folder with images_background_small{1,2}.zip and all_runs.zip")
    p.add_argument("--quick", action="store_true", help="one seed, one epoch: checks the pipeline (not the target figure)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="one trained model per seed [default: 0 1 2; quick: 0]")
    p.add_argument("--epochs", type=int, default=None, help="upper bound on epochs [default: 100; quick: 1]")
    p.add_argument("--max-minutes", type=float, default=15.0,
                   help="training budget per seed (the target allows 15 min on 2 cores)")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--loss", default="triplet")
    p.add_argument("--mining", default="hard", choices=MINING,
                   help="triplet mining [hard: 95.75%% vs all: 92.0%% in single 15-min runs of seed 0]")
    p.add_argument("--rotations", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--m-per-class", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--out", type=Path, default=None, help="keep the trained checkpoints here (OUT-seedN.pt)")
    args = p.parse_args(argv)
    epochs = args.epochs or (1 if args.quick else 100)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])

    roots = [args.data / "images_background_small1.zip", args.data / "images_background_small2.zip"]
    runs_zip = args.data / "all_runs.zip"
    missing = [str(r) for r in roots + [runs_zip] if not r.exists()]
    if missing:
        sys.exit(f"missing {', '.join(missing)}; pass --data pointing at the Omniglot files (see ../shared/data/README.md)")

    base = open_dataset([str(r) for r in roots], format="omniglot")
    ds = with_rotations(base, args.rotations)
    runs = load_oneshot_runs(runs_zip)
    print(f"training set: {len(base)} images, {base.num_identities} characters; x{args.rotations} rotations "
          f"-> {ds.num_identities} identities; {len(runs)} one-shot runs; seeds {seeds}, "
          f"{'one epoch each' if args.quick else f'{args.max_minutes:g} min each'}", flush=True)

    per_seed = [run_seed(ds, runs, args, seed, epochs) for seed in seeds]
    pixels = oneshot_accuracy(runs, raw_pixels)
    acc = spread([r["accuracy"] for r in per_seed])
    untrained = spread([r["untrained"] for r in per_seed])
    train_seconds = float(np.mean([r["train_seconds"] for r in per_seed]))
    payload = {
        "accuracy": acc["mean"], "accuracy_std": acc["std"], "accuracy_min": acc["min"], "accuracy_max": acc["max"],
        "train_seconds": round(train_seconds, 1),
        "baselines": {"raw_pixels": pixels, "untrained": untrained["mean"]},
        "target": 0.92, "human": 0.955, "quick": args.quick,
        "summary": {"accuracy": round(acc["mean"], 4), "accuracy_std": round(acc["std"], 4),
                    "accuracy_min": round(acc["min"], 4), "seeds": len(seeds), "raw_pixels": round(pixels, 4),
                    "untrained": round(untrained["mean"], 4), "train_minutes_per_seed": round(train_seconds / 60, 1),
                    "target_0.92_met": acc["mean"] >= 0.92},
        "settings": {"seeds": seeds, "epochs": epochs, "max_minutes": None if args.quick else args.max_minutes,
                     "input_size": args.input_size, "loss": args.loss, "mining": args.mining,
                     "rotations": args.rotations, "batch_size": args.batch_size, "m_per_class": args.m_per_class,
                     "lr": args.lr, "backbone": per_seed[0]["backbone"]},
        "per_seed": per_seed,
    }
    n = len(seeds)
    trained = f"{acc['mean']:.2%}" + (f" +/- {acc['std']:.2%} (min {acc['min']:.2%}, max {acc['max']:.2%})" if n > 1 else "")
    rows = [(f"siamsearch (trained; mean +/- std of {n} seed{'s' if n > 1 else ''})", trained,
             f"{train_seconds / 60:.1f} min per seed"),
            ("untrained network", f"{untrained['mean']:.1%}", "-"),
            ("raw pixels", f"{pixels:.1%}", "-"),
            ("Koch et al. 2015 (published)", "92.0%", "GPU, 30 alphabets"),
            ("humans (published)", "95.5%", "-")]
    write_results("oneshot_omniglot", payload, rows, ("method", "20-way one-shot accuracy", "training"),
                  "Omniglot 20-way one-shot (official 20 runs, 400 queries)" + (" [quick check]" if args.quick else ""))
    print(f"one-shot accuracy {trained} over seeds {seeds} (raw pixels {pixels:.2%}, untrained "
          f"{untrained['mean']:.2%}) after {train_seconds / 60:.1f} min of training per seed")
    return payload


if __name__ == "__main__":
    main()
