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
import json
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .._version import __version__
from ..core.distance import pair_distances
from ..core.errors import CheckpointError, SiamsearchError, check_fingerprint
from ..core.files import PathLike, write_json_atomic
from ..metrics.bootstrap import CLOPPER_PEARSON_METHOD, pairs_independent, subject_bootstrap_ci
from ..query.record import (CI_METHOD, DECISION_RULE, FEW_IDENTITIES, RECORD_KIND, RECORD_VERSION, RULES,
                            CalibrationWarning, binomial_ci, compare_lines, is_supported, with_history)

#: How a calibration's FAR/TAR intervals are computed when pairs share identities.
CALIBRATION_CI_METHOD = ("95%: the wider of a percentile bootstrap over identities (pairs of one identity are "
                         "correlated; ISO/IEC 19795-1) and the Clopper-Pearson interval on the pair counts")

def rate_intervals(d: np.ndarray, s: np.ndarray, threshold: float, subjects: Optional[tuple],
                   independent: bool, n_boot: int = 1000, seed: int = 0) -> tuple[list, list, str]:
    """95% intervals of the FAR and TAR at ``threshold`` and the method used.

    Independent pairs (or no identities given): Clopper-Pearson on the counts. Otherwise the
    wider of the bootstrap over identities (pairs of one identity are correlated) and
    Clopper-Pearson (the bootstrap cannot widen a rate of 0 that no pair contradicted).

    Returns:
        ``(far_ci95, tar_ci95, method)``.
    """
    accepted = d <= threshold
    n_gen, n_imp = int(s.sum()), int((~s).sum())
    fa, ta = int(accepted[~s].sum()), int(accepted[s].sum())
    far_cp, tar_cp = binomial_ci(fa, n_imp), binomial_ci(ta, n_gen)
    if subjects is None or independent or not n_boot:
        method = CLOPPER_PEARSON_METHOD if independent else CI_METHOD
        return list(far_cp), list(tar_cp), method

    def stat(dd: np.ndarray, ss: np.ndarray) -> dict:
        acc = dd <= threshold
        return {"far": float(acc[~ss].mean()), "tar": float(acc[ss].mean())}

    boot = subject_bootstrap_ci(d, s, subjects[0], subjects[1], stat, n_boot=n_boot, seed=seed)
    far = [min(far_cp[0], boot["far"][0]), max(far_cp[1], boot["far"][1])]
    tar = [min(tar_cp[0], boot["tar"][0]), max(tar_cp[1], boot["tar"][1])]
    return far, tar, CALIBRATION_CI_METHOD


def choose_threshold(distances: np.ndarray, is_same: np.ndarray, rule: str = "far",
                     target_far: Optional[float] = 1e-3, subjects: Optional[tuple] = None,
                     independent: bool = False, n_boot: int = 1000, seed: int = 0) -> dict:
    """Pick a threshold from pair distances by ``rule`` and describe it (no I/O, no model).

    Args:
        distances: ``[P]`` Euclidean distances in [0, 2].
        is_same: ``[P]`` bool, True for genuine pairs.
        rule: ``"far"``, ``"eer"`` or ``"max-accuracy"``.
        target_far: the FAR target for ``rule="far"`` (ignored by the other rules).
        subjects: ``(subj_a [P], subj_b [P])`` identities of each pair's images: the FAR/TAR intervals
            then account for identities shared between pairs (:func:`rate_intervals`); ``None``
            treats the pairs as independent.
        independent: the pairs share no image and no identity (Clopper-Pearson is then exact).
        n_boot, seed: bootstrap replicates and seed for those intervals.

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
    far_ci, tar_ci, method = rate_intervals(d, s, threshold, subjects, independent, n_boot, seed)
    if rule == "far":  # same point of the same ROC; a mismatch would be a bug in one of the two
        assert abs(fa / n_imp - summary[f"achieved_far@{verif.far_key(target_far)}"]) < 1e-12
    return {
        "threshold": threshold,
        "decision_rule": DECISION_RULE,
        "rule": rule,
        "target_far": target_far,
        "far": fa / n_imp,
        "far_ci95": far_ci,
        "tar": ta / n_gen,
        "tar_ci95": tar_ci,
        "false_accepts": fa,
        "true_accepts": ta,
        "accuracy": float(np.mean(accepted == s)),
        "ci_method": method,
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


def calibration_pairs(model, ds, pairs: int, seed: int, batch_size: int = 128,
                      progress: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """Seeded balanced pairs over ``ds``'s identities and their distances under ``model``.

    Pairs are distinct (:func:`siamsearch.evaluation.pairs_sampling.distinct_pairs`): every
    distinct pair when the data allows no more than ``pairs``, else a seeded draw (half genuine).
    Only images that occur in a pair are embedded; pairs touching an unreadable image are dropped
    and counted.

    Returns:
        ``(distances [P] float64, is_same [P] bool, info)`` with ``info`` keys ``pairs_requested``,
        ``pairs_repeated`` (0: repeats are never drawn), ``possible_genuine``, ``possible_impostor``,
        ``all_pairs``, ``pairs_unreadable``, ``n_unreadable_images``, ``unreadable`` (first 20
        ``{source, reason}``), ``subjects`` (``(subj_a, subj_b)`` of the kept pairs) and
        ``independent`` (no image or identity in two pairs).
    """
    from .evaluate import embed_dataset
    from .pairs_sampling import distinct_pairs

    a, b, is_same, drawn = distinct_pairs(ds.identities, pairs, seed)
    used = np.unique(np.r_[a, b])
    emb, kept, failures = embed_dataset(model, ds.subset(used, reindex=False), batch_size=batch_size,
                                        progress=progress)
    row = np.full(len(ds), -1, dtype=np.int64)
    row[used[kept]] = np.arange(kept.size)
    ok = (row[a] >= 0) & (row[b] >= 0)
    dist = pair_distances(emb[row[a[ok]]], emb[row[b[ok]]]).astype(np.float64)
    a, b = a[ok], b[ok]
    subjects = (ds.identities[a], ds.identities[b])
    info = {
        "pairs_requested": int(pairs),
        "pairs_repeated": 0,
        "possible_genuine": drawn["possible_genuine"],
        "possible_impostor": drawn["possible_impostor"],
        "all_pairs": drawn["all_pairs"],
        "subjects": subjects,
        "independent": pairs_independent(a, b, *subjects),
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


def previous_record(out: PathLike) -> Optional[dict]:
    """The calibration record stored at ``out`` now (a checkpoint's, or a ``.json`` record), else ``None``."""
    out = Path(out)
    if not out.is_file():
        return None
    if out.suffix.lower() == ".json":
        try:
            old = json.loads(out.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return old if isinstance(old, dict) and old.get("kind") == RECORD_KIND else None
    from ..core.checkpoint import load_checkpoint

    return load_checkpoint(out, verify=False).calibration


def refuse_weaker(old: Optional[dict], new: dict, out: PathLike, force: bool) -> None:
    """Refuse to replace a supported record with an unsupported one unless ``force``.

    Raises:
        SiamsearchError: showing old beside new and how to go ahead anyway (``--force``).
    """
    if old is None or force or not is_supported(old) or is_supported(new):
        return
    rows = "\n".join(compare_lines(old, new, ("stored", "new")))
    raise SiamsearchError(
        f"{out} holds a calibration supported by its data, and this one is not (too few impostor pairs or "
        f"held-out identities); it was NOT replaced:\n{rows}\n"
        "Calibrate on more held-out identities, or pass --force to replace it anyway (the old record is kept "
        "in the new one's previous_records)")


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
    force: bool = False,
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
        force: replace a supported record at ``out`` with an unsupported one (refused otherwise).

    Returns:
        The calibration record (a JSON-safe dict; see the module docstring and README). The record it
        replaced, if any, is kept in its ``previous_records`` (newest first).

    Raises:
        SiamsearchError: no held-out identity left, too few identities for pairs, bad rule/target, or a
            supported stored record that this unsupported one would replace (without ``force``).
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
    stats = choose_threshold(dist, is_same, rule=rule, target_far=target_far, subjects=info["subjects"],
                             independent=info["independent"], seed=seed)
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
        **{k: info[k] for k in ("pairs_requested", "pairs_repeated", "pairs_unreadable", "possible_genuine",
                                "possible_impostor", "all_pairs")},
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
        "precision": str(model.precision),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "siamsearch_version": __version__,
        "warnings": notes,
    }
    old = previous_record(out)
    refuse_weaker(old, record, out, force)
    record = with_history(record, old)
    for note in notes:
        warnings.warn(note, CalibrationWarning, stacklevel=2)
    store_record(record, out)
    return record
