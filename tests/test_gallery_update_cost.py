"""What an update costs: it hashes, embeds and writes only what changed (issue 14, item 5).

The checks compare with independent answers: the rows a full rewrite of the store gives, and the file
order and identities of :func:`list_images` and ``PurePosixPath``.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path, PurePosixPath

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import make_identity_folders
from siamsearch import Gallery
from siamsearch.core.embedder import Embedder
from siamsearch.core.images import list_images
from siamsearch.data.identity import identity_of
from siamsearch.gallery import store as gstore
from siamsearch.gallery import sync, write
from siamsearch.gallery.hdf5 import GalleryWriter
from siamsearch.gallery.scan import scan_folder

ROWS = ("embeddings", "ids", "paths", "labels", "content_sha256", "mtime", "size", "deleted")


def _blob(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8), "L").save(path)


def _change(src: Path) -> None:
    """Two added files (one of a new identity), one changed, one removed, one touched (same bytes)."""
    _blob(src / "id_0" / "new.png", 1)
    (src / "id_5").mkdir()
    _blob(src / "id_5" / "a.png", 2)
    _blob(src / "id_1" / "img_0.png", 3)
    (src / "id_2" / "img_1.png").unlink()
    t = time.time() + 100
    os.utime(src / "id_3" / "img_2.png", (t, t))


def _store(folder: Path) -> dict:
    """Every row dataset, the label names and skipped files of ``gallery.h5``, read with plain h5py."""
    with h5py.File(folder / "gallery.h5", "r") as f:
        out = {k: f[k][:] for k in ROWS}
        out["paths"] = list(f["paths"].asstr()[:])
        for k in ("label_names", "skipped_paths", "skipped_reasons"):
            out[k] = list(f[k].asstr()[:])
        out["chunk_rows"] = f["embeddings"].chunks[0]
    return out


def _update(folder: Path, **kw):
    with Gallery.open(folder) as g:
        return g.update(progress=False, **{"workers": 0, **kw})


def test_update_writes_only_the_new_rows_and_hashes_only_files_whose_stat_changed(tmp_path, tiny_model,
                                                                                    monkeypatch):
    src = make_identity_folders(tmp_path / "imgs", n_ids=4, per_id=5)
    Gallery.build(src, tiny_model, out=tmp_path / "gal", workers=0, progress=False).close()
    _change(src)
    appended, hashed = [], []
    append, sha = GalleryWriter.append, sync.sha256_file

    def counting_append(self, relpaths, *a, **kw):
        appended.append(len(relpaths))
        return append(self, relpaths, *a, **kw)

    def counting_sha(path):
        hashed.append(Path(path).relative_to(src).as_posix())
        return sha(path)

    from siamsearch.core import embedder as embedder_module

    read, read_digest = [], embedder_module.read_image_digest

    def counting_read(path, *a, **kw):
        read.append(Path(path).relative_to(src).as_posix())
        return read_digest(path, *a, **kw)

    monkeypatch.setattr(GalleryWriter, "append", counting_append)
    monkeypatch.setattr(sync, "sha256_file", counting_sha)
    monkeypatch.setattr(embedder_module, "read_image_digest", counting_read)
    report = _update(tmp_path / "gal")
    assert (report.added, report.changed, report.removed, report.unchanged) == (2, 1, 1, 18)
    # only the three new rows are written: the 20 committed rows stay as they are in the copied store
    assert sum(appended) == 3
    # unchanged files (same size and mtime) are never read; the changed and the touched one are hashed
    # to compare; the embedded ones are read once each, their row's hash taken from the bytes embedded
    assert sorted(hashed) == sorted(["id_1/img_0.png", "id_3/img_2.png"])
    assert sorted(read) == sorted(["id_0/new.png", "id_5/a.png", "id_1/img_0.png"])


def test_patched_store_equals_a_rewritten_store(tmp_path, tiny_model, monkeypatch):
    src = make_identity_folders(tmp_path / "imgs", n_ids=4, per_id=5)
    Gallery.build(src, tiny_model, out=tmp_path / "patched", workers=0, progress=False).close()
    shutil.copytree(tmp_path / "patched", tmp_path / "rewritten")
    (src / "id_3" / "img_4.png").write_bytes(b"not an image")  # a skipped file: the skipped list changes
    _change(src)
    assert _update(tmp_path / "patched").index == "updated"
    monkeypatch.setattr(GalleryWriter, "patch_copy", classmethod(lambda cls, *a, **kw: None))
    assert _update(tmp_path / "rewritten").index == "updated"
    patched, rewritten = _store(tmp_path / "patched"), _store(tmp_path / "rewritten")
    assert patched.keys() == rewritten.keys()
    for key in patched:
        np.testing.assert_array_equal(np.asarray(patched[key]), np.asarray(rewritten[key]), err_msg=key)
    assert "id_5" in patched["label_names"] and patched["skipped_paths"] == ["id_3/img_4.png"]
    assert patched["deleted"].sum() == 3  # removed, changed and now unreadable: tombstones, not rewritten
    with Gallery.open(tmp_path / "patched") as a, Gallery.open(tmp_path / "rewritten") as b:
        q = a.embeddings[:5]
        np.testing.assert_array_equal(a.search(q, k=5).ids, b.search(q, k=5).ids)


def test_store_outgrowing_its_small_chunks_is_rewritten(tmp_path, tiny_model):
    src = make_identity_folders(tmp_path / "imgs", n_ids=2, per_id=10)
    Gallery.build(src, tiny_model, out=tmp_path / "gal", workers=0, progress=False).close()
    assert _store(tmp_path / "gal")["chunk_rows"] == 64  # small galleries get small chunks
    for j in range(60):
        _blob(src / "id_0" / f"more_{j}.png", 100 + j)
    report = _update(tmp_path / "gal")
    store = _store(tmp_path / "gal")
    assert report.added == 60 and store["chunk_rows"] >= 80 and len(store["paths"]) == 80
    assert sorted(store["paths"]) == sorted(p.relative_to(src).as_posix() for p in src.rglob("*.png"))


def test_update_that_fails_before_its_commit_leaves_the_published_store_untouched(tmp_path, tiny_model,
                                                                                 monkeypatch):
    src = make_identity_folders(tmp_path / "imgs", n_ids=4, per_id=5)
    out = tmp_path / "gal"
    Gallery.build(src, tiny_model, out=out, workers=0, progress=False).close()
    before = hashlib.sha256((out / "gallery.h5").read_bytes()).hexdigest()
    _change(src)

    def boom(*a, **kw):
        raise RuntimeError("power cut")

    monkeypatch.setattr(gstore, "commit", boom)
    with pytest.raises(RuntimeError, match="power cut"):
        _update(out)
    assert hashlib.sha256((out / "gallery.h5").read_bytes()).hexdigest() == before
    monkeypatch.undo()
    report = _update(out)  # the next run publishes the change (its embeddings come from the journal)
    assert (report.added, report.changed, report.removed, report.embedded) == (2, 1, 1, 0)
    assert not list(out.glob(".*.tmp"))


def test_small_embedding_jobs_decode_in_process(tmp_path, tiny_model, monkeypatch):
    src = make_identity_folders(tmp_path / "imgs", n_ids=2, per_id=5)
    Gallery.build(src, tiny_model, out=tmp_path / "gal", workers=0, progress=False).close()
    seen = []
    embed_files = Embedder.embed_files

    def recording(self, paths, *a, **kw):
        seen.append(kw.get("workers"))
        return embed_files(self, paths, *a, **kw)

    monkeypatch.setattr(Embedder, "embed_files", recording)
    _blob(src / "id_0" / "new.png", 7)
    _update(tmp_path / "gal", workers=2)
    assert seen == [0]  # one image: starting worker processes would cost more than decoding it here
    from siamsearch.gallery import engines

    many = ["x"] * engines.INPROCESS_DECODE_MAX
    assert engines.decode_workers(2, many) == 2 and engines.decode_workers(2, many[:3]) == 0


def test_scan_lists_files_in_list_images_order(tmp_path):
    names = ["a/x.png", "a-b/x.png", "a/b/y.png", "a/b-c/y.jpg", "B/z.png", "a/Z.PNG", "a/file.Jpeg", "top.png",
             "a/noext", "a/x.txt", ".hidden/x.png", "a/.x.png", "ü/é.png", "a/b/c/d.webp"]
    for n in names:
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / n).write_bytes(b"x" * len(n))  # the scan only lists and stats
    expected = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    with pytest.warns(UserWarning, match="directly in the folder"):
        scan, mode = scan_folder(tmp_path, None)
    assert scan.relpaths == expected and mode == "from-folder"
    assert scan.labels == [identity_of(r) or "" for r in expected]
    assert scan.size.tolist() == [(tmp_path / r).stat().st_size for r in expected]


@pytest.mark.parametrize("rel", ["a/b.png", "b.png", "./a/b.png", "a//b.png", "a/./b/c.png", "../a/b", "a/",
                                 ".", "", "a/b/", "/x/y.png", "a/../b.png", "./x.png"])
def test_identity_of_strings_agrees_with_purepath(rel):
    parts = PurePosixPath(rel).parts
    assert identity_of(rel) == (parts[0] if len(parts) >= 2 else None)


def test_patched_file_that_grew_too_much_is_written_complete_again(tmp_path, tiny_model, monkeypatch):
    src = make_identity_folders(tmp_path / "imgs", n_ids=4, per_id=5)
    out = tmp_path / "gal"
    Gallery.build(src, tiny_model, out=out, workers=0, progress=False).close()
    with h5py.File(out / "gallery.h5", "r") as f:
        assert f.attrs["rewrite_rows"] == 20 and 0 < f.attrs["rewrite_bytes"] <= (out / "gallery.h5").stat().st_size
    appended = []
    append = GalleryWriter.append
    monkeypatch.setattr(GalleryWriter, "append", lambda self, rel, *a, **kw: (appended.append(len(rel)),
                                                                              append(self, rel, *a, **kw))[1])
    _blob(src / "id_0" / "new.png", 1)
    _update(out)
    assert appended == [1]  # patched: only the new row
    with h5py.File(out / "gallery.h5", "a") as f:  # pretend patching has grown the file well past its size
        f.attrs["rewrite_bytes"] = 1000
        monkeypatch.setattr(write, "PATCH_SLACK_BYTES", 0)
    appended.clear()
    _blob(src / "id_1" / "new.png", 2)
    _update(out)
    assert sum(appended) == 22  # written complete: 21 old rows and the new one
    with h5py.File(out / "gallery.h5", "r") as f:
        assert f.attrs["rewrite_rows"] == 22 and f.attrs["rewrite_bytes"] > 1000
    appended.clear()
    _blob(src / "id_2" / "new.png", 3)
    _update(out)
    assert appended == [1]  # and patched again after that


def test_default_workers_follow_cores_and_file_size(tmp_path, monkeypatch):
    from siamsearch.gallery import engines

    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(b"x" * 1000)
    big.write_bytes(b"x" * (engines.SMALL_FILE_BYTES * 2))
    monkeypatch.setattr(engines.os, "cpu_count", lambda: 1)
    assert engines.default_workers([str(big)]) == 0
    monkeypatch.setattr(engines.os, "cpu_count", lambda: 2)  # small files decode in-process, photos in 2 workers
    assert engines.default_workers([str(small)] * 10) == 0 and engines.default_workers([str(big)] * 10) == 2
    assert engines.default_workers() == 2 and engines.default_workers([str(tmp_path / "gone")]) == 2
    monkeypatch.setattr(engines.os, "cpu_count", lambda: 16)
    assert engines.default_workers([str(small)]) == 4
    paths = [str(small)] * engines.INPROCESS_DECODE_MAX
    assert engines.decode_workers(None, paths) == 4 and engines.decode_workers(None, paths[:10]) == 0
    assert engines.decode_workers(3, paths) == 3


def test_embedding_layout_uses_embedding_workers_only_where_measured(tmp_path, monkeypatch):
    """Two cores, small files, workers not given, a job worth forking for: 2 processes decode and embed."""
    from siamsearch.gallery import engines

    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(b"x" * 1000)
    big.write_bytes(b"x" * (engines.SMALL_FILE_BYTES * 2))
    many, photos = [str(small)] * engines.INPROCESS_DECODE_MAX, [str(big)] * engines.INPROCESS_DECODE_MAX
    monkeypatch.setattr(engines.os, "cpu_count", lambda: 2)
    assert engines.embedding_layout(None, many) == {"workers": 0, "embed_workers": 2}
    assert engines.embedding_layout(None, many[:10]) == {"workers": 0, "embed_workers": 0}  # too few to fork for
    assert engines.embedding_layout(None, photos) == {"workers": 2, "embed_workers": 0}  # photos: decoding workers
    assert engines.embedding_layout(0, many) == {"workers": 0, "embed_workers": 0}  # --workers given: as asked
    assert engines.embedding_layout(2, many) == {"workers": 2, "embed_workers": 0}
    monkeypatch.setattr(engines.os, "cpu_count", lambda: 16)  # not measured on larger machines: as before
    assert engines.embedding_layout(None, many) == {"workers": 4, "embed_workers": 0}
