"""Issue 16 items 6, 7 and 9 (gallery part): one identity rule for datasets and galleries, stray top-level
images named in a warning, no gallery emptied without a word, the truth after Ctrl-C, and damaged-gallery
messages that name the real image folder."""
from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from conftest import make_identity_folders
from siamsearch.cli import main
from siamsearch.core.errors import GalleryError, GalleryInterrupted, SiamsearchError
from siamsearch.data import open_dataset
from siamsearch.data.identity import identity_of
from siamsearch.gallery import Gallery
from siamsearch.gallery import sync as sync_mod


def _build(src, model, out):
    return Gallery.build(src, model, out=out, workers=0, progress=False)


def test_identity_rule():
    assert identity_of("bob/2019/summer/x.jpg") == "bob" == identity_of("bob/x.jpg")
    assert identity_of("x.jpg") is None


def test_nested_folders_are_one_identity_everywhere(tmp_path, tiny_model):
    src = make_identity_folders(tmp_path / "people", n_ids=3, per_id=2)
    nested = src / "id_0" / "2019" / "summer"
    nested.mkdir(parents=True)
    shutil.copy(src / "id_1" / "img_0.png", nested / "extra.png")
    ds = open_dataset(src)
    g = _build(src, tiny_model, tmp_path / "gal")
    labels = dict(zip(g.relpaths, [g.label_names[i] for i in g.labels]))
    assert labels["id_0/2019/summer/extra.png"] == "id_0"  # not its own identity "id_0/2019/summer"
    assert sorted(set(labels.values())) == list(ds.identity_names) == ["id_0", "id_1", "id_2"]
    g.close()


def test_stray_top_level_image_is_named_and_the_rest_stays_labelled(tmp_path, tiny_model):
    src = make_identity_folders(tmp_path / "people", n_ids=3, per_id=2)
    shutil.copy(src / "id_0" / "img_0.png", src / "stray.png")
    with pytest.warns(UserWarning, match="stray.png"):
        g = _build(src, tiny_model, tmp_path / "gal")
    assert g.attrs["label_mode"] == "from-folder"  # one stray file no longer unlabels the gallery
    named = [g.label_names[i] if i >= 0 else None for i in g.labels]
    assert named.count(None) == 1 and sum(n is not None for n in named) == 6
    g.close()
    with pytest.warns(UserWarning, match=r"stray\.png"):  # the dataset reader names it too
        open_dataset(src)
    # the CLI shows it as a one-line note, and `index info` counts the labels
    r = CliRunner().invoke(main, ["index", "build", str(src), "--model", str(tiny_model), "--out",
                                  str(tmp_path / "gal2"), "--workers", "0", "--no-progress"])
    assert r.exit_code == 0 and "note:" in r.output and "stray.png" in r.output, r.output
    r = CliRunner().invoke(main, ["index", "info", str(tmp_path / "gal2"), "--json"])
    assert '"count": 3' in r.output


def test_update_refuses_mass_removal(tmp_path, tiny_model):
    src = make_identity_folders(tmp_path / "imgs", n_ids=4, per_id=4)
    _build(src, tiny_model, tmp_path / "gal").close()
    moved = tmp_path / "moved"
    shutil.move(str(src), str(moved))
    src.mkdir()  # an "unmounted drive": the folder is there but empty
    r = CliRunner().invoke(main, ["index", "update", str(tmp_path / "gal"), "--no-progress", "--workers", "0"])
    assert r.exit_code == 2 and "16 of the 16 images" in r.output and "--allow-mass-removal" in r.output
    assert len(Gallery.open(tmp_path / "gal")) == 16  # nothing was changed
    r = CliRunner().invoke(main, ["index", "update", str(tmp_path / "gal"), "--no-progress", "--workers", "0",
                                  "--allow-mass-removal", "--json"])
    assert r.exit_code == 0, r.output
    g = Gallery.open(tmp_path / "gal")
    assert len(g) == 0
    g.close()


def test_build_refuses_folder_of_unreadable_images(tmp_path, tiny_model):
    bad = tmp_path / "bad" / "a"
    bad.mkdir(parents=True)
    (bad / "x.png").write_bytes(b"not an image")
    with pytest.raises(SiamsearchError, match="none of the 1 image files"):
        _build(tmp_path / "bad", tiny_model, tmp_path / "gal")


def test_interrupt_says_what_was_kept(tmp_path, tiny_model, monkeypatch):
    src = make_identity_folders(tmp_path / "imgs", n_ids=2, per_id=3)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sync_mod, "embed_missing", interrupted)
    with pytest.raises(GalleryInterrupted, match="nothing was kept"):
        _build(src, tiny_model, tmp_path / "gal")
    r = CliRunner().invoke(main, ["index", "build", str(src), "--model", str(tiny_model), "--out",
                                  str(tmp_path / "gal"), "--workers", "0", "--no-progress"])
    assert r.exit_code == 130 and "Interrupted: nothing was kept (no gallery was published)" in r.output
    monkeypatch.undo()
    _build(src, tiny_model, tmp_path / "gal").close()
    (src / "id_0" / "new.png").write_bytes((src / "id_1" / "img_0.png").read_bytes())
    monkeypatch.setattr(sync_mod, "embed_missing", interrupted)
    with pytest.raises(GalleryInterrupted, match=r"the published gallery is unchanged \(6 images\)"):
        Gallery.open(tmp_path / "gal").update(progress=False, workers=0)


def test_damaged_gallery_message_names_the_real_folder(tmp_path, tiny_model):
    src = make_identity_folders(tmp_path / "imgs", n_ids=2, per_id=2)
    _build(src, tiny_model, tmp_path / "gal").close()
    (tmp_path / "gal" / "gallery.h5").write_bytes(b"garbage")
    with pytest.raises(GalleryError) as e:
        Gallery.open(tmp_path / "gal")
    assert f"siamsearch index build {src.resolve()} --model {tiny_model}" in str(e.value)
    assert "IMAGE_DIR" not in str(e.value)


def test_sharded_gallery_is_guarded_too(tmp_path, tiny_model):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SiamsearchError, match="holds no images"):
        Gallery.build(tmp_path / "empty", tiny_model, out=tmp_path / "e", workers=0, progress=False, shard_size=8)
    src = make_identity_folders(tmp_path / "imgs", n_ids=2, per_id=4)
    Gallery.build(src, tiny_model, out=tmp_path / "sh", workers=0, progress=False, shard_size=4).close()
    for p in list((src / "id_0").iterdir()) + list((src / "id_1").iterdir())[:1]:
        p.unlink()  # 5 of 8 gone
    g = Gallery.open(tmp_path / "sh")
    with pytest.raises(SiamsearchError, match="5 of the 8 images"):
        g.update(progress=False, workers=0)
    assert g.update(progress=False, workers=0, allow_mass_removal=True).removed == 5
    g.close()
