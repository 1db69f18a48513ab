"""Which epoch the trainer keeps (issue 16, item 5)."""
from __future__ import annotations

import warnings

import pytest

import siamsearch
from siamsearch.core.checkpoint import load_checkpoint
from siamsearch.training import selection
from siamsearch.training.selection import TrainingWarning, is_better

from conftest import make_identity_folders

FAST = dict(input_size=16, embedding_dim=8, batch_size=8, m_per_class=2, val_pairs=50, progress=False)


def _rec(epoch, auc, gen=None, imp=None):
    r = {"epoch": epoch, "val_auc": auc}
    if gen is not None:
        r.update(val_genuine_distance=gen, val_impostor_distance=imp)
    return r


def test_is_better_rules():
    assert is_better(_rec(1, 0.9), None)
    assert is_better(_rec(2, 0.95, 0.1, 0.2), _rec(1, 0.9, 0.1, 0.9))  # clearly higher AUC wins
    assert not is_better(_rec(2, 0.90, 0.1, 0.9), _rec(1, 0.95, 0.1, 0.2))
    # the case: AUC 1.0 from epoch 1 with collapsed distances; a later epoch with a wider gap wins
    assert is_better(_rec(3, 1.0, 0.17, 0.61), _rec(1, 1.0, 0.05, 0.16))
    assert not is_better(_rec(3, 1.0, 0.05, 0.10), _rec(1, 1.0, 0.17, 0.61))
    assert is_better(_rec(2, 0.9995, 0.1, 0.5), _rec(1, 1.0, 0.1, 0.5))  # a tie within AUC_TIE: the later epoch
    assert is_better({"epoch": 2}, {"epoch": 1})  # no validation: the last epoch


def test_trainer_breaks_auc_ties_by_the_distance_gap(tmp_path, monkeypatch):
    from siamsearch.training import trainer

    data = make_identity_folders(tmp_path / "ids", n_ids=6, per_id=4, size=20)
    scripted = iter([_rec(0, 1.0, 0.05, 0.16), _rec(0, 1.0, 0.17, 0.61), _rec(0, 0.999, 0.2, 0.5)])

    def fake_validate(*a, **k):
        r = next(scripted)
        r.pop("epoch")
        r["val_precision_at_1"] = 1.0
        return r

    monkeypatch.setattr(trainer, "_validate", fake_validate)
    result = siamsearch.train(data, tmp_path / "m.pt", epochs=3, val_fraction=0.34, seed=0, **FAST)
    assert result.best_epoch == 2  # the old strict ">" kept epoch 1
    assert load_checkpoint(tmp_path / "m.pt").card["best_epoch"] == 2


def test_small_validation_warns(tmp_path):
    data = make_identity_folders(tmp_path / "ids", n_ids=6, per_id=4, size=20)
    with pytest.warns(TrainingWarning, match="--val-data"):
        siamsearch.train(data, tmp_path / "m.pt", epochs=1, val_fraction=0.34, seed=0, **FAST)


def test_val_data_validates_on_a_separate_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(selection, "MIN_VAL_IDENTITIES", 3)
    monkeypatch.setattr(selection, "MIN_VAL_IMAGES", 10)
    data = make_identity_folders(tmp_path / "ids", n_ids=4, per_id=4, size=20)
    val = make_identity_folders(tmp_path / "val", n_ids=3, per_id=4, size=20, seed=5)
    for d in val.iterdir():
        d.rename(val / f"other_{d.name}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingWarning)
        result = siamsearch.train(data, tmp_path / "m.pt", epochs=1, val_data=val, seed=0, **FAST)
    card = load_checkpoint(result.path).card
    assert len(card["train_identities"]) == 4  # all of --data trains
    assert sorted(card["val_identities"]) == ["other_id_0", "other_id_1", "other_id_2"]
    assert card["hyperparameters"]["val_data"] == str(val)
    with pytest.warns(TrainingWarning, match="also occur in the training data"):
        siamsearch.train(data, tmp_path / "m2.pt", epochs=1, val_data=data, seed=0, **FAST)
