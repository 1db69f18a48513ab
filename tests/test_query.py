"""Identification: `siamsearch query` JSON against brute-force search, open set (unknown for an
identity absent from the gallery), and every model / calibration mismatch as a clear exit-2 error."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from querylayer import doc_json_example, json_shape, named_identity_folders, untrained_model
from siamsearch.core.checkpoint import load_checkpoint, write_calibration
from siamsearch.cli import main
from siamsearch.core.embedder import load_model
from siamsearch.core.errors import FingerprintMismatch, SiamsearchError
from siamsearch.gallery import Gallery
from siamsearch.query.identification import UNKNOWN, identify
from siamsearch.core.images import list_images

KNOWN = ["ann", "bob", "cat"]
DOCS_QUERY = Path(__file__).resolve().parents[1] / "docs" / "query.md"


@pytest.fixture
def setup(tmp_path):
    model = untrained_model(tmp_path / "m.pt", train_identities=["zed"])
    people = named_identity_folders(tmp_path / "people", KNOWN + ["dan"], per_id=3)
    gallery_dir = tmp_path / "gallery"
    for name in KNOWN:  # the gallery holds ann, bob, cat; dan stays out of it
        shutil.copytree(people / name, gallery_dir / name)
    Gallery.build(gallery_dir, model, out=tmp_path / "index" / "gallery", workers=0, progress=False).close()
    return {"model": model, "people": people, "gallery": gallery_dir, "index": tmp_path / "index" / "gallery"}


def _brute_force(model_path, gallery_dir, queries, k):
    """Exact search by numpy over embeddings computed here: (paths, labels, distances) per query."""
    net = load_model(model_path)
    files = [str(p) for p in list_images(gallery_dir)]
    g = net.embed(files).astype(np.float64)
    q = net.embed([str(p) for p in queries]).astype(np.float64)
    d = np.sqrt(((q[:, None, :] - g[None, :, :]) ** 2).sum(-1))
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return [([files[j] for j in row], [files[j].split("/")[-2] for j in row], d[i, row]) for i, row in enumerate(order)]


def test_query_json_matches_brute_force(setup):
    queries = [setup["people"] / "bob" / "img_1.png", setup["people"] / "dan" / "img_0.png"]
    r = CliRunner().invoke(main, ["query", *map(str, queries), "--index", str(setup["index"]), "-k", "4", "--json"])
    assert r.exit_code == 0, r.output
    js = json.loads(r.stdout)["answers"]
    assert isinstance(js, list) and len(js) == 2
    truth = _brute_force(setup["model"], setup["gallery"], queries, 4)
    for item, q, (paths, labels, dist) in zip(js, queries, truth):
        assert set(item) >= {"query", "prediction", "neighbors"} and item["query"] == str(q)
        nb = item["neighbors"]
        assert [n["rank"] for n in nb] == [1, 2, 3, 4]
        assert all(set(n) == {"rank", "path", "label", "distance"} for n in nb)
        got = [n["distance"] for n in nb]
        assert got == sorted(got)
        np.testing.assert_allclose(got, dist, atol=1e-4)
        assert item["prediction"] == nb[0]["label"]                    # closed set: nearest neighbour's label
        assert {n["path"] for n in nb if n["distance"] < dist[-1] - 1e-4} <= set(paths)
    assert js[0]["prediction"] == "bob" and js[0]["neighbors"][0]["distance"] < 1e-5  # the image itself


def test_docs_query_json_example_has_the_printed_shape(setup):
    """docs/query.md's `query --json` example has exactly the keys and nesting the command prints."""
    shown = doc_json_example(DOCS_QUERY, "query")
    r = CliRunner().invoke(main, ["query", str(setup["people"] / "bob" / "img_1.png"), "--index",
                                  str(setup["index"]), "-k", "2", "--json"])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)
    assert json_shape(shown) == json_shape(printed)
    assert list(shown) == list(printed)  # same key order, as json.dumps writes it
    assert len(shown["answers"][0]["neighbors"]) == 2 and shown["k"] == 2


def test_open_set_unknown_for_absent_identity(setup):
    dan = sorted((setup["people"] / "dan").glob("*.png"))
    known = [setup["gallery"] / "cat" / "img_2.png"]
    nearest_dan = min(d[0] for _, _, d in _brute_force(setup["model"], setup["gallery"], dan, 1))
    assert nearest_dan > 1e-4  # dan's images are not in the gallery, so nothing is at distance ~0
    t = nearest_dan / 2        # every dan image is farther than t; a gallery image itself is at 0
    rep = identify(setup["index"], [*dan, *known], k=2, threshold=t)
    assert rep.open_set and rep.threshold_source == "explicit"
    assert [a.prediction for a in rep.answers] == [UNKNOWN] * len(dan) + ["cat"]
    assert all(a.neighbors for a in rep.answers)  # neighbours are still listed for unknowns
    # without open set the same queries get a (wrong) known label
    closed = identify(setup["index"], dan, k=1)
    assert all(a.prediction in KNOWN for a in closed.answers) and closed.threshold is None
    # --open-set with the model's calibration: the same answers, and the threshold's source is named
    fp = load_checkpoint(setup["model"]).fingerprint
    write_calibration(setup["model"], {"kind": "siamsearch.calibration", "threshold": t, "rule": "far",
                                       "model_fingerprint": fp})
    r = CliRunner().invoke(main, ["query", str(setup["people"] / "dan"), str(known[0]), "--index",
                                  str(setup["index"]), "--open-set", "--json"])
    assert r.exit_code == 0, r.output
    assert [x["prediction"] for x in json.loads(r.stdout)["answers"]] == [UNKNOWN] * len(dan) + ["cat"]
    txt = CliRunner().invoke(main, ["query", str(dan[0]), "--index", str(setup["index"]), "--open-set"]).output
    assert "unknown" in txt and "threshold from calibration" in txt


def test_open_set_needs_a_threshold(setup):
    with pytest.raises(SiamsearchError, match="siamsearch calibrate"):
        identify(setup["index"], [setup["people"] / "dan"], open_set=True)
    r = CliRunner().invoke(main, ["query", str(setup["people"] / "dan"), "--index", str(setup["index"]), "--open-set"])
    assert r.exit_code == 2 and "--threshold" in r.output and "Traceback" not in r.output


def test_model_mismatches_are_clear_errors(setup, tmp_path):
    runner = CliRunner()
    q = str(setup["people"] / "ann" / "img_0.png")
    other = untrained_model(tmp_path / "other.pt", seed=7)
    fp, other_fp = load_checkpoint(setup["model"]).fingerprint, load_checkpoint(other).fingerprint
    # --model of another model
    with pytest.raises(FingerprintMismatch):
        identify(setup["index"], [q], model=other)
    r = runner.invoke(main, ["query", q, "--index", str(setup["index"]), "--model", str(other)])
    assert r.exit_code == 2 and fp in r.output and other_fp in r.output and "Traceback" not in r.output
    # the recorded checkpoint moved: a clear error, then --model with the moved file works
    moved = tmp_path / "moved.pt"
    setup["model"].rename(moved)
    r = runner.invoke(main, ["query", q, "--index", str(setup["index"])])
    assert r.exit_code == 2 and "--model" in r.output
    r = runner.invoke(main, ["query", q, "--index", str(setup["index"]), "--model", str(moved), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["answers"][0]["prediction"] == "ann"
    # another model now sits at the recorded path
    shutil.copy(other, setup["model"])
    r = runner.invoke(main, ["query", q, "--index", str(setup["index"])])
    assert r.exit_code == 2 and fp in r.output and other_fp in r.output
    # a calibration record of another model is refused for the open-set threshold
    (tmp_path / "other.json").write_text(json.dumps({"kind": "siamsearch.calibration", "threshold": 0.5,
                                                     "model_fingerprint": other_fp}))
    r = runner.invoke(main, ["query", q, "--index", str(setup["index"]), "--model", str(moved), "--open-set",
                             "--calibration", str(tmp_path / "other.json")])
    assert r.exit_code == 2 and "calibrat" in r.output and other_fp in r.output


def test_folder_with_unreadable_file_and_csv_out(setup, tmp_path):
    qdir = tmp_path / "queries"
    shutil.copytree(setup["people"] / "dan", qdir)
    (qdir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "res.csv"
    r = CliRunner().invoke(main, ["query", str(qdir), "--index", str(setup["index"]), "-k", "2", "--out", str(out),
                                  "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    assert "broken.png" in r.stderr and "->" in r.stdout
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 3 * 2 + 1
    bad = [x for x in rows if x["query"].endswith("broken.png")]
    assert len(bad) == 1 and bad[0]["error"] and bad[0]["rank"] == ""
    rep = identify(setup["index"], [qdir], k=2)
    assert [a.query.split("/")[-1] for a in rep.answers] == ["broken.png", "img_0.png", "img_1.png", "img_2.png"]
    assert rep.answers[0].error and rep.answers[0].prediction is None and "error" in rep.answers[0].to_dict()


def test_text_output_of_an_unlabelled_gallery_and_an_explicit_threshold(setup, tmp_path):
    """The text answer printed Python's `None` for a match in a gallery built with --labels none, and the
    open-set line said "threshold from explicit"."""
    out = tmp_path / "index" / "plain"
    Gallery.build(setup["gallery"], setup["model"], out=out, labels="none", workers=0, progress=False).close()
    own = setup["gallery"] / "cat" / "img_2.png"  # a gallery image: at distance 0, a match
    r = CliRunner().invoke(main, ["query", str(own), "--index", str(out), "-k", "1", "--threshold", "0.5"])
    assert r.exit_code == 0, r.output
    assert "threshold from --threshold (explicit)" in r.stdout
    assert f"{own}  ->  (a match without a label)  (nearest 0.0000)" in r.stdout and "None" not in r.stdout
    assert json.loads(CliRunner().invoke(main, ["query", str(own), "--index", str(out), "--json"]).stdout
                      )["answers"][0]["prediction"] is None  # the JSON keeps null
