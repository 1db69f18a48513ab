import numpy as np
import pytest
import torch
from click.testing import CliRunner

import siamsearch
from siamsearch.core.checkpoint import load_checkpoint
from siamsearch.cli import main
from siamsearch.core.errors import SiamsearchError

from conftest import make_identity_folders

FAST = dict(input_size=16, embedding_dim=8, batch_size=8, m_per_class=2, val_fraction=0.34, val_pairs=50,
            progress=False)


@pytest.fixture
def data(tmp_path):
    return make_identity_folders(tmp_path / "ids", n_ids=6, per_id=4, size=20)


@pytest.mark.parametrize("loss", ["contrastive", "triplet", "arcface"])
def test_train_writes_loadable_checkpoint(data, tmp_path, loss):
    out = tmp_path / f"{loss}.pt"
    result = siamsearch.train(data, out, loss=loss, epochs=2, seed=1, **FAST)
    ck = load_checkpoint(out)
    assert result.fingerprint == ck.fingerprint
    assert len(ck.card["history"]) == 2 and {"val_auc", "val_precision_at_1", "loss"} <= set(ck.card["history"][0])
    assert ck.card["best_epoch"] == result.best_epoch
    assert ck.card["hyperparameters"]["loss"] == loss
    assert ck.card["hyperparameters"]["mining"] == ("hard" if loss == "triplet" else None)
    h = ck.card["history"][-1]
    assert 0 <= h["val_genuine_distance"] <= 2 and 0 <= h["val_impostor_distance"] <= 2
    assert set(ck.card["train_identities"]).isdisjoint(ck.card["val_identities"])
    assert ck.card["data"]["digest"] and ck.card["versions"]["torch"] == torch.__version__
    assert ck.card["precision"] == {"train": "fp32", "validation": "fp32"}  # CPU training
    assert not (tmp_path / f"{loss}.pt.last").exists()
    model = siamsearch.load_model(out)
    paths = sorted(str(p) for p in data.rglob("*.png"))[:3]
    e1, e2 = model.embed(paths), siamsearch.load_model(out).embed(paths)
    assert e1.shape == (3, 8) and np.array_equal(e1, e2)
    if loss == "arcface":
        assert "weight" in ck.head_state


def test_embed_from_backbone_trains_and_embeds_with_features(data, tmp_path):
    out = tmp_path / "bb.pt"
    siamsearch.train(data, out, loss="triplet", epochs=1, seed=1, embed_from="backbone", **FAST)
    model = siamsearch.load_model(out)
    assert model.config.embed_from == "backbone" and model.config.embedding_dim == 8
    paths = sorted(str(p) for p in data.rglob("*.png"))[:4]
    emb = model.embed(paths)
    assert emb.shape == (4, model.dim) and model.dim == 1024  # smallcnn: 256 channels x 2 x 2
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # the same through the CLI option, and a gallery of it has the feature dimension
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(tmp_path / "cli.pt"), "--epochs", "1",
                                  "--input-size", "16", "--batch-size", "8", "--m-per-class", "2",
                                  "--embed-from", "backbone", "--json"])
    assert r.exit_code == 0, r.output
    assert siamsearch.load_model(tmp_path / "cli.pt").dim == 1024
    from siamsearch.gallery import Gallery

    g = Gallery.build(data, model, out=tmp_path / "gal", progress=False)
    assert g.dim == 1024 and len(g) == 24


def test_same_seed_same_model(data, tmp_path):
    a = siamsearch.train(data, tmp_path / "a.pt", epochs=1, seed=3, **FAST)
    b = siamsearch.train(data, tmp_path / "b.pt", epochs=1, seed=3, **FAST)
    c = siamsearch.train(data, tmp_path / "c.pt", epochs=1, seed=4, **FAST)
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint


def test_resume_continues_interrupted_run(data, tmp_path, monkeypatch):
    full = siamsearch.train(data, tmp_path / "full.pt", epochs=3, seed=2, **FAST)

    import siamsearch.training.trainer as trainer

    calls = {"n": 0}
    real_validate = trainer._validate

    def crash_after_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(trainer, "_validate", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        siamsearch.train(data, tmp_path / "part.pt", epochs=3, seed=2, **FAST)
    assert (tmp_path / "part.pt.last").exists()
    monkeypatch.setattr(trainer, "_validate", real_validate)
    resumed = siamsearch.train(data, tmp_path / "part.pt", epochs=3, seed=2, resume=True, **FAST)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[-1]["loss"] == pytest.approx(full.history[-1]["loss"], rel=1e-4)
    with pytest.raises(SiamsearchError, match="finished run"):
        siamsearch.train(data, tmp_path / "part.pt", epochs=3, seed=2, resume=True, **FAST)


def test_resume_with_other_options_is_refused(data, tmp_path, monkeypatch):
    import siamsearch.training.trainer as trainer

    real_validate, calls = trainer._validate, []

    def crash_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(trainer, "_validate", crash_second)
    with pytest.raises(KeyboardInterrupt):
        siamsearch.train(data, tmp_path / "m.pt", epochs=2, seed=2, **FAST)
    with pytest.raises(SiamsearchError, match="other data or options"):
        siamsearch.train(data, tmp_path / "m.pt", epochs=2, seed=9, resume=True, **FAST)


def test_too_few_identities_is_a_clear_error(tmp_path):
    d = make_identity_folders(tmp_path / "one", n_ids=1, per_id=4)
    with pytest.raises(SiamsearchError, match="at least 2 identities"):
        siamsearch.train(d, tmp_path / "m.pt", epochs=1, **FAST)


def test_unknown_mining_is_a_clear_error(data, tmp_path):
    with pytest.raises(SiamsearchError, match="mining"):
        siamsearch.train(data, tmp_path / "m.pt", loss="contrastive", mining="semi-hard", epochs=1, **FAST)


def test_cli_train_and_bad_input(data, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.pt"
    r = runner.invoke(main, ["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--input-size", "16",
                             "--embedding-dim", "8", "--batch-size", "8", "--m-per-class", "2", "--val-fraction", "0.34",
                             "--json"])
    assert r.exit_code == 0, r.output
    assert '"fingerprint"' in r.output and out.exists()
    r = runner.invoke(main, ["train", "--data", str(tmp_path / "nope"), "--out", str(out)])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = runner.invoke(main, ["train", "--data", str(data), "--out", str(out), "--loss", "hinge"])
    assert r.exit_code == 2 and "hinge" in r.output


def test_time_budget_stops_training(data, tmp_path):
    result = siamsearch.train(data, tmp_path / "b.pt", epochs=500, seed=0, max_minutes=0.05, **FAST)
    assert 1 <= len(result.history) < 500
    assert result.seconds < 60


def test_lr_factor_warms_up_then_decays():
    from siamsearch.training.trainer import lr_factor

    assert lr_factor(0.05, 0.1) == pytest.approx(0.5)
    assert lr_factor(0.1, 0.1) == pytest.approx(1.0)
    assert lr_factor(0.55, 0.1) == pytest.approx(0.5)
    assert lr_factor(1.0, 0.1) == pytest.approx(0.0, abs=1e-12)


def test_faces_preset_sets_the_recipe_and_is_recorded(tmp_path):
    colour = make_identity_folders(tmp_path / "faces", n_ids=5, per_id=3, size=24, mode="RGB")
    (colour / "lonely").mkdir()
    from PIL import Image

    Image.new("RGB", (30, 24), (200, 40, 40)).save(colour / "lonely" / "one.png")  # a singleton, not square
    out = tmp_path / "faces.pt"
    result = siamsearch.train(colour, out, preset="faces", input_size=16, embedding_dim=8, batch_size=8, epochs=1,
                              steps_per_epoch=2, val_fraction=0.0, progress=False)
    ck = load_checkpoint(out)
    cfg = ck.config
    assert (cfg.crop, cfg.resize, cfg.augmentation, cfg.hflip, cfg.in_channels) == ((0.5,), "short_side", "photo", True, 3)
    hyper = ck.card["hyperparameters"]
    assert ck.card["preset"] == hyper["preset"] == "faces" and hyper["preset_source"] == "given"
    assert hyper["loss"] == "triplet" and hyper["singletons"] and hyper["crop"] == [0.5]
    assert "lonely" in ck.card["train_identities"]
    assert result.best_epoch == 1
    # an explicit option wins over the preset; crop 1 means the whole image
    siamsearch.train(colour, tmp_path / "p.pt", preset="faces", loss="cosface", crop=1.0, input_size=16,
                     embedding_dim=8, batch_size=8, epochs=1, steps_per_epoch=1, val_fraction=0.0, progress=False)
    ck = load_checkpoint(tmp_path / "p.pt")
    assert ck.config.crop is None and ck.card["hyperparameters"]["loss"] == "cosface"
    assert ck.head_state["weight"].shape[0] == 6  # a class per training identity, the singleton included


def test_preset_is_guessed_from_the_images(data, tmp_path):
    out = tmp_path / "grey.pt"
    siamsearch.train(data, out, epochs=1, steps_per_epoch=1, **FAST)
    ck = load_checkpoint(out)
    assert ck.card["preset"] == "characters" and ck.card["hyperparameters"]["preset_source"].startswith("guessed")
    assert (ck.config.augmentation, ck.config.hflip, ck.config.resize) == ("affine", False, "short_side")
    assert ck.card["hyperparameters"]["loss"] == "triplet"
    with pytest.raises(SiamsearchError, match="preset"):
        siamsearch.train(data, out, preset="birds", epochs=1, **FAST)


def test_without_epochs_a_small_folder_gets_the_minimum_steps(data, tmp_path, monkeypatch):
    import siamsearch.training.schedule as schedule

    monkeypatch.setattr(schedule, "MIN_STEPS", 30)  # the rule, at a size a test can afford
    result = siamsearch.train(data, tmp_path / "auto.pt", seed=0, **FAST)
    ck = load_checkpoint(tmp_path / "auto.pt")
    hyper = ck.card["hyperparameters"]
    assert hyper["epochs"] == schedule.AUTO_EPOCHS and hyper["steps_per_epoch"] * hyper["epochs"] >= 30
    assert len(result.history) == schedule.AUTO_EPOCHS
    assert result.history[-1]["lr"] < 0.05 * ck.card["hyperparameters"]["lr"]  # the schedule ran to its end


def test_log_dir_writes_tensorboard_scalars_and_projector(data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = tmp_path / "tb"
    siamsearch.train(data, tmp_path / "tb.pt", epochs=2, steps_per_epoch=10, log_dir=logs, **FAST)
    acc = EventAccumulator(str(logs))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/auc", "val/precision_at_1", "val/genuine_distance",
            "val/impostor_distance"} <= tags
    assert len(acc.Scalars("val/auc")) == 2
    projector = (logs / "projector_config.pbtxt").read_text()
    assert "sprite" in projector and "metadata" in projector
