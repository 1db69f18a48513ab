"""LFW face verification: View 1 (development) and, with ``--view2``, the 10-fold View 2 protocol.

View 1: trains through the library on the DevTrain people only (4,038 people, 9,525 images,
``peopleDevTrain.txt``) within ``--max-minutes`` (default 30, on 2 CPU cores), chooses the
distance threshold of best accuracy on the 2,200 DevTrain pairs and reports accuracy and ROC-AUC
on the 1,000 DevTest pairs (people not seen in training). Baselines computed in the same run:
raw pixels (grey, central 110 px of the 250 px frame at 64 px, mean-removed and L2-normalised)
and whitened PCA-100 fitted on the DevTrain people's images (eigenfaces).

View 2 (``--view2 --minutes-per-fold M``): for each of the 10 people-disjoint folds of
``pairs.txt``/``people.txt``, a model trained on the people of the other 9 folds, the threshold
chosen on their pairs and the accuracy measured on the fold; mean accuracy ± standard error.

Recipe: ``--preset faces`` (see siamsearch.core.presets), nothing else set.

Anchors (View 2): eigenfaces 60.0 %, methods without outside data 70-88 %, deep networks trained
on millions of outside face images 97-99.8 %.

    python benchmarks/lfw_view1.py [--data DIR] [--quick] [--max-minutes 30] [--view2 --minutes-per-fold M]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import SHARED, write_results  # noqa: E402

import siamsearch  # noqa: E402
from siamsearch.core.config import ModelConfig  # noqa: E402
from siamsearch.core.distance import pair_distances  # noqa: E402
from siamsearch.core.preprocess import build_transform  # noqa: E402
from siamsearch.data import ImageDataset, open_dataset  # noqa: E402
from siamsearch.evaluation.pairs_protocol import read_lfw_pairs  # noqa: E402
from siamsearch.metrics.verification import accuracy_at, best_accuracy, roc_auc  # noqa: E402

IMAGES = "lfw-deepfunneled"
#: Raw-pixel / PCA input: grey, the central 110 of 250 px, squashed to 64 px (the figures of the data README).
PIXEL_CONFIG = ModelConfig(in_channels=1, input_size=64, crop=(110 / 250,), mean=(0.0,), std=(1.0,))


def find_root(data: Path) -> Path:
    """The LFW folder: ``data`` itself or ``data/lfw`` (the benchmark runner passes the shared data root)."""
    for root in (data, data / "lfw"):
        if (root / IMAGES).is_dir() and (root / "pairsDevTest.txt").exists():
            return root
    sys.exit(f"no LFW under {data}; pass --data pointing at the lfw folder (see ../shared/data/README.md)")


def read_people(path: Path) -> list[list[str]]:
    """``people*.txt`` -> a list of folds, each a list of names (View 1 files have one fold)."""
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    folds, i = [], 0
    n_folds = int(lines[0][0]) if len(lines[0]) == 1 and len(lines[1]) == 1 else 1
    i = 1 if n_folds > 1 else 0
    for _ in range(n_folds):
        n = int(lines[i][0])
        folds.append([ln[0] for ln in lines[i + 1:i + 1 + n]])
        i += 1 + n
    return folds


def read_pairs(path: Path, root: Path) -> list[tuple[list, list, np.ndarray]]:
    """``pairs*.txt`` through the library's LFW pairs reader -> a list of folds ``(paths_a, paths_b, is_same)``."""
    pairs = read_lfw_pairs(path, root / IMAGES)
    parts = [pairs] if pairs.folds is None else [pairs.subset(pairs.folds == k) for k in np.unique(pairs.folds)]
    return [(list(p.path_a), list(p.path_b), np.asarray(p.is_same)) for p in parts]


def concat_pairs(folds: list) -> tuple[list, list, np.ndarray]:
    return ([p for f in folds for p in f[0]], [p for f in folds for p in f[1]],
            np.concatenate([f[2] for f in folds]))


def people_dataset(all_ds: ImageDataset, names: set) -> ImageDataset:
    """The images of the given people (identities renumbered)."""
    keep = np.flatnonzero(np.isin(np.asarray(all_ds.identity_names)[all_ds.identities], sorted(names)))
    return all_ds.subset(keep, reindex=True)


def pixels(paths: list) -> np.ndarray:
    """Raw-pixel vectors ``[N, 64*64]`` through the library's one preprocessing builder."""
    tf = build_transform(PIXEL_CONFIG)
    return np.stack([tf(p).numpy().ravel() for p in paths]).astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def whitened_pca(train: np.ndarray, dims: int = 100):
    """Fit whitened PCA on ``train [N, D]``; returns ``project(x [M, D]) -> [M, dims]`` (L2-normalised)."""
    mean = train.mean(axis=0)
    _, s, vt = np.linalg.svd(train - mean, full_matrices=False)
    comp = vt[:dims] / (s[:dims, None] / np.sqrt(len(train)) + 1e-6)
    return lambda x: unit((x - mean) @ comp.T)


def scores(embed, pairs_fit: tuple, pairs_test: tuple) -> dict:
    """Threshold of best accuracy on ``pairs_fit``; accuracy and AUC on ``pairs_test``."""
    paths = sorted(set(pairs_fit[0]) | set(pairs_fit[1]) | set(pairs_test[0]) | set(pairs_test[1]))
    emb = embed(paths)
    row = {p: i for i, p in enumerate(paths)}

    def dist(pairs):
        return pair_distances(emb[[row[p] for p in pairs[0]]], emb[[row[p] for p in pairs[1]]])

    d_fit, d_test = dist(pairs_fit), dist(pairs_test)
    fit_acc, thr = best_accuracy(d_fit, pairs_fit[2])
    return {"accuracy": accuracy_at(d_test, pairs_test[2], thr), "auc": roc_auc(d_test, pairs_test[2]),
            "threshold": thr, "fit_accuracy": fit_acc}


def evaluate_split(train_ds: ImageDataset, pairs_fit: tuple, pairs_test: tuple, args, minutes: float, tmp: str) -> dict:
    """Train on ``train_ds``, score the pairs; the two baselines on the same pairs."""
    out = Path(args.out or Path(tmp) / "lfw.pt")
    t0 = time.time()
    result = siamsearch.train(train_ds, out, **recipe(args), seed=args.seed, max_minutes=minutes,
                              val_fraction=0.1, val_pairs=2000, val_max_images=1000, log_dir=args.log_dir,
                              progress=not args.no_progress)
    train_seconds = time.time() - t0
    model = siamsearch.load_model(out)
    trained = scores(lambda p: model.embed(p, batch_size=128), pairs_fit, pairs_test)
    cache: dict = {}  # the pair images' pixels, decoded once for both baselines

    def cached_pixels(paths: list) -> np.ndarray:
        todo = [p for p in paths if p not in cache]
        if todo:
            cache.update(zip(todo, pixels(todo)))
        return np.stack([cache[p] for p in paths])

    raw = scores(lambda p: unit(cached_pixels(p)), pairs_fit, pairs_test)
    rng = np.random.default_rng(args.seed)
    fit_paths = [train_ds.source(int(i)) for i in rng.choice(len(train_ds), min(4000, len(train_ds)), replace=False)]
    project = whitened_pca(pixels(fit_paths))
    pca = scores(lambda p: project(cached_pixels(p)), pairs_fit, pairs_test)
    return {**trained, "train_seconds": round(train_seconds, 1), "epochs_run": len(result.history),
            "best_epoch": result.best_epoch, "history": result.history,
            "baselines": {"raw_pixels": raw, "pca": pca}}


def recipe(args) -> dict:
    """The training options: the preset, plus any exploration override given on the command line."""
    keys = ("preset", "loss", "backbone", "input_size", "embedding_dim", "lr", "batch_size", "m_per_class", "margin",
            "augmentation", "resize", "mining")
    kw = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if args.crop is not None:
        kw["crop"] = tuple(float(v) for v in args.crop.split(","))
    if args.no_singletons:
        kw["singletons"] = False
    return kw


def load(root: Path) -> ImageDataset:
    return open_dataset(root / IMAGES, format="folders")


def machine_load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_view1(root: Path, args, minutes: float) -> dict:
    all_ds = load(root)
    train_ds = people_dataset(all_ds, set(read_people(root / "peopleDevTrain.txt")[0]))
    print(f"DevTrain: {len(train_ds)} images of {train_ds.num_identities} people; training for {minutes:g} min")
    pairs_fit = read_pairs(root / "pairsDevTrain.txt", root)[0]
    pairs_test = read_pairs(root / "pairsDevTest.txt", root)[0]
    with tempfile.TemporaryDirectory() as tmp:
        return evaluate_split(train_ds, pairs_fit, pairs_test, args, minutes, tmp)


def run_view2(root: Path, args) -> dict:
    all_ds = load(root)
    people = read_people(root / "people.txt")
    pair_folds = read_pairs(root / "pairs.txt", root)
    folds = []
    for k in range(len(pair_folds)):
        names = {n for j, f in enumerate(people) if j != k for n in f}
        train_ds = people_dataset(all_ds, names)
        fit = concat_pairs([f for j, f in enumerate(pair_folds) if j != k])
        print(f"fold {k + 1}/{len(pair_folds)}: {len(train_ds)} images of {train_ds.num_identities} people")
        with tempfile.TemporaryDirectory() as tmp:
            r = evaluate_split(train_ds, fit, pair_folds[k], args, args.minutes_per_fold, tmp)
        r.pop("history")
        folds.append(r)
        print(f"  accuracy {r['accuracy']:.4f} (raw {r['baselines']['raw_pixels']['accuracy']:.4f}, "
              f"PCA {r['baselines']['pca']['accuracy']:.4f})")

    def mean_se(values):
        v = np.asarray(values, dtype=np.float64)
        return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))

    acc, se = mean_se([f["accuracy"] for f in folds])
    raw = mean_se([f["baselines"]["raw_pixels"]["accuracy"] for f in folds])
    pca = mean_se([f["baselines"]["pca"]["accuracy"] for f in folds])
    return {"accuracy": acc, "accuracy_se": se, "auc": float(np.mean([f["auc"] for f in folds])),
            "train_seconds": round(sum(f["train_seconds"] for f in folds), 1),
            "baselines": {"raw_pixels": {"accuracy": raw[0], "accuracy_se": raw[1]},
                          "pca": {"accuracy": pca[0], "accuracy_se": pca[1]}},
            "folds": folds}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SHARED / "lfw", help="the lfw folder (or a folder holding lfw/)")
    p.add_argument("--quick", action="store_true", help="a 1-minute training run to check the pipeline (not the figure)")
    p.add_argument("--max-minutes", type=float, default=30.0, help="View 1 training budget [30 on 2 CPU cores]")
    p.add_argument("--view2", action="store_true", help="the 10-fold View 2 protocol instead of View 1")
    p.add_argument("--minutes-per-fold", type=float, default=10.0, help="View 2 training budget per fold")
    p.add_argument("--preset", default="faces")
    for name, typ in (("loss", str), ("backbone", str), ("input-size", int), ("embedding-dim", int), ("lr", float),
                      ("batch-size", int), ("m-per-class", int), ("margin", float), ("augmentation", str),
                      ("resize", str), ("crop", str), ("mining", str)):
        p.add_argument(f"--{name}", type=typ, default=None, help="override the preset (recipe exploration)")
    p.add_argument("--no-singletons", action="store_true", help="leave identities with one image out (exploration)")
    p.add_argument("--label", default=None, help="a name for this recipe in the results")
    p.add_argument("--results-name", default=None, help="results file name [lfw_view1, or lfw_view2]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-dir", default=None, help="TensorBoard log folder")
    p.add_argument("--out", default=None, help="keep the trained checkpoint here")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    root = find_root(args.data)
    load_before = machine_load()
    if args.view2:
        r = run_view2(root, args)
    else:
        r = run_view1(root, args, 1.0 if args.quick else args.max_minutes)
    raw, pca = r["baselines"]["raw_pixels"], r["baselines"]["pca"]
    name = args.results_name or ("lfw_view2" if args.view2 else "lfw_view1")
    payload = {
        "benchmark": name, "quick": args.quick, "label": args.label, "recipe": recipe(args),
        **{k: v for k, v in r.items() if k != "history"},
        "floor": 0.78, "goal": 0.85,
        "summary": {"accuracy": round(r["accuracy"], 4), "auc": round(r["auc"], 4),
                    "raw_pixels": round(raw["accuracy"], 4), "pca": round(pca["accuracy"], 4),
                    "train_minutes": round(r["train_seconds"] / 60, 1), "floor_0.78_met": r["accuracy"] >= 0.78},
        "load": {"before": load_before, "after": machine_load(), "omp_threads": os.environ.get("OMP_NUM_THREADS")},
        "history": r.get("history"),
    }
    se = f" ± {r['accuracy_se']:.1%}" if "accuracy_se" in r else ""
    rows = [(f"siamsearch `--preset {args.preset}`" + (f" ({args.label})" if args.label else ""),
             f"{r['accuracy']:.1%}{se}", f"{r['auc']:.3f}", f"{r['train_seconds'] / 60:.1f} min"),
            ("whitened PCA-100 (eigenfaces)", f"{pca['accuracy']:.1%}", f"{pca.get('auc', float('nan')):.3f}", "-"),
            ("raw pixels", f"{raw['accuracy']:.1%}", f"{raw.get('auc', float('nan')):.3f}", "-")]
    title = ("LFW View 2, 10 folds, mean ± standard error" if args.view2
             else "LFW View 1: DevTest pairs, threshold chosen on DevTrain pairs")
    write_results(name, payload, rows, ("method", "accuracy", "AUC", "training"), title)
    print(f"{title}: accuracy {r['accuracy']:.2%}{se}, AUC {r['auc']:.4f} (raw pixels {raw['accuracy']:.2%}, "
          f"PCA {pca['accuracy']:.2%}) after {r['train_seconds'] / 60:.1f} min; load {payload['load']['after']}")
    return payload


if __name__ == "__main__":
    main()
