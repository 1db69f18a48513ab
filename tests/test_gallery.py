"""Gallery build / open / update / search: robustness, crash safety, fingerprints, damage, plain readers."""
from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import faiss
import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import make_identity_folders
from siamsearch import Gallery
from siamsearch.cli import main
from siamsearch.core.errors import FingerprintMismatch, GalleryError, SiamsearchError
from siamsearch.gallery import SearchResult
from siamsearch.gallery import store as gstore

REPO = Path(__file__).resolve().parents[1]


def other_model(path: Path, seed: int = 1) -> Path:
    """An untrained checkpoint like conftest's tiny_model but with other weights (another fingerprint)."""
    from siamsearch.core.checkpoint import save_checkpoint
    from siamsearch.core.config import ModelConfig
    from siamsearch.core.model import EmbeddingNet

    torch.manual_seed(seed)
    cfg = ModelConfig(input_size=16, embedding_dim=8)
    save_checkpoint(path, cfg, EmbeddingNet(cfg).state_dict(), {"note": "another untrained test model"})
    return path


def build(src, model, out, **kw):
    kw.setdefault("workers", 0)
    kw.setdefault("progress", False)
    return Gallery.build(src, model, out=out, **kw)


def rows_per_path(folder: Path) -> dict:
    """relative path -> number of live rows in gallery.h5, read with plain h5py."""
    with h5py.File(folder / "gallery.h5", "r") as f:
        paths = f["paths"].asstr()[:]
        deleted = f["deleted"][:].astype(bool)
    counts: dict = {}
    for p in paths[~deleted]:
        counts[p] = counts.get(p, 0) + 1
    return counts


# --------------------------------------------------------------------------- a folder of awkward files


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header announcing ``width x height`` pixels and no pixel data (a decompression bomb's header)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def image_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def awkward(tmp_path) -> tuple[Path, set, set]:
    """Good images of every mode plus unreadable files; returns (folder, readable relpaths, bad relpaths)."""
    root = make_identity_folders(tmp_path / "awkward", n_ids=3, per_id=3)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8), "RGB")
    odd = root / "odd"
    odd.mkdir()
    (odd / "cmyk.jpg").write_bytes(image_bytes(rgb.convert("CMYK"), "JPEG"))
    (odd / "rgba.png").write_bytes(image_bytes(rgb.convert("RGBA"), "PNG"))
    (odd / "palette.png").write_bytes(image_bytes(rgb.convert("P"), "PNG"))
    sixteen = Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16))
    (odd / "sixteen.png").write_bytes(image_bytes(sixteen, "PNG"))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees
    (odd / "rotated.jpg").write_bytes(image_bytes(rgb, "JPEG", exif=exif))
    (odd / "名前 é.PNG").write_bytes(image_bytes(rgb, "PNG"))  # non-ASCII name, upper-case extension
    good_png = (root / "id_0" / "img_0.png").read_bytes()
    bad = odd / "bad"
    bad.mkdir()
    (bad / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.integers(0, 255, 300, dtype=np.uint8).tobytes())
    (bad / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.png").write_text("this is text, not a picture")
    (bad / "bomb.png").write_bytes(png_claiming(200_000, 200_000))
    (root / "readme.txt").write_text("not scanned: no image extension")
    readable = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
                and p.suffix.lower() in (".png", ".jpg") and p.parent != bad}
    unreadable = {p.relative_to(root).as_posix() for p in bad.iterdir()}
    return root, readable, unreadable


def test_awkward_folder_indexes_every_readable_image_and_lists_the_rest(awkward, tiny_model, tmp_path):
    root, readable, unreadable = awkward
    g = build(root, tiny_model, tmp_path / "gal")
    assert set(g.relpaths) == readable and len(g) == len(readable)
    assert rows_per_path(tmp_path / "gal") == {p: 1 for p in readable}
    reasons = dict(g.skipped)
    assert set(reasons) == unreadable
    assert "empty" in reasons["odd/bad/empty.png"]
    assert "bomb" in reasons["odd/bad/bomb.png"]
    assert "truncated" in reasons["odd/bad/truncated.png"] or "corrupt" in reasons["odd/bad/truncated.png"]
    assert "not an image" in reasons["odd/bad/notes.png"]
    manifest = json.loads((tmp_path / "gal" / "manifest.json").read_text(encoding="utf-8"))
    assert {s["path"] for s in manifest["skipped"]} == unreadable
    assert all(s["reason"] for s in manifest["skipped"])
    # EXIF rotation applied: the rotated file embeds like the same pixels turned upright
    upright = g.model.embed([Image.open(root / "odd" / "rotated.jpg").transpose(Image.Transpose.ROTATE_270)])
    row = g.relpaths.index("odd/rotated.jpg")
    assert np.linalg.norm(g.embeddings[row] - upright[0]) < 1e-5
    # labels: auto mode found identity folders (every image sits in a subfolder)
    assert g.attrs["label_mode"] == "from-folder"
    assert {"id_0", "id_1", "id_2", "odd"} <= set(g.label_names)
    g.close()


def test_cli_build_warns_and_exits_0_strict_exits_nonzero(awkward, tiny_model, tmp_path):
    root, readable, unreadable = awkward
    out = tmp_path / "cli_gal"
    runner = CliRunner()
    res = runner.invoke(main, ["index", "build", str(root), "--model", str(tiny_model), "--out", str(out),
                               "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert f"{len(readable)} images indexed" in res.output
    assert f"skipped {len(unreadable)} unreadable file(s)" in res.output
    for p in unreadable:
        assert p in res.output
    res = runner.invoke(main, ["index", "build", str(root), "--model", str(tiny_model), "--out",
                               str(tmp_path / "strict_gal"), "--workers", "0", "--no-progress", "--strict"])
    assert res.exit_code != 0 and "--strict" in res.output and "odd/bad/bomb.png" in res.output
    assert not (tmp_path / "strict_gal" / "gallery.h5").exists()
    assert "Traceback" not in res.output
    res = runner.invoke(main, ["index", "info", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["size"] == len(readable) and info["dim"] == 8 and info["index"]["factory"] == "Flat"
    assert {s["path"] for s in info["skipped"]} == unreadable
    assert info["model"]["fingerprint"] and info["created"] and info["disk_bytes"] > 0
    res = runner.invoke(main, ["index", "info", str(out)])
    assert res.exit_code == 0 and "Flat" in res.output and "skipped" in res.output
    res = runner.invoke(main, ["index", "build", str(root), "--model", str(tiny_model), "--factory", "Nope7"])
    assert res.exit_code == 2 and "Invalid value" in res.output


# --------------------------------------------------------------------------- killed mid-build

CHILD = """
import sys, time
import siamsearch.gallery.store as store
store.CHUNK_ROWS = 8                       # small journal segments, so a kill lands between them
from siamsearch.core.embedder import load_model
from siamsearch import Gallery

model = load_model(sys.argv[2], device="cpu")
real = model.embed_files

def slow(*a, **kw):                        # a slow model: the build takes long enough to be killed
    for batch in real(*a, **kw):
        time.sleep(0.05)
        yield batch

model.embed_files = slow
Gallery.build(sys.argv[1], model, out=sys.argv[3], batch_size=4, workers=0, progress=False)
print("finished")
"""


def test_sigkill_mid_build_then_rerun_gives_one_row_per_image(tmp_path, tiny_model):
    src = make_identity_folders(tmp_path / "imgs", n_ids=6, per_id=20)  # 120 images
    out = tmp_path / "gal"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), str(src), str(tiny_model), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / ".pending").glob("seg-*.npz"))) < 3:
        if proc.poll() is not None:
            pytest.fail("the build ended before it could be killed: " + proc.stderr.read().decode()[-2000:])
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "gallery.h5").exists()  # nothing published yet
    done = len(list((out / ".pending").glob("seg-*.npz"))) * 8
    assert 0 < done < 120

    g = build(src, tiny_model, out)  # the same command again resumes
    assert g.last_report.resumed >= done and g.last_report.embedded <= 120 - done
    assert rows_per_path(out) == {p.relative_to(src).as_posix(): 1 for p in src.rglob("*.png")}
    assert not (out / ".pending").exists()
    # resumed rows hold the same embeddings as a clean build
    clean = build(src, tiny_model, tmp_path / "clean")
    order = np.argsort(g.relpaths)
    np.testing.assert_allclose(g.embeddings[order], clean.embeddings[np.argsort(clean.relpaths)], atol=1e-5)


def test_crash_after_commit_before_journal_cleared_adds_no_duplicates(tmp_path, tiny_model, monkeypatch):
    src = make_identity_folders(tmp_path / "imgs", n_ids=3, per_id=4)
    out = tmp_path / "gal"
    monkeypatch.setattr(gstore.PendingLog, "clear", lambda self: None)  # "killed" right after the commit
    build(src, tiny_model, out).close()
    assert any((out / ".pending").glob("seg-*.npz"))
    monkeypatch.undo()
    g = build(src, tiny_model, out)
    assert rows_per_path(out) == {p.relative_to(src).as_posix(): 1 for p in src.rglob("*.png")}
    assert g.last_report.embedded == 0 and g.last_report.added == 0


def test_crash_between_index_and_h5_rename_is_detected_and_repaired(tmp_path, tiny_model, monkeypatch):
    src = make_identity_folders(tmp_path / "imgs", n_ids=3, per_id=4)
    out = tmp_path / "gal"
    build(src, tiny_model, out).close()
    make_identity_folders(tmp_path / "more", n_ids=1, per_id=3, seed=5)
    (tmp_path / "more" / "id_0").rename(src / "new_id")
    real_replace = os.replace

    def crash_on_h5(a, b):
        if str(b).endswith("gallery.h5"):
            raise KeyboardInterrupt("killed")
        return real_replace(a, b)

    monkeypatch.setattr(gstore.os, "replace", crash_on_h5)
    with pytest.raises(KeyboardInterrupt):
        Gallery.open(out).update(progress=False, workers=0)
    monkeypatch.undo()
    with pytest.raises(GalleryError, match="index update"):
        Gallery.open(out)  # new faiss.index beside the old gallery.h5: stale, caught by its hash
    res = CliRunner().invoke(main, ["index", "update", str(out), "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    g = Gallery.open(out)
    assert len(g) == 15 and rows_per_path(out) == {p.relative_to(src).as_posix(): 1 for p in src.rglob("*.png")}


# --------------------------------------------------------------------------- fingerprints and damage


def test_fingerprint_mismatch_names_both(tmp_path, tiny_model, identity_folders):
    out = tmp_path / "gal"
    g = build(identity_folders, tiny_model, out)
    mine = g.fingerprint
    g.close()
    other = other_model(tmp_path / "other.pt")
    from siamsearch.core.embedder import load_model

    theirs = load_model(other).fingerprint
    assert theirs != mine
    with pytest.raises(FingerprintMismatch) as e:
        Gallery.open(out, model=other)
    assert mine in str(e.value) and theirs in str(e.value)
    with pytest.raises(FingerprintMismatch, match=f"{mine}.*{theirs}"):
        build(identity_folders, other, out)
    with pytest.raises(FingerprintMismatch, match=mine):
        Gallery.open(out).update(model=other, progress=False)
    res = CliRunner().invoke(main, ["index", "update", str(out), "--model", str(other), "--no-progress"])
    assert res.exit_code == 2 and mine in res.output and theirs in res.output and "Traceback" not in res.output
    # --overwrite replaces it
    g = build(identity_folders, other, out, overwrite=True)
    assert g.fingerprint == theirs
    g.close()


def damage_file(path: Path, how: str) -> None:
    """Cut a file in half, overwrite its tail with junk, empty it, or delete it."""
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garble":
        path.write_bytes(data[:64] + b"\x07" * (len(data) - 64))
    elif how == "zero":
        path.write_bytes(b"")
    else:
        path.unlink()


@pytest.mark.parametrize("damage", ["truncate", "garble", "zero", "foreign"])
def test_damaged_gallery_h5_is_a_clear_error(tmp_path, tiny_model, identity_folders, damage):
    out = tmp_path / "gal"
    build(identity_folders, tiny_model, out).close()
    if damage == "foreign":
        with h5py.File(out / "gallery.h5", "w") as f:
            f["x"] = np.arange(3)
    else:
        damage_file(out / "gallery.h5", damage)
    with pytest.raises(GalleryError, match="rebuild"):
        Gallery.open(out)
    res = CliRunner().invoke(main, ["index", "info", str(out)])
    assert res.exit_code == 2 and "rebuild" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["index", "update", str(out), "--no-progress"])
    assert res.exit_code == 2 and "--overwrite" in res.output
    g = build(identity_folders, tiny_model, out, overwrite=True)
    assert len(g) == 20


@pytest.mark.parametrize("damage", ["truncate", "garble", "missing"])
def test_damaged_faiss_index_is_a_clear_error_and_update_repairs(tmp_path, tiny_model, identity_folders, damage):
    out = tmp_path / "gal"
    build(identity_folders, tiny_model, out).close()
    damage_file(out / "faiss.index", damage)
    with pytest.raises(GalleryError, match="index update"):
        Gallery.open(out)
    res = CliRunner().invoke(main, ["index", "info", str(out)])
    assert res.exit_code == 2 and "index update" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["index", "update", str(out), "--no-progress", "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert "rebuilt" in res.output
    g = Gallery.open(out)
    r = g.search(g.embeddings[:2], k=1)
    np.testing.assert_array_equal(r.ids[:, 0], g.ids[:2])


def test_existing_gallery_of_another_folder_needs_overwrite(tmp_path, tiny_model):
    a = make_identity_folders(tmp_path / "a", n_ids=2, per_id=3)
    b = make_identity_folders(tmp_path / "b", n_ids=2, per_id=3, seed=3)
    build(a, tiny_model, tmp_path / "gal").close()
    with pytest.raises(GalleryError, match="overwrite"):
        build(b, tiny_model, tmp_path / "gal")


# --------------------------------------------------------------------------- update


def _write_blob(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8), "L").save(path)


def test_update_adds_changes_removes_and_keeps(tmp_path, tiny_model):
    src = make_identity_folders(tmp_path / "imgs", n_ids=4, per_id=5)
    out = tmp_path / "gal"
    g = build(src, tiny_model, out)
    before = dict(zip(g.relpaths, g.embeddings.copy()))
    ids_before = dict(zip(g.relpaths, g.ids.tolist()))
    _write_blob(src / "id_0" / "new.png", 1)                    # added
    (src / "id_5").mkdir()
    _write_blob(src / "id_5" / "a.png", 2)                       # added, new label
    _write_blob(src / "id_1" / "img_0.png", 3)                   # changed content
    (src / "id_2" / "img_1.png").unlink()                        # removed
    t = time.time() + 100
    os.utime(src / "id_3" / "img_2.png", (t, t))                 # touched, same bytes
    report = g.update(progress=False, workers=0)
    assert (report.added, report.changed, report.removed, report.unchanged) == (2, 1, 1, 18)
    assert report.embedded == 3 and report.index == "updated"
    assert rows_per_path(out) == {p.relative_to(src).as_posix(): 1 for p in src.rglob("*.png")}
    after = dict(zip(g.relpaths, g.embeddings))
    assert "id_2/img_1.png" not in after and "id_5/a.png" in after
    assert not np.allclose(after["id_1/img_0.png"], before["id_1/img_0.png"])
    for p in ("id_0/img_0.png", "id_3/img_2.png"):
        np.testing.assert_array_equal(after[p], before[p])
        assert dict(zip(g.relpaths, g.ids.tolist()))[p] == ids_before[p]  # untouched rows keep their ids
    assert "id_5" in g.label_names
    # search sees the new state and never returns the removed or replaced rows
    r = g.search(g.embeddings, k=len(g))
    live = set(g.ids.tolist())
    assert set(r.ids.ravel().tolist()) == live
    np.testing.assert_array_equal(r.ids[:, 0], g.ids)
    # a second update with nothing changed does nothing
    again = g.update(progress=False, workers=0)
    assert (again.added, again.changed, again.removed, again.embedded, again.index) == (0, 0, 0, 0, "unchanged")
    g.close()


def test_update_compacts_after_many_removals(tmp_path, tiny_model):
    src = make_identity_folders(tmp_path / "imgs", n_ids=4, per_id=5)
    g = build(src, tiny_model, tmp_path / "gal")
    for p in list((src / "id_0").iterdir()) + list((src / "id_1").iterdir()):
        p.unlink()
    report = g.update(progress=False, workers=0)
    assert report.removed == 10 and report.index == "rebuilt"
    with h5py.File(tmp_path / "gal" / "gallery.h5", "r") as f:
        assert f["embeddings"].shape[0] == 10 and not f["deleted"][:].any()
        np.testing.assert_array_equal(f["ids"][:], np.arange(10))
    assert len(g) == 10 and g.search(g.embeddings[:1], k=3).ids[0, 0] == g.ids[0]


def test_hnsw_gallery_removes_by_tombstone(tmp_path, tiny_model):
    src = make_identity_folders(tmp_path / "imgs", n_ids=6, per_id=6)
    g = build(src, tiny_model, tmp_path / "gal", factory="HNSW16")
    assert g.index.kind == "hnsw" and "efSearch" in g.index.params
    gone = src / "id_2" / "img_3.png"
    gone_id = g.ids[g.relpaths.index("id_2/img_3.png")]
    gone.unlink()
    report = g.update(progress=False, workers=0)
    assert report.index == "updated" and g.index.removal == "tombstone" and g.index.tombstones == {int(gone_id)}
    r = g.search(g.embeddings, k=len(g))
    assert gone_id not in r.ids
    reopened = Gallery.open(tmp_path / "gal")  # tombstones come back from the deleted flags
    assert reopened.index.tombstones == {int(gone_id)} and gone_id not in reopened.search(g.embeddings, k=35).ids
    assert reopened.info()["index"]["tombstones"] == 1


# --------------------------------------------------------------------------- search and plain readers


def test_search_result_is_validated_and_read_only(tmp_path, tiny_model, identity_folders):
    g = build(identity_folders, tiny_model, tmp_path / "gal")
    r = g.search(identity_folders / "id_1" / "img_2.png", k=5)
    assert isinstance(r, SearchResult) and len(r) == 1 and r.k == 5
    assert r.paths[0][0] == str(identity_folders.resolve() / "id_1" / "img_2.png") and r.distances[0, 0] < 1e-5
    assert r.labels[0][0] == "id_1" and r.neighbours(0)[0]["rank"] == 1
    with pytest.raises(ValueError):
        r.distances[0, 0] = 1.0
    json.dumps(r.to_dict())
    big = g.search(g.embeddings[:3], k=1000)  # k capped at the gallery size
    assert big.k == 20 and (np.diff(big.distances, axis=1) >= 0).all()
    d = np.linalg.norm(g.embeddings[:3, None] - g.embeddings[None], axis=2)
    np.testing.assert_allclose(np.sort(d, axis=1), big.distances, atol=1e-5)
    with pytest.raises(ValueError, match="sorted"):
        SearchResult(np.array([[0.5, 0.1]], np.float32), np.array([[1, 2]]), (("a", "b"),), ((None, None),),
                     np.array([[-1, -1]]))
    with pytest.raises(ValueError, match="unique"):
        SearchResult(np.array([[0.1, 0.5]], np.float32), np.array([[1, 1]]), (("a", "b"),), ((None, None),),
                     np.array([[-1, -1]]))
    with pytest.raises(SiamsearchError, match="normalised"):
        g.search(np.ones((1, 8), np.float32), k=2)
    with pytest.raises(SiamsearchError, match="k must"):
        g.search(g.embeddings[:1], k=0)
    g.close()


def test_readable_with_only_h5py_and_faiss(tmp_path, tiny_model, identity_folders):
    """What index/README.md tells readers to do."""
    out = tmp_path / "gal"
    g = build(identity_folders, tiny_model, out)
    (identity_folders / "id_3" / "img_0.png").unlink()
    g.update(progress=False, workers=0)
    g.close()
    with h5py.File(out / "gallery.h5", "r") as f:
        emb = f["embeddings"][:]
        paths = f["paths"].asstr()[:]
        deleted = f["deleted"][:].astype(bool)
        ids = f["ids"][:]
        assert f.attrs["model_fingerprint"] and json.loads(f.attrs["model_config"])["embedding_dim"] == 8
    index = faiss.read_index(str(out / "faiss.index"))
    d2, found = index.search(emb[~deleted][:4], 3)
    np.testing.assert_array_equal(found[:, 0], ids[~deleted][:4])
    assert not set(found.ravel()) & set(ids[deleted])
    assert paths[found[0, 0]] == paths[~deleted][0]
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["index"]["factory"] == "Flat" and manifest["size"] == 19


def test_labels_none_and_flat_folders(tmp_path, tiny_model):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        _write_blob(flat / f"{i}.png", i)
    g = build(flat, tiny_model, tmp_path / "g1")
    assert g.attrs["label_mode"] == "none" and (g.labels == -1).all() and g.search(g.embeddings[:1], 2).labels[0] == (None, None)
    g.close()
    src = make_identity_folders(tmp_path / "ids", n_ids=2, per_id=2)
    g = build(src, tiny_model, tmp_path / "g2", labels="none")
    assert (g.labels == -1).all()
    g.close()
    with pytest.raises(SiamsearchError, match="labels"):
        build(src, tiny_model, tmp_path / "g3", labels="parent")


def test_default_out_is_index_slash_folder_name(tmp_path, tiny_model, identity_folders, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["index", "build", str(identity_folders), "--model", str(tiny_model),
                                    "--workers", "0", "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["rows"] == 20
    assert (tmp_path / "index" / identity_folders.name / "gallery.h5").is_file()


def test_empty_folder_is_refused_at_build_time(tmp_path, tiny_model):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SiamsearchError, match="holds no images"):  # not only at the first query (issue 16)
        build(tmp_path / "empty", tiny_model, tmp_path / "gal")
    assert not (tmp_path / "gal" / "gallery.h5").exists()


def test_journal_of_another_model_is_discarded_and_folders_are_locked(tmp_path, tiny_model, identity_folders):
    out = tmp_path / "gal"
    stale = gstore.PendingLog(out, "0123456789abcdef", str(identity_folders.resolve()), 8, "from-folder")
    rel = "id_0/img_0.png"
    st = (identity_folders / rel).stat()
    stale.write(gstore.RowBlock([rel], ["id_0"], ["0" * 64], np.array([st.st_mtime]), np.array([st.st_size]),
                                np.ones((1, 8), np.float32) / np.sqrt(8)))
    g = build(identity_folders, tiny_model, out)
    assert g.last_report.resumed == 0 and len(g) == 20
    assert not np.allclose(g.embeddings[g.relpaths.index(rel)], 1 / np.sqrt(8))
    with gstore.FolderLock(out):
        with pytest.raises(GalleryError, match="another build or update"):
            g.update(progress=False, workers=0)
    assert len(g.search(g.embeddings[:1], k=2)) == 1  # still usable after the refused update


def test_gallery_file_reads_its_attributes_once(tmp_path, tiny_model, monkeypatch):
    """Attributes and shape are read from the HDF5 file once per open handle (a served search used to read
    them on every request); callers get a copy, so changing it changes nothing."""
    from siamsearch.gallery.hdf5 import GalleryFile

    src = make_identity_folders(tmp_path / "src", n_ids=2, per_id=2)
    g = build(src, tiny_model, tmp_path / "g")
    expected = dict(g.attrs)
    g.close()
    gf = GalleryFile(tmp_path / "g" / gstore.H5_NAME)
    first = gf.attrs
    assert first == expected and gf.dim == expected["embedding_dim"] and gf.n_rows == 4
    first["source_dir"] = "elsewhere"

    def no_reads(*a, **kw):
        raise AssertionError("attributes read from the file again")

    monkeypatch.setattr(h5py.AttributeManager, "items", no_reads)
    assert gf.attrs == expected and gf.dim == expected["embedding_dim"] and gf.n_rows == 4
    gf.close()
