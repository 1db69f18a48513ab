"""Issue 16 items 8 and 9: --calibration always checked and implying the open set, folder-query summary,
verify --pairs exit status, to_json text, library warnings as one-line notes."""
from __future__ import annotations

import json
import shutil
import warnings

import pytest
from click.testing import CliRunner

from querylayer import named_identity_folders, untrained_model
from siamsearch.cli import main
from siamsearch.core.checkpoint import load_checkpoint
from siamsearch.core.embedder import load_model
from siamsearch.core.errors import SiamsearchError
from siamsearch.gallery import Gallery
from siamsearch.query.identification import UNKNOWN, identify
from siamsearch.query.verification import verify, verify_pairs

KNOWN = ["ann", "bob", "cat"]


@pytest.fixture
def setup(tmp_path):
    model = untrained_model(tmp_path / "m.pt", train_identities=["zed"])
    people = named_identity_folders(tmp_path / "people", KNOWN + ["dan"], per_id=3)
    gallery_dir = tmp_path / "gallery"
    for name in KNOWN:
        shutil.copytree(people / name, gallery_dir / name)
    Gallery.build(gallery_dir, model, out=tmp_path / "index" / "g", workers=0, progress=False).close()
    return {"model": model, "people": people, "index": tmp_path / "index" / "g"}


def _record(fp: str, threshold: float) -> dict:
    return {"kind": "siamsearch.calibration", "threshold": threshold, "rule": "far", "model_fingerprint": fp}


def test_calibration_file_is_always_checked(setup, tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("a,b,is_same\nx.png,y.png,1\n")
    q = str(setup["people"] / "ann" / "img_0.png")
    # not a calibration at all: refused even without --open-set (it used to be ignored)
    r = CliRunner().invoke(main, ["query", q, "--index", str(setup["index"]), "--calibration", str(csv)])
    assert r.exit_code == 2 and "not a siamsearch checkpoint" in r.output, r.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "siamsearch.calibration", "threshold": 7, "model_fingerprint": "x"}))
    with pytest.raises(SiamsearchError, match="not a usable calibration record"):
        identify(setup["index"], [q], calibration=bad)


def test_calibration_implies_open_set_and_excludes_threshold(setup, tmp_path):
    fp = load_checkpoint(setup["model"]).fingerprint
    rec = tmp_path / "cal.json"
    rec.write_text(json.dumps(_record(fp, 1e-9)))  # nothing is that close: every answer is unknown
    dan = str(setup["people"] / "dan")
    report = identify(setup["index"], [dan], calibration=rec)
    assert report.open_set and report.threshold_source == "calibration"
    assert all(a.prediction == UNKNOWN for a in report.answers)
    with pytest.raises(SiamsearchError, match="not both"):
        identify(setup["index"], [dan], calibration=rec, threshold=0.5)


def test_folder_query_summary(setup, tmp_path):
    qdir = tmp_path / "q"
    for name in ("ann", "dan"):
        shutil.copytree(setup["people"] / name, qdir / name)
    (qdir / "ann" / "broken.png").write_bytes(b"not an image")
    report = identify(setup["index"], [qdir], k=1, threshold=2.0)  # everything matches: dan is wrong
    s = report.summary()
    assert s == {"queries": 7, "answered": 6, "not_read": 1, "unknown": 0, "labelled": 6,
                 "correct": sum(a.prediction == "ann" for a in report.answers if a.expected == "ann")}
    assert all(a.expected in ("ann", "dan") for a in report.answers)
    unknown_all = identify(setup["index"], [qdir], k=1, threshold=0.0)
    # ann's images are gallery images (distance 0 <= 0: ann), dan is not in the gallery ("unknown"): all correct
    assert unknown_all.summary()["correct"] == 6 and unknown_all.summary()["unknown"] == 3
    r = CliRunner().invoke(main, ["query", str(qdir), "--index", str(setup["index"]), "-k", "1"])
    assert r.exit_code == 0, r.output
    assert "7 queries: 6 answered, 1 not read; " in r.output and "of 6 labelled queries correct" in r.output


def test_to_json_is_text_and_to_dict_the_structure(setup):
    q = str(setup["people"] / "ann" / "img_0.png")
    report = identify(setup["index"], [q], k=2)
    text = report.to_json()
    assert isinstance(text, str) and json.loads(text) == report.to_dict()
    assert report.to_dict()["answers"][0]["query"] == q and report.to_dict()["summary"]["answered"] == 1
    r = CliRunner().invoke(main, ["query", q, "--index", str(setup["index"]), "-k", "2", "--json"])
    assert json.loads(r.stdout) == json.loads(text)
    net = load_model(setup["model"])
    v = verify(net, q, q, threshold=0.5)
    assert json.loads(v.to_json()) == v.to_dict()


def test_verify_pairs_with_nothing_scored_exits_non_zero(setup, tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("a,b,is_same\nmissing1.png,missing2.png,1\nmissing3.png,missing1.png,0\n")
    r = CliRunner().invoke(main, ["verify", "--pairs", str(csv), "--model", str(setup["model"]), "--threshold", "1"])
    assert r.exit_code == 2 and "none of the 2 pairs" in r.output, r.output
    net = load_model(setup["model"])
    report = verify_pairs(net, csv, threshold=1.0)
    assert json.loads(report.to_json())["n_failed"] == 2


def test_library_warnings_are_one_line_notes(tmp_path):
    from siamsearch.cli import show_note

    runner = CliRunner()
    import click

    @click.command()
    def warn_cmd():
        warnings.warn("something to know\n  on two lines", UserWarning)

    main.add_command(warn_cmd, "warn-test")
    try:
        r = runner.invoke(main, ["warn-test"])
    finally:
        main.commands.pop("warn-test")
    assert r.exit_code == 0
    assert "note: something to know on two lines" in r.output
    assert ".py:" not in r.output and "UserWarning" not in r.output
    assert callable(show_note)
