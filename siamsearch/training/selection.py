"""Which epoch to keep: the trainer's model-selection rule, apart from the training loop.

Each epoch's validation record (``val_auc``, ``val_genuine_distance``,
``val_impostor_distance``) is compared with the best so far by :func:`is_better`:

1. a validation ROC-AUC higher by more than :data:`AUC_TIE` wins;
2. within :data:`AUC_TIE` the AUCs tie (a small validation set cannot tell them apart, and
   an AUC of 1.0 is often reached while distances are still collapsed), and the epoch
   with the larger impostor-genuine distance gap wins, the later epoch on equal gaps;
3. without validation the later epoch wins.

:func:`validation_warning` says when a validation split is too small to choose an
epoch at all (then ``train(val_data=FOLDER)`` validates on a separate folder).
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Union

#: Validation AUCs closer than this are treated as equal (the tie is broken by the distance gap).
AUC_TIE = 1e-3
#: Below this many validation identities, epoch selection is flagged as unreliable.
MIN_VAL_IDENTITIES = 10
#: Below this many validation images, likewise.
MIN_VAL_IMAGES = 50


class TrainingWarning(UserWarning):
    """Training ran, but a choice it made (such as the kept epoch) rests on weak evidence."""


def distance_gap(record: dict) -> float:
    """Mean impostor distance minus mean genuine distance of a validation record (``-inf`` if absent)."""
    g, i = record.get("val_genuine_distance"), record.get("val_impostor_distance")
    return float("-inf") if g is None or i is None else float(i) - float(g)


def is_better(record: dict, best: Optional[dict]) -> bool:
    """Whether the epoch of ``record`` should replace the kept epoch ``best`` (see the module docstring).

    Args:
        record: this epoch's history row (``epoch``; ``val_auc`` and the mean distances when validated).
        best: the kept epoch's history row, or ``None`` before the first epoch.
    """
    if best is None:
        return True
    if "val_auc" not in record or "val_auc" not in best:
        return True  # no validation: keep the latest epoch
    auc, best_auc = float(record["val_auc"]), float(best["val_auc"])
    if auc > best_auc + AUC_TIE:
        return True
    if auc < best_auc - AUC_TIE:
        return False
    return distance_gap(record) >= distance_gap(best)


def validation_warning(n_identities: int, n_images: int) -> Optional[str]:
    """A note when ``n_identities`` / ``n_images`` of validation are too few to choose an epoch, else ``None``."""
    if n_identities >= MIN_VAL_IDENTITIES and n_images >= MIN_VAL_IMAGES:
        return None
    return (f"validation holds only {n_identities} identities / {n_images} images: too few to tell the epochs "
            f"apart (AUC saturates), so the kept epoch is chosen mostly by the impostor-genuine distance gap. "
            f"Validate on a separate folder with --val-data FOLDER ({MIN_VAL_IDENTITIES}+ identities), or raise "
            "--val-fraction")


def open_validation(val_data: Union[str, os.PathLike], train_ds) -> "object":
    """The ``--val-data`` dataset, checked against the training data.

    Args:
        val_data: a labelled dataset path (any layout :func:`siamsearch.data.open_dataset` reads).
        train_ds: the training :class:`~siamsearch.data.ImageDataset` (for the identity-overlap check).

    Returns:
        The validation :class:`~siamsearch.data.ImageDataset`.

    Raises:
        SiamsearchError: when it has fewer than 2 identities.

    Warns:
        TrainingWarning: when identity names also occur in the training data.
    """
    from ..core.errors import SiamsearchError
    from ..data import open_dataset

    val = open_dataset(val_data)
    if val.num_identities < 2:
        raise SiamsearchError(f"--val-data {val_data}: validation needs at least 2 identities; found "
                              f"{val.num_identities}")
    shared = set(map(str, val.identity_names)) & set(map(str, train_ds.identity_names))
    if shared:
        warnings.warn(f"--val-data {val_data}: {len(shared)} identities also occur in the training data (e.g. "
                      f"{sorted(shared)[:3]}); validation then measures seen identities, not new ones",
                      TrainingWarning, stacklevel=3)
    return val
