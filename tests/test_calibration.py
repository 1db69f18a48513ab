"""Calibration: the chosen threshold against brute force and scikit-learn, the record, held-out
identities, the impostor-count warning, and fingerprint refusals (API and CLI)."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import binomtest
from sklearn.metrics import roc_curve as sk_roc_curve

from querylayer import named_identity_folders, untrained_model
from siamsearch.query.record import CalibrationWarning, binomial_ci, check_record
from siamsearch.evaluation.calibrate import calibrate, calibration_pairs, choose_threshold, held_out_view
from siamsearch.query.verification import verify
from siamsearch.core.checkpoint import load_checkpoint, save_checkpoint
from siamsearch.cli import main
from siamsearch.data import open_dataset
from siamsearch.core.embedder import load_model
from siamsearch.core.errors import FingerprintMismatch, SiamsearchError

TRAIN = ["ann", "bob", "cat"]
HELD = ["dan", "eve", "fay", "gus", "hal"]
# tiny data: the "few identities" / "too few impostor pairs" warnings are expected (tested where they matter)
pytestmark = pytest.mark.filterwarnings("ignore::siamsearch.query.record.CalibrationWarning")


@pytest.fixture
def data(tmp_path):
    return named_identity_folders(tmp_path / "people", TRAIN + HELD, per_id=6)


@pytest.fixture
def model(tmp_path):
    return untrained_model(tmp_path / "m.pt", train_identities=TRAIN)


def _random_pairs(seed, n=800, decimals=None):
    rng = np.random.default_rng(seed)
    s = rng.random(n) < 0.5
    d = np.where(s, rng.normal(0.6, 0.2, n), rng.normal(1.0, 0.2, n)).clip(0, 2)
    return (np.round(d, decimals) if decimals else d), s


def _brute_far_threshold(d, s, target):
    """Largest observed distance t with #{impostor d <= t} / #impostor <= target (None: accept nothing)."""
    imp = np.sort(d[~s])
    best = None
    for t in np.unique(d):
        if np.searchsorted(imp, t, side="right") / imp.size <= target:
            best = t
    return best


@pytest.mark.parametrize("decimals", [None, 2])
@pytest.mark.parametrize("target", [0.001, 0.01, 0.05, 0.2])
def test_far_rule_matches_brute_force_and_sklearn(decimals, target):
    d, s = _random_pairs(seed=int(target * 1000), decimals=decimals)
    rec = choose_threshold(d, s, rule="far", target_far=target)
    expected = _brute_far_threshold(d, s, target)
    if expected is None:
        assert rec["threshold"] < d.min() and rec["far"] == 0 and rec["tar"] == 0
    else:
        assert rec["threshold"] == pytest.approx(expected, abs=0)
    # the achieved FAR is counted on the pairs, stays under the target, and the next distance would break it
    accepted = d <= rec["threshold"]
    assert rec["far"] == accepted[~s].mean() <= target
    assert rec["tar"] == accepted[s].mean()
    nxt = d[d > rec["threshold"]].min()
    assert (d[~s] <= nxt).mean() > target
    # scikit-learn: the last ROC point with FPR <= target, read with scores = -distance
    fpr, tpr, thr = sk_roc_curve(s, -d, drop_intermediate=False)
    i = np.flatnonzero(fpr <= target)[-1]
    assert rec["tar"] == pytest.approx(tpr[i]) and rec["far"] == pytest.approx(fpr[i])
    if i > 0:
        assert rec["threshold"] == pytest.approx(-thr[i])
    assert rec["n_genuine"] == s.sum() and rec["n_impostor"] == (~s).sum()
    assert rec["target_supported"] == ((~s).sum() >= 3 / target - 1e-9)


def test_eer_and_max_accuracy_rules():
    d, s = _random_pairs(seed=3)
    acc = choose_threshold(d, s, rule="max-accuracy")
    grid = np.unique(d)
    brute = max(np.mean((d <= t) == s) for t in grid)
    assert acc["accuracy"] == pytest.approx(brute) and acc["target_far"] is None
    eer = choose_threshold(d, s, rule="eer")
    far, frr = (d[~s] <= eer["threshold"]).mean(), (d[s] > eer["threshold"]).mean()
    assert abs(far - frr) <= 2.0 / min(s.sum(), (~s).sum())  # the rates cross at the EER threshold
    assert eer["eer"] == pytest.approx((far + frr) / 2, abs=2.0 / min(s.sum(), (~s).sum()))
    with pytest.raises(SiamsearchError, match="rule"):
        choose_threshold(d, s, rule="median")


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (1, 3000), (57, 400)])
def test_clopper_pearson_interval(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert binomial_ci(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert binomial_ci(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10))


def test_calibrate_end_to_end(model, data):
    with pytest.warns(CalibrationWarning, match="impostor pairs"):  # 1e-3 needs 3,000 impostor pairs
        rec = calibrate(model, data, rule="far", target_far=0.05, pairs=400, seed=1)
        calibrate(model, data, target_far=1e-3, pairs=400, seed=1, out=model.parent / "strict.json")
    # stored in the model, and exactly what was returned
    assert load_checkpoint(model).calibration == rec
    assert load_model(model).calibration["threshold"] == rec["threshold"]
    # the record holds what the issue asks for
    for key in ("threshold", "rule", "target_far", "far", "far_ci95", "tar", "tar_ci95", "auc", "eer", "n_genuine",
                "n_impostor", "data_digest", "model_fingerprint", "created", "siamsearch_version", "ci_method"):
        assert key in rec, key
    assert rec["model_fingerprint"] == load_checkpoint(model).fingerprint
    assert rec["data_digest"] == open_dataset(data).digest()
    assert rec["data"]["excluded_training_identities"] == 3 and rec["data"]["held_out_identities"] == 5
    assert rec["far_ci95"][0] <= rec["far"] <= rec["far_ci95"][1]
    assert any("only 5 held-out identities" in w for w in rec["warnings"])  # fewer than 10: said so
    # independent check on the very pairs it saw: the threshold is the brute-force one for the target
    ds = open_dataset(data)
    held, _, _ = held_out_view(ds, {"train_identities": TRAIN})
    assert set(held.identity_names[i] for i in np.unique(held.identities)) == set(HELD)
    d, s, _ = calibration_pairs(load_model(model), held, 400, seed=1)
    assert rec["n_genuine"] == s.sum() and rec["n_impostor"] == (~s).sum()
    assert rec["threshold"] == _brute_far_threshold(d, s, 0.05)
    assert rec["far"] == (d[~s] <= rec["threshold"]).mean() <= 0.05
    # seeded: the same seed gives the same threshold
    again = calibrate(model, data, target_far=0.05, pairs=400, seed=1, out=model.parent / "again.json")
    assert again["threshold"] == rec["threshold"] and again["n_pairs"] == rec["n_pairs"]


def test_only_training_identities_is_an_error(model, tmp_path):
    only_train = named_identity_folders(tmp_path / "trainonly", TRAIN)
    with pytest.raises(SiamsearchError, match="used to train"):
        calibrate(model, only_train, pairs=100)
    r = CliRunner().invoke(main, ["calibrate", "--model", str(model), "--data", str(only_train)])
    assert r.exit_code == 2 and "--include-training-identities" in r.output
    with pytest.warns(CalibrationWarning, match="optimistic"):
        rec = calibrate(model, only_train, pairs=100, target_far=0.1, include_training_identities=True)
    assert rec["data"]["excluded_training_identities"] == 0


def test_fingerprint_mismatch_is_refused(model, data, tmp_path):
    other = untrained_model(tmp_path / "other.pt", seed=1)
    with pytest.raises(FingerprintMismatch):
        calibrate(model, data, pairs=100, target_far=0.1, out=other)
    assert load_checkpoint(other).calibration is None
    r = CliRunner().invoke(main, ["calibrate", "--model", str(model), "--data", str(data), "--pairs", "100",
                                  "--out", str(other)])
    assert r.exit_code == 2 and "Traceback" not in r.output and load_checkpoint(model).fingerprint in r.output
    # a record carried by another model's checkpoint is refused when used
    rec = calibrate(model, data, pairs=100, target_far=0.1)
    with pytest.raises(FingerprintMismatch, match="calibrate"):
        check_record(rec, load_checkpoint(other).fingerprint, "other.pt")
    ck = load_checkpoint(other)
    save_checkpoint(other, ck.config, ck.state_dict, ck.card, calibration=rec)  # smuggled past write_calibration
    with pytest.raises(FingerprintMismatch):
        verify(load_model(other), data / "dan" / "img_0.png", data / "dan" / "img_1.png")


def test_cli_table_and_json(model, data, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["calibrate", "--model", str(model), "--data", str(data), "--pairs", "300",
                             "--rule", "eer"])
    assert r.exit_code == 0, r.output
    assert "threshold" in r.output and "rule: equal error rate" in r.output and f"stored in {model}" in r.output
    out = tmp_path / "cal.json"
    r = runner.invoke(main, ["calibrate", "--model", str(model), "--data", str(data), "--pairs", "300",
                             "--target-far", "0.01", "--json", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec == json.loads(out.read_text()) and rec["rule"] == "far" and rec["target_far"] == 0.01
    assert "warning: only" in r.stderr  # 300 pairs cannot support FAR 1e-2
    r = runner.invoke(main, ["calibrate", "--model", str(model), "--data", str(data), "--target-far", "2"])
    assert r.exit_code == 2 and "target-far" in r.output


def test_record_keys_are_the_ones_docs_calibrate_md_lists(model, data):
    """docs/calibrate.md's table of the record names every key a calibration writes, and no other."""
    import re
    from pathlib import Path

    calibrate(model, data, target_far=0.05, pairs=400, seed=1)
    rec = calibrate(model, data, rule="eer", pairs=400, seed=1)  # a second one keeps the first in previous_records
    table = (Path(__file__).resolve().parents[1] / "docs" / "calibrate.md").read_text().split("| key | meaning |")[1]
    named = set()
    for row in table.splitlines()[2:]:
        if not row.startswith("|"):
            break
        named |= set(re.findall(r"`(\w+)`", row.split("|")[1]))
    assert set(rec) == named, f"undocumented: {set(rec) - named}; documented but not written: {named - set(rec)}"
