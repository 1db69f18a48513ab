"""Issue 16 item 4: calibrate keeps the record it replaces, refuses to replace a supported record with an
unsupported one without --force, and shows old beside new."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from querylayer import named_identity_folders, untrained_model
from siamsearch.cli import main
from siamsearch.core.checkpoint import load_checkpoint
from siamsearch.core.errors import SiamsearchError
from siamsearch.evaluation.calibrate import calibrate
from siamsearch.query.record import is_supported

pytestmark = pytest.mark.filterwarnings("ignore::siamsearch.query.record.CalibrationWarning")

MANY = [f"p{k:02d}" for k in range(10)]


@pytest.fixture
def model(tmp_path):
    return untrained_model(tmp_path / "m.pt", train_identities=["zed"])


def test_supported_record_is_not_replaced_by_a_weak_one(model, tmp_path):
    good_data = named_identity_folders(tmp_path / "good", MANY, per_id=3)
    wrong = named_identity_folders(tmp_path / "wrong", ["w1", "w2", "w3", "w4"], per_id=3, seed=3)
    good = calibrate(model, good_data, target_far=0.1, pairs=1000, seed=0)
    assert is_supported(good) and "previous_records" not in good
    # the wrong folder: 4 identities; refused, and the stored record is untouched
    with pytest.raises(SiamsearchError, match="--force") as e:
        calibrate(model, wrong, target_far=0.1, pairs=1000, seed=0)
    assert "NOT replaced" in str(e.value) and str(good["threshold"])[:5] in str(e.value)
    assert load_checkpoint(model).calibration == good
    r = CliRunner().invoke(main, ["calibrate", "--model", str(model), "--data", str(wrong), "--target-far", "0.1",
                                  "--pairs", "1000"])
    assert r.exit_code == 2 and "--force" in r.output and "held-out identities" in r.output
    # --force replaces it, keeping the old record in the new one's history, and shows both
    r = CliRunner().invoke(main, ["calibrate", "--model", str(model), "--data", str(wrong), "--target-far", "0.1",
                                  "--pairs", "1000", "--force"])
    assert r.exit_code == 0, r.output
    assert "replaced the calibration of" in r.output and "before" in r.output and "now" in r.output
    rec = load_checkpoint(model).calibration
    assert not is_supported(rec) and rec["previous_records"][0] == good
    # a further calibration keeps both, newest first
    again = calibrate(model, good_data, target_far=0.1, pairs=1000, seed=1)
    assert [p["data"]["path"] for p in again["previous_records"]] == [str(wrong), str(good_data)]
    assert all("previous_records" not in p for p in again["previous_records"])


def test_json_out_keeps_history_too(model, tmp_path):
    good_data = named_identity_folders(tmp_path / "good", MANY, per_id=3)
    out = tmp_path / "cal.json"
    first = calibrate(model, good_data, target_far=0.1, pairs=500, seed=0, out=out)
    second = calibrate(model, good_data, rule="eer", pairs=500, seed=0, out=out)
    assert json.loads(out.read_text())["previous_records"][0] == first
    assert second["previous_records"][0]["rule"] == "far"


def test_compare_lines_keep_long_values_apart():
    """A value as long as a column (a data path) stays separated from the next column by two spaces."""
    from siamsearch.query.record import compare_lines

    path = "../shared/data/fashion-mnist" + "/x" * 20
    old = {"created": "2026-12-03T06:13:31+00:00", "rule": "far", "target_far": 0.001, "threshold": 0.75,
           "data": {"path": path}}
    new = {**old, "created": "2026-12-03T08:31:42+00:00", "threshold": 0.8}
    lines = compare_lines(old, new)
    assert lines[0].split() == ["before", "now"]
    data = next(line for line in lines if line.strip().startswith("data"))
    assert data.split() == ["data", path, path]
    starts = {line.index(line.split()[-1], 30) for line in lines[1:] if line.strip().startswith(("created", "threshold"))}
    assert len(starts) == 1  # the "now" column lines up
