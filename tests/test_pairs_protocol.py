"""The standard pairs protocol (`evaluate --pairs FILE`): LFW-format parsing on generated files,
figures against scikit-learn and an independent recomputation, the CLI, missing images."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from siamsearch.cli import main
from siamsearch.core.embedder import load_model
from siamsearch.core.errors import SiamsearchError
from siamsearch.evaluation.evaluate import evaluate
from siamsearch.evaluation.pairs_protocol import detect_pairs_format, evaluate_pairs, read_lfw_pairs, read_pairs
from siamsearch.metrics.folds import fold_accuracy, stratified_folds

PEOPLE = ["Ann_Lee", "Bo_Chen", "Cy_Diaz", "Di_Eze"]


def make_lfw(root: Path, per_person: int = 4, seed: int = 0) -> Path:
    """``root/NAME/NAME_000i.jpg``: each person a blob at its own place, with noise."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(PEOPLE):
        (root / name).mkdir(parents=True, exist_ok=True)
        cy, cx = 6 + 4 * k, 20 - 4 * k
        for i in range(1, per_person + 1):
            yy, xx = np.mgrid[:28, :28]
            img = 255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 14.0) + rng.normal(0, 12, (28, 28))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L").convert("RGB").save(
                root / name / f"{name}_{i:04d}.jpg")
    return root


def lfw_lines(n_folds: int, per: int, seed: int = 0) -> list[str]:
    """``n_folds`` blocks of ``per`` genuine then ``per`` impostor lines over PEOPLE (4 images each)."""
    rng = np.random.default_rng(seed)
    lines = [f"{n_folds}\t{per}" if n_folds > 1 else f"{per}"]
    for _ in range(n_folds):
        for _ in range(per):
            name = PEOPLE[rng.integers(len(PEOPLE))]
            i, j = rng.choice(4, 2, replace=False) + 1
            lines.append(f"{name}\t{i}\t{j}")
        for _ in range(per):
            a, b = rng.choice(len(PEOPLE), 2, replace=False)
            lines.append(f"{PEOPLE[a]}\t{rng.integers(1, 5)}\t{PEOPLE[b]}\t{rng.integers(1, 5)}")
    return lines


@pytest.fixture
def lfw(tmp_path) -> tuple[Path, Path]:
    images = make_lfw(tmp_path / "lfw-deepfunneled")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lfw_lines(4, 6)) + "\n")
    return pairs, images


# --------------------------------------------------------------------------- parsing
def test_read_lfw_pairs_folds_paths_and_labels(tmp_path):
    p = tmp_path / "pairs.txt"
    p.write_text("2\t2\nAnn_Lee\t1\t3\nBo_Chen\t2\t4\nAnn_Lee\t1\tBo_Chen\t12\nCy_Diaz\t3\tDi_Eze\t1\n"
                 "Cy_Diaz 1 2\nDi_Eze 2 3\nDi_Eze 4 Ann_Lee 2\nBo_Chen 1 Cy_Diaz 2\n\n")
    pl = read_lfw_pairs(p, tmp_path / "imgs")
    assert len(pl) == 8 and pl.format == "lfw"
    assert pl.is_same.tolist() == [True, True, False, False] * 2
    assert pl.folds.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert pl.path_a[0] == str(tmp_path / "imgs" / "Ann_Lee" / "Ann_Lee_0001.jpg")
    assert pl.path_b[2] == str(tmp_path / "imgs" / "Bo_Chen" / "Bo_Chen_0012.jpg")
    assert pl.identity_a[6] == "Di_Eze" and pl.identity_b[6] == "Ann_Lee"
    assert pl.lines.tolist() == [2, 3, 4, 5, 6, 7, 8, 9]
    with pytest.raises(ValueError):  # read-only
        pl.is_same[0] = False


def test_read_lfw_pairs_single_set_has_no_folds(tmp_path):
    p = tmp_path / "pairsDevTest.txt"
    p.write_text("\n".join(lfw_lines(1, 5)) + "\n")
    pl = read_lfw_pairs(p)  # images default to the file's folder
    assert pl.folds is None and int(pl.is_same.sum()) == 5 and len(pl) == 10
    assert Path(pl.path_a[0]).parent.parent == tmp_path


@pytest.mark.parametrize("text, match", [
    ("2 3\nAnn_Lee 1 2\n", "promises 2 x"),
    ("two\nAnn_Lee 1 2\nAnn_Lee 1 Bo_Chen 1\n", "line 1"),
    ("1\nAnn_Lee 1 2 3 4 5\nAnn_Lee 1 Bo_Chen 1\n", "line 2"),
    ("1\nAnn_Lee 1 x\nAnn_Lee 1 Bo_Chen 1\n", "line 2: image numbers"),
    ("1\nAnn_Lee 0 1\nAnn_Lee 1 Bo_Chen 1\n", "line 2: image numbers"),
    ("", "empty"),
])
def test_read_lfw_pairs_errors_name_the_line(tmp_path, text, match):
    p = tmp_path / "pairs.txt"
    p.write_text(text)
    with pytest.raises(SiamsearchError, match=match):
        read_lfw_pairs(p)


def test_detect_format_and_csv(tmp_path):
    lf = tmp_path / "p.txt"
    lf.write_text("10\t300\n")
    cs = tmp_path / "p.csv"
    cs.write_text("a,b,is_same\nx/1.png,y/2.png,1\n")
    assert detect_pairs_format(lf) == "lfw" and detect_pairs_format(cs) == "csv"
    pl = read_pairs(cs, images=tmp_path / "root")
    assert pl.path_a == (str(tmp_path / "root" / "x/1.png"),) and pl.is_same.tolist() == [True]
    assert read_pairs(cs).path_a == (str(tmp_path / "x/1.png"),)
    cs.write_text("a,b,is_same\nx/1.png,y/2.png,\n")
    with pytest.raises(SiamsearchError, match="is_same value on every row"):
        read_pairs(cs)
    with pytest.raises(SiamsearchError, match="no such pairs file"):
        read_pairs(tmp_path / "nope.txt")


# --------------------------------------------------------------------------- figures
def _independent_distances(model, pl) -> np.ndarray:
    ea, eb = model.embed(list(pl.path_a)), model.embed(list(pl.path_b))
    return np.linalg.norm(ea.astype(np.float64) - eb, axis=1)


def test_lfw_protocol_against_sklearn_and_file_folds(tiny_model, lfw, tmp_path):
    from sklearn.metrics import roc_auc_score

    pairs, images = lfw
    out = tmp_path / "report"
    m = evaluate_pairs(tiny_model, pairs, images, n_boot=20, out=out)
    pl = read_lfw_pairs(pairs, images)
    d = _independent_distances(load_model(tiny_model), pl)
    v = m["verification"]
    assert v["n_genuine"] == 24 and v["n_impostor"] == 24
    assert "over identities" in v["ci_method"]  # LFW names the people: intervals resample them (issue 16)
    assert v["auc"]["value"] == pytest.approx(roc_auc_score(pl.is_same, -d), abs=1e-6)
    cv = v["cv_accuracy"]
    assert cv["fold_source"] == "file" and cv["n_folds"] == 4 and cv["fold_sizes"] == [12] * 4
    ref = fold_accuracy(d, pl.is_same, pl.folds)
    assert cv["folds"] == pytest.approx(ref["folds"]) and cv["standard_error"] == pytest.approx(ref["standard_error"])
    assert m["dataset"]["n_images"] == len(pl.images()) <= 16  # each distinct image embedded once
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["verification"]["cv_accuracy"]["mean"] == pytest.approx(cv["mean"])
    html = (out / "report.html").read_text()
    assert "4-fold accuracy" in html and "standard error" in html and (out / "plots" / "roc.png").exists()


def test_csv_pairs_through_evaluate_use_seeded_folds(tiny_model, lfw, tmp_path):
    from sklearn.metrics import roc_auc_score

    pairs, images = lfw
    pl = read_lfw_pairs(pairs, images)
    csv = tmp_path / "pairs.csv"
    rows = [f"{Path(a).relative_to(images)},{Path(b).relative_to(images)},{'same' if s else 'different'}"
            for a, b, s in zip(pl.path_a, pl.path_b, pl.is_same)]
    csv.write_text("a,b,is_same\n" + "\n".join(rows) + "\n")
    m = evaluate(tiny_model, None, pairs=csv, images=images, seed=3, n_boot=0)
    d = _independent_distances(load_model(tiny_model), pl)
    cv = m["verification"]["cv_accuracy"]
    assert cv["fold_source"] == "seeded" and cv["n_folds"] == 10
    assert cv["folds"] == pytest.approx(fold_accuracy(d, pl.is_same, stratified_folds(pl.is_same, 10, 3))["folds"])
    assert m["verification"]["auc"]["value"] == pytest.approx(roc_auc_score(pl.is_same, -d), abs=1e-6)
    with pytest.raises(SiamsearchError, match="on its own"):
        evaluate(tiny_model, images, pairs=csv)


def test_missing_images_stop_or_are_skipped_and_counted(tiny_model, lfw):
    pairs, images = lfw
    victim = images / "Ann_Lee" / "Ann_Lee_0002.jpg"
    victim.unlink()
    (images / "Bo_Chen" / "Bo_Chen_0003.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(SiamsearchError, match="1 images of .* missing or unreadable .*Ann_Lee_0002.jpg.*--skip-missing"):
        evaluate_pairs(tiny_model, pairs, images, n_boot=0)
    pl = read_lfw_pairs(pairs, images)
    bad = {str(victim), str(images / "Bo_Chen" / "Bo_Chen_0003.jpg")}
    expected_skips = sum(a in bad or b in bad for a, b in zip(pl.path_a, pl.path_b))
    assert expected_skips > 0
    m = evaluate_pairs(tiny_model, pairs, images, n_boot=0, skip_missing=True)
    ds = m["dataset"]
    assert ds["n_pairs_skipped"] == expected_skips and ds["n_missing"] == 1 and ds["n_unreadable"] == 1
    assert ds["n_pairs_scored"] == len(pl) - expected_skips
    assert m["verification"]["n_pairs"] == len(pl) - expected_skips
    assert any("skipped" in w for w in m["warnings"])


def test_cli_evaluate_pairs_file(tiny_model, lfw, tmp_path):
    pairs, images = lfw
    runner = CliRunner()
    out = tmp_path / "cli"
    r = runner.invoke(main, ["evaluate", "--model", str(tiny_model), "--pairs", str(pairs), "--images", str(images),
                             "--bootstrap", "0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "4-fold accuracy (file folds)" in r.output and "standard error" in r.output
    assert (out / "metrics.json").exists() and (out / "report.html").exists()
    r = runner.invoke(main, ["evaluate", "--model", str(tiny_model), "--pairs", str(tmp_path / "nope.txt")])
    assert r.exit_code == 2 and "neither a number of pairs nor a pairs file" in r.output
    r = runner.invoke(main, ["evaluate", "--model", str(tiny_model), "--pairs", "5", "--data", str(images)])
    assert r.exit_code == 2 and "too few" in r.output
    r = runner.invoke(main, ["evaluate", "--model", str(tiny_model), "--pairs", str(pairs)])  # images not beside it
    assert r.exit_code == 2 and "--images DIR" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("extra, names", [
    (["--protocol", "identification"], ["--protocol identification"]),
    (["--protocol", "oneshot"], ["--protocol oneshot"]),
    (["--limit", "5"], ["--limit"]),
    (["--split", "test"], ["--split"]),
    (["--format", "idx"], ["--format idx"]),
    (["--limit", "5", "--split", "train"], ["--limit", "--split"]),
])
def test_cli_pairs_file_refuses_dataset_options(tiny_model, lfw, tmp_path, extra, names):
    """Options that only mean something for a dataset are a usage error with a pairs file, not ignored."""
    pairs, images = lfw
    out = tmp_path / "refused"
    r = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_model), "--pairs", str(pairs), "--images",
                                  str(images), "--bootstrap", "0", "--out", str(out), *extra])
    assert r.exit_code == 2, r.output
    assert "with --pairs FILE" in r.output and "drop" in r.output and "Traceback" not in r.output
    for name in names:
        assert name in r.output
    assert not out.exists()  # refused before anything ran


@pytest.mark.parametrize("protocol", ["verification", "all"])
def test_cli_pairs_file_accepts_verification_protocols(tiny_model, lfw, protocol):
    pairs, images = lfw
    r = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_model), "--pairs", str(pairs), "--images",
                                  str(images), "--bootstrap", "0", "--protocol", protocol, "--format", "auto",
                                  "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert m["settings"]["protocol"] == "pairs" and m["verification"]["n_pairs"] == 48


@pytest.mark.parametrize("kwargs, match", [
    ({"protocol": "identification"}, "--protocol identification"),
    ({"limit": 5}, "--limit"),
    ({"split": "test"}, "--split"),
    ({"format": "folders"}, "--format folders"),
])
def test_library_pairs_file_refuses_dataset_settings(tiny_model, lfw, kwargs, match):
    pairs, images = lfw
    with pytest.raises(SiamsearchError, match=match):
        evaluate(tiny_model, None, pairs=pairs, images=images, n_boot=0, **kwargs)


def test_skip_missing_without_a_pairs_file_is_refused(tiny_model, lfw):
    _, images = lfw
    r = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_model), "--data", str(images), "--pairs", "100",
                                  "--skip-missing"])
    assert r.exit_code == 2 and "--skip-missing goes with a pairs file" in r.output, r.output
    assert "Traceback" not in r.output
    with pytest.raises(SiamsearchError, match="--skip-missing goes with a pairs file"):
        evaluate(tiny_model, images, pairs=100, n_boot=0, skip_missing=True)


@pytest.mark.shared
def test_real_lfw_pairs_files_parse(shared_data):
    lfw = shared_data / "lfw"
    pl = read_pairs(lfw / "pairs.txt", lfw / "lfw-deepfunneled")
    assert len(pl) == 6000 and pl.format == "lfw"
    assert np.bincount(pl.folds).tolist() == [600] * 10
    assert all(int(pl.is_same[pl.folds == k].sum()) == 300 for k in range(10))
    missing = [f for f in pl.images() if not Path(f).is_file()]
    assert missing == []
    dev = read_pairs(lfw / "pairsDevTest.txt", lfw / "lfw-deepfunneled")
    assert len(dev) == 1000 and dev.folds is None and int(dev.is_same.sum()) == 500
