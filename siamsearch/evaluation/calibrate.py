"""Calibration: choose a verification threshold from data, and keep its evidence with the model.

:func:`calibrate` draws seeded, balanced genuine / impostor pairs from the
identities of a labelled dataset that the model was **not** trained on (the
checkpoint's card lists its ``train_identities``; those are left out), embeds
only the images those pairs use, computes the ROC once
(:func:`siamsearch.metrics.verification.verification_summary`) and picks a
threshold by one of three rules:

* ``"far"`` (default): the largest observed distance whose false accept rate on
  the impostor pairs is at most ``target_far``
  (:func:`~siamsearch.metrics.verification.threshold_for_far`);
* ``"eer"``: the equal-error-rate threshold;
* ``"max-accuracy"``: the threshold of highest accuracy on these pairs.

**Decision rule everywhere: same identity iff ``distance <= threshold``.**

The record stored in the checkpoint (:func:`siamsearch.core.checkpoint.write_calibration`)
or in a JSON file holds the threshold, the rule and target, the achieved FAR and
TAR at the threshold with exact Clopper-Pearson 95% intervals on the pair
counts, AUC, EER, the numbers of genuine and impostor pairs, the data digest,
the model fingerprint, the date and the siamsearch version. A record is only
ever applied to the model whose fingerprint it carries (:func:`check_record`).
"""
from __future__ import annotations

import datetime as _dt
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .._version import __version__
from ..core.distance import pair_distances
from ..core.errors import CheckpointError, SiamsearchError, check_fingerprint
from ..query.record import (CI_METHOD, DECISION_RULE, FEW_IDENTITIES, RECORD_KIND, RECORD_VERSION, RULES,
                            CalibrationWarning, binomial_ci)
from ..core.files import PathLike, write_json_atomic

def choose_threshold(distances: np.ndarray, is_same: np.ndarray, rule: str = "far",
                     target_far: Optional[float] = 1e-3) -> dict:
    """Pick a threshold from pair distances by ``rule`` and describe it (no I/O, no model).

    Args:
        distances: ``[P]`` Euclidean distances in [0, 2].
        is_same: ``[P]`` bool, True for genuine pairs.
        rule: ``"far"``, ``"eer"`` or ``"max-accuracy"``.
        target_far: the FAR target for ``rule="far"`` (ignored by the other rules).

    Returns:
        The statistical part of a calibration record: ``threshold``, ``rule``, ``target_far``,
        ``far``/``tar`` with ``far_ci95``/``tar_ci95``, ``false_accepts``, ``true_accepts``,
        ``accuracy``, ``auc``, ``eer``, ``eer_threshold``, ``n_genuine``, ``n_impostor``,
        ``min_impostor_pairs`` and ``target_supported`` (rule ``far`` only; else ``None``).
    """
    from ..metrics import verification as verif

    if rule not in RULES:
        raise SiamsearchError(f"unknown calibration rule {rule!r}; choose one of {', '.join(RULES)}")
    if rule == "far":
        if target_far is None or not 0.0 < float(target_far) < 1.0:
            raise SiamsearchError(f"--target-far must be in (0, 1), e.g. 1e-3; got {target_far}")
        target_far = float(target_far)
    else:
        target_far = None
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    s = np.asarray(is_same)
    summary = verif.verification_summary(d, s, fars=(target_far,) if target_far else ())
    if rule == "far":
        threshold = summary[f"threshold@{verif.far_key(target_far)}"]
    elif rule == "eer":
        threshold = summary["eer_threshold"]
    else:
        threshold = summary["best_threshold"]
    threshold = float(threshold)
    accepted = d <= threshold
    n_gen, n_imp = int(s.sum()), int((~s).sum())
    fa, ta = int(accepted[~s].sum()), int(accepted[s].sum())
    if rule == "far":  # same point of the same ROC; a mismatch would be a bug in one of the two
        assert abs(fa / n_imp - summary[f"achieved_far@{verif.far_key(target_far)}"]) < 1e-12
    return {
        "threshold": threshold,
        "decision_rule": DECISION_RULE,
        "rule": rule,
        "target_far": target_far,
        "far": fa / n_imp,
        "far_ci95": list(binomial_ci(fa, n_imp)),
        "tar": ta / n_gen,
        "tar_ci95": list(binomial_ci(ta, n_gen)),
        "false_accepts": fa,
        "true_accepts": ta,
        "accuracy": float(np.mean(accepted == s)),
        "ci_method": CI_METHOD,
        "auc": float(summary["auc"]),
        "eer": float(summary["eer"]),
        "eer_threshold": float(summary["eer_threshold"]),
        "n_genuine": n_gen,
        "n_impostor": n_imp,
        "min_impostor_pairs": verif.min_impostor_pairs(target_far) if target_far else None,
        "target_supported": verif.far_supported(n_imp, target_far) if target_far else None,
    }

# --------------------------------------------------------------------------- pairs from data
def held_out_view(ds, card: dict, include_training_identities: bool = False) -> tuple[object, int, list[str]]:
    """The part of ``ds`` whose identities the model was not trained on.

    Args:
        ds: an :class:`~siamsearch.data.ImageDataset`.
        card: the checkpoint's training card (``card["train_identities"]``: identity names).
        include_training_identities: keep everything (an optimistic calibration).

    Returns:
        ``(view, n_excluded_identities, warnings)``; the view keeps the dataset's ids (not reindexed).

    Raises:
        SiamsearchError: when every identity of ``ds`` was used for training.
    """
    notes: list[str] = []
    trained = card.get("train_identities") if isinstance(card, dict) else None
    if include_training_identities:
        notes.append("calibrated on identities the model was trained on (--include-training-identities): "
                     "the threshold is optimistic for new identities")
        return ds, 0, notes
    if not trained:
        notes.append("the checkpoint does not record its training identities, so held-out data cannot be "
                     "checked: make sure DATA holds identities the model was not trained on")
        return ds, 0, notes
    trained = set(map(str, trained))
    names = np.asarray([str(n) in trained for n in ds.identity_names], dtype=bool)
    excluded = names[ds.identities] if len(ds) else np.zeros(0, bool)
    n_excl = int(np.unique(ds.identities[excluded]).size)
    keep = np.flatnonzero(~excluded)
    if keep.size == 0:
        raise SiamsearchError(
            f"all {int(np.unique(ds.identities).size)} identities in this data were used to train the model, so "
            "it cannot measure how the threshold holds for new identities. Calibrate on held-out identities (a "
            "folder of other people/classes, or the identities of the card's val_identities), or pass "
            "--include-training-identities to accept an optimistic threshold")
    return ds.subset(keep, reindex=False), n_excl, notes


def _unique_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each unordered pair ``{a, b}``, in input order."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    _, first = np.unique(np.stack([lo, hi], axis=1), axis=0, return_index=True)
    return np.sort(first)


def calibration_pairs(model, ds, pairs: int, seed: int, batch_size: int = 128,
                      progress: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """Seeded balanced pairs over ``ds``'s identities and their distances under ``model``.

    Pairs come from :func:`siamsearch.data.sample_pairs` (half genuine); repeated
    unordered pairs (the sampler draws with replacement) are kept once, so the counts in
    the record are distinct pairs. Only images that occur in a pair are embedded; pairs
    touching an unreadable image are dropped and counted.

    Returns:
        ``(distances [P] float64, is_same [P] bool, info)`` with ``info`` keys ``pairs_requested``,
        ``pairs_repeated``, ``pairs_unreadable``, ``n_unreadable_images``, ``unreadable`` (first 20
        ``{source, reason}``).
    """
    from ..data import sample_pairs
    from .evaluate import embed_dataset

    a, b, is_same = sample_pairs(ds.identities, pairs, seed=seed)
    first = _unique_pairs(a, b)
    repeated = int(a.size - first.size)
    a, b, is_same = a[first], b[first], is_same[first]
    used = np.unique(np.r_[a, b])
    emb, kept, failures = embed_dataset(model, ds.subset(used, reindex=False), batch_size=batch_size,
                                        progress=progress)
    row = np.full(len(ds), -1, dtype=np.int64)
    row[used[kept]] = np.arange(kept.size)
    ok = (row[a] >= 0) & (row[b] >= 0)
    dist = pair_distances(emb[row[a[ok]]], emb[row[b[ok]]]).astype(np.float64)
    info = {
        "pairs_requested": int(pairs),
        "pairs_repeated": repeated,
        "pairs_unreadable": int((~ok).sum()),
        "n_unreadable_images": len(failures),
        "unreadable": [{"source": s, "reason": r} for _, s, r in failures[:20]],
    }
    return dist, is_same[ok], info


# --------------------------------------------------------------------------- storage
def store_record(record: dict, out: PathLike) -> None:
    """Store ``record`` into a checkpoint (``write_calibration``) or, for ``*.json``, a JSON file.

    Raises:
        FingerprintMismatch: when ``out`` is a checkpoint of another model.
    """
    out = Path(out)
    if out.suffix.lower() == ".json":
        write_json_atomic(out, record, sort_keys=True)
        return
    from ..core.checkpoint import write_calibration

    write_calibration(out, record)


def _check_out(out: Path, fingerprint: str) -> None:
    """Fail before any work when ``out`` is a checkpoint of another model."""
    if out.suffix.lower() == ".json":
        return
    from ..core.checkpoint import load_checkpoint

    try:
        other = load_checkpoint(out, verify=False).fingerprint
    except CheckpointError:
        raise
    except SiamsearchError:
        raise SiamsearchError(f"--out {out}: no such checkpoint; store the calibration in the model itself "
                              f"(the default) or in a .json file") from None
    check_fingerprint(fingerprint, other, made="the calibration is for", what=f"--out {out}",
                      fix="store it in the calibrated model (the default) or in a .json file")


# --------------------------------------------------------------------------- entry point
def calibrate(
    model_path: PathLike,
    data: Union[PathLike, Sequence[PathLike]],
    format: str = "auto",
    rule: str = "far",
    target_far: float = 1e-3,
    pairs: int = 20000,
    seed: int = 0,
    out: Optional[PathLike] = None,
    split: Optional[str] = None,
    include_training_identities: bool = False,
    batch_size: int = 128,
    device: str = "auto",
    progress: bool = False,
) -> dict:
    """Choose a verification threshold on held-out identities and store it with the model.

    Args:
        model_path: checkpoint written by ``siamsearch train``.
        data: labelled dataset (any layout :func:`siamsearch.data.open_dataset` reads).
        format: dataset layout, or ``"auto"``.
        rule: ``"far"`` (largest threshold with FAR <= ``target_far``), ``"eer"`` or ``"max-accuracy"``.
        target_far: FAR target of rule ``"far"``, in (0, 1).
        pairs: pairs to draw (half genuine, half impostor; repeats are kept once).
        seed: seeds the pairs; the same seed and data give the same threshold.
        out: where to store the record: a checkpoint of the same model (default: ``model_path``
            itself) or a ``.json`` file.
        split: dataset split (default: ``test`` for IDX and CelebA, everything otherwise).
        include_training_identities: also use identities the model was trained on (optimistic).
        batch_size: images per forward pass.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: a tqdm bar on stderr while embedding.

    Returns:
        The calibration record (a JSON-safe dict; see the module docstring and README).

    Raises:
        SiamsearchError: no held-out identity left, too few identities for pairs, bad rule/target.
        FingerprintMismatch: ``out`` is a checkpoint of another model.

    Warns:
        CalibrationWarning: fewer impostor pairs than ``3 / target_far``, unreadable images,
        no record of the training identities.
    """
    from ..data import open_dataset
    from ..core.embedder import load_model
    from .evaluate import _default_split

    if rule not in RULES:
        raise SiamsearchError(f"unknown calibration rule {rule!r}; choose one of {', '.join(RULES)}")
    if rule == "far" and not 0.0 < float(target_far) < 1.0:
        raise SiamsearchError(f"--target-far must be in (0, 1), e.g. 1e-3; got {target_far}")
    if int(pairs) < 2:
        raise SiamsearchError(f"--pairs must be at least 2 (one genuine, one impostor); got {pairs}")
    model = load_model(model_path, device=device)
    out = Path(model_path if out is None else out)
    if out.resolve() != Path(model_path).resolve():
        _check_out(out, model.fingerprint)

    if split is None and isinstance(data, (str, os.PathLike)):
        split = _default_split(data, format)
    ds = open_dataset(data, format=format, split=split)
    held, n_excluded, notes = held_out_view(ds, model.card, include_training_identities)
    n_ids = int(np.unique(held.identities).size)
    if n_ids < 2:
        raise SiamsearchError(
            f"only {n_ids} identity is left after leaving out the {n_excluded} training identities; calibration "
            "needs at least 2 held-out identities (impostor pairs) with 2+ images (genuine pairs)")
    if n_ids < FEW_IDENTITIES:
        notes.append(f"only {n_ids} held-out identities: the impostor pairs show how these {n_ids} differ from "
                     f"each other, not how new identities will; calibrate on {FEW_IDENTITIES} or more identities "
                     "for a threshold that carries over")
    dist, is_same, info = calibration_pairs(model, held, pairs, seed, batch_size=batch_size, progress=progress)
    if info["n_unreadable_images"]:
        notes.append(f"{info['n_unreadable_images']} unreadable image(s) skipped; {info['pairs_unreadable']} "
                     "pair(s) touching them dropped")
    stats = choose_threshold(dist, is_same, rule=rule, target_far=target_far)
    if rule == "far" and not stats["target_supported"]:
        notes.append(
            f"only {stats['n_impostor']:,} impostor pairs: a FAR of {target_far:g} needs at least "
            f"{stats['min_impostor_pairs']:,} (3 / FAR) to be measured; the achieved FAR "
            f"{stats['far']:.2e} has the interval {stats['far_ci95'][0]:.1e}..{stats['far_ci95'][1]:.1e}. "
            f"Use --pairs {2 * stats['min_impostor_pairs']} or more (with enough held-out identities)")
    data_paths = os.fspath(data) if isinstance(data, (str, os.PathLike)) else [os.fspath(p) for p in data]
    record = {
        "kind": RECORD_KIND,
        "format_version": RECORD_VERSION,
        **stats,
        "n_pairs": stats["n_genuine"] + stats["n_impostor"],
        "seed": int(seed),
        **{k: info[k] for k in ("pairs_requested", "pairs_repeated", "pairs_unreadable")},
        "data_digest": ds.digest(),
        "data": {
            "path": data_paths, "format": ds.format, "split": split, "n_images": len(ds),
            "n_identities": int(np.unique(ds.identities).size), "held_out_images": len(held),
            "held_out_identities": n_ids, "excluded_training_identities": n_excluded,
            "held_out_digest": held.digest(), "include_training_identities": bool(include_training_identities),
            "n_unreadable_images": info["n_unreadable_images"], "unreadable": info["unreadable"],
        },
        "model_fingerprint": model.fingerprint,
        "model_path": os.fspath(model_path),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "siamsearch_version": __version__,
        "warnings": notes,
    }
    for note in notes:
        warnings.warn(note, CalibrationWarning, stacklevel=2)
    store_record(record, out)
    return record
