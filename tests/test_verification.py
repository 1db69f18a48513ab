"""Verification: one pair (API and CLI JSON), no invented threshold, read-only results, and
batched pairs CSVs with metrics checked against brute force and scikit-learn."""
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from querylayer import doc_json_example, json_shape, named_identity_folders, untrained_model
from siamsearch.evaluation.calibrate import calibrate
from siamsearch.cli import main
from siamsearch.core.embedder import load_model
from siamsearch.core.errors import FingerprintMismatch, SiamsearchError
from siamsearch.query.verification import VerificationResult, read_pairs_csv, verify, verify_pairs

NAMES = ["dan", "eve", "fay", "gus"]
# tiny data: the "few identities" / "too few impostor pairs" warnings are expected (tested where they matter)
pytestmark = pytest.mark.filterwarnings("ignore::siamsearch.query.record.CalibrationWarning")


@pytest.fixture
def data(tmp_path):
    return named_identity_folders(tmp_path / "people", NAMES, per_id=4)


@pytest.fixture
def model(tmp_path):
    return untrained_model(tmp_path / "m.pt", train_identities=["ann"])


def _brute_distance(net, a, b):
    e = net.embed([a, b]).astype(np.float64)
    return float(np.sqrt(((e[0] - e[1]) ** 2).sum()))


def test_no_threshold_says_how_to_get_one(model, data):
    net = load_model(model)
    with pytest.raises(SiamsearchError, match="siamsearch calibrate") as e:
        verify(net, data / "dan" / "img_0.png", data / "dan" / "img_1.png")
    assert "--threshold" in str(e.value)
    r = CliRunner().invoke(main, ["verify", str(data / "dan" / "img_0.png"), str(data / "eve" / "img_0.png"),
                                  "--model", str(model)])
    assert r.exit_code == 2 and "siamsearch calibrate" in r.output and "Traceback" not in r.output


def test_explicit_threshold_and_read_only_result(model, data):
    net = load_model(model)
    a, b = data / "dan" / "img_0.png", data / "eve" / "img_2.png"
    d = _brute_distance(net, a, b)
    for t in (d - 1e-4, d + 1e-4):
        r = verify(net, a, b, threshold=t)
        assert r.distance == pytest.approx(d, abs=1e-5) and r.is_same == (d <= t)
        assert r.threshold == t and r.threshold_source == "explicit" and r.calibration is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.is_same = True
    with pytest.raises(ValueError):  # validated on construction: the decision must follow the rule
        VerificationResult(is_same=True, distance=1.0, threshold=0.5, threshold_source="explicit")
    with pytest.raises(SiamsearchError, match="0, 2"):
        verify(net, a, b, threshold=3.0)


def test_calibrated_threshold_and_json(model, data, tmp_path):
    calibrate(model, data, pairs=200, target_far=0.1, seed=0)
    net = load_model(model)
    a, b = data / "dan" / "img_0.png", data / "dan" / "img_1.png"
    r = verify(net, a, b)
    assert r.threshold_source == "calibration" and r.threshold == net.calibration["threshold"]
    with pytest.raises(TypeError):  # the record inside the result is read-only
        r.calibration["threshold"] = 0.0
    runner = CliRunner()
    out = runner.invoke(main, ["verify", str(a), str(b), "--model", str(model), "--json"])
    assert out.exit_code == 0, out.output
    js = json.loads(out.stdout)
    assert set(js) >= {"distance", "threshold", "is_same", "calibration"}
    assert isinstance(js["is_same"], bool) and js["is_same"] == (js["distance"] <= js["threshold"])
    assert js["calibration"]["model_fingerprint"] == net.fingerprint and js["threshold"] == r.threshold
    assert js["distance"] == pytest.approx(_brute_distance(net, a, b), abs=1e-5)
    out = runner.invoke(main, ["verify", str(a), str(b), "--model", str(model), "--threshold", "0.25", "--json"])
    js = json.loads(out.stdout)
    assert js["calibration"] is None and js["threshold"] == 0.25 and js["threshold_source"] == "explicit"
    txt = runner.invoke(main, ["verify", str(a), str(b), "--model", str(model)]).output
    assert ("SAME" in txt or "DIFFERENT" in txt) and "calibration (far rule, target FAR 0.1)" in txt and "pairs" in txt
    # a calibration record of another model is refused, in the API and with exit 2 in the CLI
    other = untrained_model(tmp_path / "other.pt", seed=3)
    calibrate(other, data, pairs=200, target_far=0.1, out=tmp_path / "other.json")
    with pytest.raises(FingerprintMismatch):
        verify_pairs(net, [], calibration=tmp_path / "other.json")
    bad = runner.invoke(main, ["verify", str(a), str(b), "--model", str(model), "--calibration",
                               str(tmp_path / "other.json")])
    assert bad.exit_code == 2 and "calibrate" in bad.output and "Traceback" not in bad.output


def test_docs_verify_json_example_has_the_printed_shape(model, data):
    """docs/verify.md's `verify A B --threshold T --json` example has exactly the keys the command prints."""
    shown = doc_json_example(Path(__file__).resolve().parents[1] / "docs" / "verify.md", "verify")
    r = CliRunner().invoke(main, ["verify", str(data / "dan" / "img_0.png"), str(data / "eve" / "img_0.png"),
                                  "--model", str(model), "--threshold", "0.5", "--json"])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)
    assert json_shape(shown) == json_shape(printed) and list(shown) == list(printed)


def _write_pairs(path, rows, header=("a", "b", "is_same")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_pairs_csv_batch(model, data, tmp_path):
    (data / "broken.png").write_bytes(b"not an image")
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(30):
        p, q = rng.choice(NAMES, 2)
        rows.append((f"{p}/img_{rng.integers(4)}.png", f"{q}/img_{rng.integers(4)}.png", int(p == q)))
    rows.append(("dan/img_0.png", "broken.png", "1"))               # unreadable: reported, not a crash
    rows.append((str(data / "eve" / "img_1.png"), "eve/img_2.png", "same"))  # absolute path works too
    csv_path = _write_pairs(data / "pairs.csv", rows)
    net = load_model(model)
    thr = 0.05
    rep = verify_pairs(net, csv_path, threshold=thr, batch_size=7)
    assert len(rep.pairs) == 32 and rep.n_failed == 1
    failed = rep.pairs[30]
    assert failed.error and "broken.png" in failed.error and failed.distance is None and failed.is_same is None
    ok = [p for p in rep.pairs if p.error is None]
    files = sorted({str(data / p.a) for p in ok} | {str(data / p.b) for p in ok})
    emb = dict(zip(files, net.embed(files).astype(np.float64)))  # independent: plain embed + numpy norm
    d = np.array([np.linalg.norm(emb[str(data / p.a)] - emb[str(data / p.b)]) for p in ok])
    y = np.array([p.expected for p in ok])
    np.testing.assert_allclose([p.distance for p in ok], d, atol=1e-5)
    m = rep.metrics
    acc = (d <= thr) == y
    assert m["n_scored"] == 31 and m["accuracy"] == pytest.approx(acc.mean())
    assert m["far"] == pytest.approx((d[~y] <= thr).mean()) and m["frr"] == pytest.approx((d[y] > thr).mean())
    assert m["auc"] == pytest.approx(roc_auc_score(y, -d))
    # CLI: run from another folder (paths are relative to the CSV), with --out and --json
    out = tmp_path / "res.csv"
    r = CliRunner().invoke(main, ["verify", "--pairs", str(csv_path), "--model", str(model), "--threshold",
                                  str(thr), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.stdout and "FAR" in r.stdout and "FRR" in r.stdout and "AUC" in r.stdout
    assert "broken.png" in r.stderr
    with open(out, newline="") as f:
        got = list(csv.DictReader(f))
    assert len(got) == 32 and got[30]["error"] and got[0]["is_same"] in ("true", "false")
    r = CliRunner().invoke(main, ["verify", "--pairs", str(csv_path), "--model", str(model), "--threshold",
                                  str(thr), "--json"])
    js = json.loads(r.stdout)
    assert js["n_pairs"] == 32 and js["n_failed"] == 1 and js["metrics"]["accuracy"] == pytest.approx(m["accuracy"])
    assert js["calibration"] is None and isinstance(js["pairs"][0]["is_same"], bool)


def test_pairs_csv_without_labels_and_bad_files(model, data, tmp_path):
    csv_path = _write_pairs(data / "plain.csv", [("dan/img_0.png", "eve/img_0.png")], header=("a", "b"))
    rep = verify_pairs(load_model(model), csv_path, threshold=1.0)
    assert rep.metrics is None and rep.pairs[0].expected is None
    bad = _write_pairs(data / "bad.csv", [("dan/img_0.png", "eve/img_0.png", "maybe")])
    with pytest.raises(SiamsearchError, match="line 2"):
        read_pairs_csv(bad)
    nohead = _write_pairs(data / "nohead.csv", [("x", "y")], header=("left", "right"))
    r = CliRunner().invoke(main, ["verify", "--pairs", str(nohead), "--model", str(model), "--threshold", "1"])
    assert r.exit_code == 2 and "`a` and `b`" in r.output
    r = CliRunner().invoke(main, ["verify", "only_one.png", "--model", str(model), "--threshold", "1"])
    assert r.exit_code == 2
