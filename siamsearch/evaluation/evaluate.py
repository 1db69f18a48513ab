"""`evaluate`: how well does a model verify and identify on a labelled dataset?

One library function, :func:`evaluate`, behind ``siamsearch evaluate``. It embeds the
dataset once (in batches), then measures

* **verification** on seeded genuine/impostor pairs (:func:`siamsearch.data.sample_pairs`):
  ROC, AUC, EER, TAR at FAR, best and 10-fold CV accuracy, bootstrap 95% CIs, and the
  model's calibrated threshold (if it has one) checked on this data;
* **identification** leave-one-out over the whole set (precision@1, recall@k / CMC,
  R-precision, MAP@R) and an **open-set** split (identities held out of a gallery; DIR at
  FPIR);
* **one-shot** N-way accuracy when the data is in the Omniglot run format;
* with ``index``, identification on a gallery through exact search and through the
  gallery's deployed (possibly approximate) index, and the difference.

It writes ``metrics.json`` (every figure, its CI and the settings) and a self-contained
``report.html`` (plus ``report.md`` and ``plots/*.png``) into ``out``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import zipfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .._version import __version__
from ..core.choices import PROTOCOLS  # noqa: F401  (defined once there, torch-free)
from ..core.distance import DECISION_RULE
from ..core.errors import SiamsearchError
from ..core.files import PathLike
from ..metrics import oneshot as oneshot_mod
from . import protocols
from .index_eval import gallery_search_fn, index_comparison  # noqa: F401 (public names)
from .protocols import DEFAULT_FPIRS, N_EXAMPLES, OPEN_SET_UNKNOWN_FRACTION  # noqa: F401 (public names)
from .results import _jsonable, summary_rows  # noqa: F401 (public names)


def is_oneshot_runs(path: PathLike) -> bool:
    """Whether ``path`` holds Omniglot one-shot runs (``class_labels.txt`` in a zip or run folders)."""
    p = Path(path)
    if p.is_file() and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            return any(n.split("/")[-1] == oneshot_mod.LABELS_FILE for n in z.namelist())
    if p.is_dir():
        return any(p.glob(oneshot_mod.LABELS_FILE)) or any(p.glob(f"*/{oneshot_mod.LABELS_FILE}")) or any(
            p.glob(f"*/*/{oneshot_mod.LABELS_FILE}")
        )
    return False


def _default_split(data: PathLike, format: str) -> Optional[str]:
    """Evaluate on the held-out split where the format has one (IDX: test; CelebA: test)."""
    from ..data import detect_format

    fmt = format if format != "auto" else detect_format(data)
    return "test" if fmt in ("idx", "mnist", "fashion-mnist", "celeba") else None


def embed_dataset(model, ds, batch_size: int = 128, progress: bool = False) -> tuple[np.ndarray, np.ndarray, list]:
    """Embed every readable image of ``ds`` in batches (:meth:`Embedder.embed_items`, the one embedding loop).

    Returns:
        ``(embeddings [M, d] float32, kept [M] int64 dataset indices, failures [(index, source, reason)])``.
    """
    embs, kept, failures = [], [], []
    for batch in model.embed_items(len(ds), ds.load, batch_size=batch_size, progress=progress):
        embs.append(batch.embeddings)
        kept.append(batch.positions)
        failures += [(int(i), ds.source(int(i)), reason) for i, reason in batch.failures]
    return (
        np.concatenate(embs) if embs else np.zeros((0, model.dim), np.float32),
        np.concatenate(kept).astype(np.int64) if kept else np.zeros(0, np.int64),
        failures,
    )


def _seen_in_training(card: dict, names: Sequence[str]) -> int:
    """How many of these identity names the model's training card lists as training identities."""
    trained = card.get("train_identities") if isinstance(card, dict) else None
    return len(set(map(str, trained)) & set(map(str, names))) if trained else 0


def _subsample(n: int, limit: Optional[int], seed: int) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(limit), replace=False))


# --------------------------------------------------------------------------- entry point
def _settings(model, model_path, data, format, split, protocol, index, pairs, seed, limit, n_boot) -> dict:
    return {
        "model": os.fspath(model_path), "model_fingerprint": model.fingerprint,
        "precision": str(getattr(model, "precision", "fp32")),
        "data": None if data is None else (os.fspath(data) if isinstance(data, (str, os.PathLike))
                                           else [os.fspath(p) for p in data]),
        "format": format, "split": split, "protocol": protocol, "index": None if index is None else os.fspath(index),
        "pairs": int(pairs), "seed": int(seed), "limit": limit, "n_boot": int(n_boot),
        "decision_rule": DECISION_RULE, "siamsearch": __version__,
        "python": platform.python_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _check_args(protocol: str, data, index, pairs: int, limit: Optional[int]) -> None:
    if protocol not in PROTOCOLS:
        raise SiamsearchError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if data is None and index is None:
        raise SiamsearchError("give a dataset to evaluate on (--data) or a gallery (--index)")
    if pairs < 20:
        raise SiamsearchError(f"--pairs must be at least 20 (10-fold CV needs genuine and impostor pairs); got {pairs}")
    if limit is not None and limit < 2:
        raise SiamsearchError(f"--limit must be at least 2 images; got {limit}")


def pairs_file_conflicts(protocol: str = "all", split: Optional[str] = None, limit: Optional[int] = None,
                         format: str = "auto") -> list[str]:
    """What in these settings does not apply to a pairs file, each as a message that says what to do.

    A pairs file (``evaluate(pairs=FILE)``, ``siamsearch evaluate --pairs FILE``) is scored by the
    standard pairs protocol on exactly its pairs: verification only, no dataset to split,
    subsample or detect the layout of. ``protocol`` ``verification`` or ``all`` (everything the
    data allows) is that protocol; ``identification`` and ``oneshot``, a ``split``, a ``limit`` and a
    dataset ``format`` other than ``auto`` would be ignored, so they are refused instead.

    Returns:
        One message per option that conflicts (empty when none does); the CLI raises them as a
        usage error, :func:`evaluate` as a :class:`SiamsearchError`.
    """
    problems = []
    if protocol in ("identification", "oneshot"):
        problems.append(f"--protocol {protocol} needs a dataset (--data); a pairs file measures verification only: "
                        "drop --protocol (or give --protocol verification)")
    if split is not None:
        problems.append("--split chooses a split of a dataset (--data); a pairs file names its own images: drop --split "
                        "(for LFW choose the file instead: pairsDevTest.txt for View 1, pairs.txt for View 2)")
    if limit is not None:
        problems.append("--limit subsamples a dataset's images (--data); a pairs file is scored whole, every pair of it "
                        "(that is the benchmark): drop --limit, or give a shorter pairs file")
    if format != "auto":
        problems.append(f"--format {format} is the layout of a dataset (--data); a pairs file's format (LFW or CSV) is "
                        "detected from its first line: drop --format")
    return problems


def _evaluate_oneshot(model, data, protocol: str, batch_size: int, metrics: dict, report_data: dict) -> None:
    if protocol not in ("oneshot", "all"):
        raise SiamsearchError(f"{data} holds one-shot runs; use --protocol oneshot (or all) with it")
    runs = oneshot_mod.load_oneshot_runs(data)
    om = oneshot_mod.oneshot_metrics(runs, lambda ims: model.embed(ims, batch_size=batch_size))
    metrics["oneshot"] = om
    metrics["settings"]["format"] = "oneshot-runs"
    if om["n_queries"] < 100:
        metrics["warnings"].append(f"one-shot accuracy rests on {om['n_queries']} queries only")
    report_data["oneshot_runs"] = {r.name: r for r in runs}


def _open_and_embed(model, data, format, split, limit, seed, batch_size, progress, metrics) -> tuple:
    """The dataset (subsampled by ``limit``), its embeddings, kept indices and identities."""
    from ..data import open_dataset

    warnings = metrics["warnings"]
    if split is None:
        split = _default_split(data, format)
        metrics["settings"]["split"] = split
    ds = open_dataset(data, format=format, split=split)
    ds = ds.subset(_subsample(len(ds), limit, seed), reindex=False) if limit else ds
    emb, kept, failures = embed_dataset(model, ds, batch_size=batch_size, progress=progress)
    ids = ds.identities[kept]
    metrics["dataset"] = {
        "format": ds.format, "n_images": int(len(ds)), "n_embedded": int(kept.size),
        "n_identities": int(np.unique(ids).size), "digest": ds.digest(),
        "unreadable": [{"source": s, "reason": r} for _, s, r in failures[:100]],
        "n_unreadable": len(failures),
    }
    if failures:
        warnings.append(f"{len(failures)} unreadable images were skipped (listed in metrics.json)")
    if np.unique(ids).size < 2:
        raise SiamsearchError(f"{data} has fewer than 2 identities; evaluation needs several")
    seen = _seen_in_training(model.card, [ds.identity_names[i] for i in np.unique(ids)])
    metrics["dataset"]["identities_seen_in_training"] = seen
    if seen:
        warnings.append(
            f"{seen} of {metrics['dataset']['n_identities']} identities here were also training identities of "
            "this model (other images of them); figures need not carry over to identities it has never seen"
        )
    return ds, emb, kept, ids


def _evaluate_dataset(model, data, format, split, protocol, pairs, seed, limit, n_boot, batch_size, progress,
                      metrics: dict, report_data: dict) -> None:
    if protocol == "oneshot":
        raise SiamsearchError(
            f"{data} is not in the one-shot run format (runNN/class_labels.txt, training/, test/); "
            "give all_runs.zip or choose --protocol verification|identification"
        )
    ds, emb, kept, ids = _open_and_embed(model, data, format, split, limit, seed, batch_size, progress, metrics)
    report_data["dataset"] = ds
    warnings = metrics["warnings"]
    if protocol in ("verification", "all"):
        m, curves = protocols.verification(emb, ids, pairs, seed, n_boot, model.calibration, warnings)
        m["hardest"] = protocols.hardest_pairs(curves, kept, ds)
        metrics["verification"] = m
        report_data["verification"] = curves
    if protocol in ("identification", "all"):
        m, per_query = protocols.identification(emb, ids, seed, warnings, progress, n_boot=n_boot)
        m["failed"] = protocols.failed_identifications(per_query, ids, kept, ds)
        metrics["identification"] = m


def evaluate(
    model_path: PathLike,
    data: Optional[Union[PathLike, Sequence[PathLike]]] = None,
    format: str = "auto",
    protocol: str = "all",
    index: Optional[PathLike] = None,
    pairs: Union[int, PathLike] = 20000,
    seed: int = 0,
    out: Optional[PathLike] = None,
    split: Optional[str] = None,
    limit: Optional[int] = None,
    n_boot: int = 1000,
    batch_size: int = 128,
    device: str = "auto",
    progress: bool = False,
    images: Optional[PathLike] = None,
    skip_missing: bool = False,
) -> dict:
    """Measure a model on a labelled dataset and (with ``out``) write metrics.json and report.html.

    Args:
        model_path: checkpoint written by ``siamsearch train``.
        data: dataset path (any format :func:`siamsearch.data.open_dataset` reads) or Omniglot
            one-shot runs (``all_runs.zip`` or its folder). May be ``None`` when ``index`` is given.
        format: dataset layout, or ``"auto"``. Not with a pairs file (its format is detected).
        protocol: ``verification``, ``identification``, ``oneshot`` or ``all`` (everything the data
            allows: one-shot for run-format data, verification + identification otherwise). With a
            pairs file only ``verification`` or ``all`` (both: the pairs protocol).
        index: a gallery folder (``index/NAME``); identification is measured through exact search
            and through its deployed index.
        pairs: the most verification pairs to use. Pairs are distinct (a repeat is never counted
            twice); when the data allows no more than this many, every distinct pair is used, else a
            seeded draw, half genuine and half impostor. metrics.json says how many the data allows.
            Or a pairs file (LFW ``pairs.txt`` format or CSV ``a,b,is_same``): then ``data`` is not
            needed and the standard pairs protocol runs instead
            (:func:`siamsearch.evaluation.pairs_protocol.evaluate_pairs`: 10-fold accuracy +/-
            standard error, AUC, EER, TAR@FAR on exactly those pairs).
        seed: seeds the pairs, subsampling, open-set split, CV folds and bootstrap.
        out: folder for ``metrics.json``, ``report.html``, ``report.md`` and ``plots/``; ``None``
            writes nothing.
        split: dataset split (default: ``test`` for IDX and CelebA, the whole set otherwise). Not
            with a pairs file.
        limit: evaluate a seeded random subset of this many images. Not with a pairs file (it is
            scored whole).
        n_boot: bootstrap replicates for the 95% intervals (0 = none). Intervals resample
            identities (:mod:`siamsearch.metrics.bootstrap`); each section names its ``ci_method``.
        batch_size: images per forward pass.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: tqdm bars on stderr.
        images: with a pairs file, the folder its image names are relative to.
        skip_missing: with a pairs file, skip pairs with missing images instead of failing.

    Returns:
        The metrics dict that ``metrics.json`` holds.

    Raises:
        SiamsearchError: bad arguments, among them settings that do not apply to a pairs file
            (:func:`pairs_file_conflicts`) or ``images`` / ``skip_missing`` without one.
    """
    from ..core.embedder import load_model

    if isinstance(pairs, (str, os.PathLike)):  # a pairs file: the standard pairs protocol
        from .pairs_protocol import evaluate_pairs

        if data is not None or index is not None:
            raise SiamsearchError("a pairs file is evaluated on its own; drop --data / --index, or give --pairs N")
        conflicts = pairs_file_conflicts(protocol, split, limit, format)
        if conflicts:
            raise SiamsearchError("; ".join(conflicts))
        return evaluate_pairs(model_path, pairs, images, seed=seed, n_boot=n_boot, skip_missing=skip_missing,
                              out=out, batch_size=batch_size, device=device, progress=progress)
    if images is not None:
        raise SiamsearchError("--images goes with a pairs file (--pairs pairs.txt); for a dataset use --data")
    if skip_missing:
        raise SiamsearchError("--skip-missing goes with a pairs file (--pairs pairs.txt); a dataset (--data) "
                              "already skips unreadable images and lists them in metrics.json")
    _check_args(protocol, data, index, pairs, limit)
    model = load_model(model_path, device=device)
    metrics: dict = {"settings": _settings(model, model_path, data, format, split, protocol, index, pairs, seed,
                                           limit, n_boot),
                     "warnings": []}
    report_data: dict = {"examples": {}}
    if data is not None and isinstance(data, (str, os.PathLike)) and is_oneshot_runs(data):
        _evaluate_oneshot(model, data, protocol, batch_size, metrics, report_data)
    elif data is not None:
        _evaluate_dataset(model, data, format, split, protocol, pairs, seed, limit, n_boot, batch_size, progress,
                          metrics, report_data)
    if index is not None and protocol in ("identification", "all"):
        metrics["index_comparison"] = index_comparison(index, model, progress, metrics["warnings"])
    elif index is not None:
        metrics["warnings"].append("--index only affects identification; it was ignored for this protocol")
    if out is not None:
        from .report import write_report

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        metrics["settings"]["out"] = os.fspath(out)
        write_report(out, metrics, report_data)
        (out / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2, sort_keys=False) + "\n")
    return _jsonable(metrics)
