"""`siamsearch data check` / `data preview` on generated datasets with planted problems."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from datagen import make_folders, make_idx, make_zip, omniglot_members
from siamsearch.cli import main
from siamsearch.core.errors import UnreadableImage
from siamsearch.core.images import read_image
from siamsearch.data.inspect import check_dataset, format_report
from siamsearch.data.preview import preview_pairs


@pytest.fixture
def planted(tmp_path):
    """Identity folders with one of each problem: a single-image identity, a corrupt file,
    a duplicate across two identities, a duplicate within one, and an RGB image among grey ones."""
    root = make_folders(tmp_path / "ds", {"ann": 4, "ben": 4, "cat": 4, "dan": 4, "eve": 4, "fay": 4})
    make_folders(root, {"solo": 1}, seed=500)
    (root / "ben" / "broken.png").write_bytes((root / "ben" / "img_0.png").read_bytes()[:60])
    shutil.copy(root / "ann" / "img_0.png", root / "cat" / "copied_from_ann.png")
    shutil.copy(root / "dan" / "img_1.png", root / "dan" / "again.png")
    Image.open(root / "eve" / "img_0.png").convert("L").point(lambda v: 255 - v).convert("RGB").save(
        root / "eve" / "colour.png")
    return root


def test_check_names_each_planted_problem(planted):
    r = check_dataset(planted, workers=2)
    assert r["format"] == "folders"
    assert r["images"] == 6 * 4 + 1 + 3 + 1 and r["readable_images"] == r["images"] - 1
    assert r["identities"] == 7
    assert r["single_image_identities"] == {"count": 1, "examples": ["solo"]}
    assert r["images_per_identity"] == {"min": 1, "median": 4.0, "max": 5}
    # unreadable, with the reason read_image gives
    (bad,) = r["unreadable"]["files"]
    assert bad["source"].endswith("ben/broken.png") and bad["identity"] == "ben"
    with pytest.raises(UnreadableImage) as e:
        read_image(planted / "ben" / "broken.png")
    assert bad["reason"] == e.value.reason
    # duplicates
    across = r["duplicates"]["across_identities"]
    assert across["count"] == 1
    assert sorted(f["identity"] for f in across["groups"][0]["files"]) == ["ann", "cat"]
    within = r["duplicates"]["within_identity"]
    assert within["count"] == 1 and {f["identity"] for f in within["groups"][0]["files"]} == {"dan"}
    # modes and preprocessing
    assert r["modes"] == {"L": r["readable_images"] - 1, "RGB": 1}
    assert r["sizes"] == [{"size": "12x12", "count": r["readable_images"]}]
    assert r["preprocessing"]["output_shape"] == [1, 32, 32]
    assert r["preprocessing"]["conversions"] == {"RGB": "L"}
    messages = " ".join(p["message"] for p in r["problems"])
    for words in ("unreadable", "more than one identity", "single image", "mixed grey", "within one identity"):
        assert words in messages
    assert r["ready"] is True and r["verdict"].startswith("READY TO TRAIN, but check first")
    json.dumps(r)  # serialisable
    text = format_report(r)
    for words in ("broken.png", "copied_from_ann.png", "RGB -> L", "1x32x32", "READY TO TRAIN"):
        assert words in text


def test_check_clean_dataset_is_ready(tmp_path):
    r = check_dataset(make_folders(tmp_path / "ok", {f"p{k}": 3 for k in range(6)}))
    assert r["ready"] and r["verdict"] == "READY TO TRAIN"
    assert not [p for p in r["problems"] if p["severity"] != "info"]


def test_check_not_ready_cases(tmp_path):
    singles = check_dataset(make_folders(tmp_path / "singles", {f"p{k}": 1 for k in range(10)}))
    assert not singles["ready"] and "2 or more images" in singles["verdict"]
    one = check_dataset(make_folders(tmp_path / "one", {"only": 6}))
    assert not one["ready"] and "at least 2" in one["verdict"]
    # identities fine, but too few to hold out validation identities
    few = make_folders(tmp_path / "few", {"a": 3, "b": 3, "c": 3})
    assert not check_dataset(few, val_fraction=0.5)["ready"]
    assert check_dataset(few, val_fraction=0.0)["ready"]


def test_check_other_formats(tmp_path):
    make_idx(tmp_path / "mnist", n_train=30)
    r = check_dataset(tmp_path / "mnist")
    assert r["format"] == "idx" and r["modes"] == {"L": 30} and r["identities"] == 10
    z = make_zip(tmp_path / "o.zip", omniglot_members({"Alpha": 5}, "bg/", seed=0))
    r = check_dataset(z)
    assert r["format"] == "omniglot" and r["modes"] == {"1": 15} and r["ready"]


def test_check_uses_model_config(planted, tiny_model):
    r = check_dataset(planted, model=tiny_model)
    assert r["preprocessing"]["source"] == str(tiny_model)
    assert r["preprocessing"]["output_shape"] == [1, 16, 16]


# ----------------------------------------------------------------- CLI
def test_cli_check_exit_codes_and_json(planted, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["data", "check", str(planted)])
    assert res.exit_code == 0, res.output
    assert "broken.png" in res.output and "READY TO TRAIN, but check first" in res.output
    res = runner.invoke(main, ["data", "check", str(planted), "--strict"])
    assert res.exit_code == 1
    res = runner.invoke(main, ["data", "check", str(planted), "--json"])
    assert res.exit_code == 0
    assert json.loads(res.output)["unreadable"]["count"] == 1
    singles = make_folders(tmp_path / "singles", {f"p{k}": 1 for k in range(5)})
    res = runner.invoke(main, ["data", "check", str(singles)])
    assert res.exit_code == 1 and "NOT READY" in res.output
    (tmp_path / "empty").mkdir()
    res = runner.invoke(main, ["data", "check", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "identity_CelebA.txt" in res.output


def test_cli_preview_pairs_png(planted, tmp_path):
    out = tmp_path / "p" / "pairs.png"
    res = CliRunner().invoke(main, ["data", "preview", str(planted), "--pairs", "6", "--seed", "3",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    img = Image.open(out)
    assert img.format == "PNG" and img.size[0] > 400 and img.size[1] > 200
    # seeded: same command, same picture
    out2 = tmp_path / "again.png"
    CliRunner().invoke(main, ["data", "preview", str(planted), "--pairs", "6", "--seed", "3", "--out", str(out2)])
    assert np.array_equal(np.asarray(Image.open(out2)), np.asarray(img))


def test_preview_no_augment_and_triplets(planted, tmp_path, tiny_model):
    p = preview_pairs(planted, tmp_path / "eval.png", n_pairs=4, augment=False)
    assert p.exists()
    t = preview_pairs(planted, tmp_path / "tri.png", n_pairs=3, triplets=True, m_per_class=2)
    assert Image.open(t).size[0] > 300
    res = CliRunner().invoke(main, ["data", "preview", str(planted), "--triplets", "--model", str(tiny_model),
                                    "--pairs", "3", "--out", str(tmp_path / "trim.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "trim.png").exists()


def test_check_says_what_happens_to_non_square_images(tmp_path):
    from PIL import Image

    root = make_folders(tmp_path / "wide", {f"p{k}": 2 for k in range(3)})
    Image.new("L", (40, 20), 128).save(root / "p0" / "wide.png")
    r = check_dataset(root)
    geometry = r["preprocessing"]["geometry"]
    assert "1 non-square image" in geometry and "short side" in geometry and "aspect ratio kept" in geometry
    assert "geometry: " in format_report(r)
    assert "all images are square" in check_dataset(make_folders(tmp_path / "sq", {"a": 2, "b": 2}))["preprocessing"]["geometry"]
