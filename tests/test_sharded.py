"""Sharded galleries (Parquet shards + an IVF index merged on disk) built by the local engine, and the sizing rules."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_identity_folders
from siamsearch import Gallery
from siamsearch.cli import main
from siamsearch.core.errors import GalleryError, SiamsearchError
from siamsearch.gallery import ondisk

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
REPO = Path(__file__).resolve().parents[1]


def build(src, model, out, **kw):
    kw.setdefault("workers", 0)
    kw.setdefault("progress", False)
    kw.setdefault("shard_size", 32)
    return Gallery.build(src, model, out=out, **kw)


def same_neighbours(a, b, tol: float = 1e-5) -> bool:
    """Same top-k: equal distances, and the same images strictly inside the k-th distance (ties may swap)."""
    if not np.allclose(a.distances, b.distances, atol=tol):
        return False
    for da, pa_, pb in zip(a.distances, a.paths, b.paths):
        inside = da < da[-1] - tol
        if set(np.asarray(pa_)[inside]) != set(np.asarray(pb)[inside]):
            return False
    return True


def read_shards_plainly(folder: Path) -> dict:
    """relative path -> embedding, read with pyarrow only (no siamsearch), skipping tombstoned ids."""
    m = json.loads((folder / "shards.json").read_text())
    dead = set(pq.read_table(folder / m["deleted"])["id"].to_pylist()) if m["deleted"] else set()
    out = {}
    for s in m["shards"]:
        t = pq.read_table(folder / s["file"])
        assert t.schema.field("embedding").type == pa.list_(pa.float32(), m["dim"])
        for i, p, e in zip(t["id"].to_pylist(), t["path"].to_pylist(), t["embedding"].to_pylist()):
            if i not in dead:
                assert p not in out, f"{p} stored twice"
                out[p] = np.asarray(e, "float32")
    return out


def test_sharded_build_equals_hdf5_build_and_is_readable_without_siamsearch(tmp_path, tiny_model):
    src = make_identity_folders(tmp_path / "imgs", n_ids=6, per_id=20)  # 120 images -> 4 shards of 32
    h5 = build(src, tiny_model, tmp_path / "h5", shard_size=None)
    sh = build(src, tiny_model, tmp_path / "sh")
    m = json.loads((tmp_path / "sh" / "shards.json").read_text())
    assert [s["rows"] for s in m["shards"]] == [32, 32, 32, 24]
    ids = np.concatenate([pq.read_table(tmp_path / "sh" / s["file"])["id"].to_numpy() for s in m["shards"]])
    assert np.array_equal(ids, np.arange(120))  # dense ids from the allocator
    plain = read_shards_plainly(tmp_path / "sh")
    ref = dict(zip(h5.relpaths, h5.embeddings))
    assert set(plain) == set(ref)
    for p, e in plain.items():
        np.testing.assert_array_equal(e, ref[p])  # same model, same preprocessing: bit-equal on CPU
    q = h5.embeddings[::7]
    a, b = h5.search(q, k=10), sh.search(q, k=10)
    assert same_neighbours(a, b)
    assert sh.info()["index"]["kind"] == "ivf" and sh.info()["index"]["params"]["storage"] == "on-disk"
    assert sh.labels.tolist() == [sh.label_names.index(p.split("/")[0]) for p in sh.relpaths]


def test_update_adds_changes_removes_and_compacts(tmp_path, tiny_model):
    src = make_identity_folders(tmp_path / "imgs", n_ids=4, per_id=20)  # 80 images
    out = tmp_path / "sh"
    g = build(src, tiny_model, out)
    first = dict(zip(g.relpaths, g.ids.tolist()))
    g.close()
    make_identity_folders(tmp_path / "more", n_ids=1, per_id=5, seed=3)
    (tmp_path / "more" / "id_0").rename(src / "id_new")
    gone = sorted((src / "id_1").glob("*.png"))[:3]
    for p in gone:
        p.unlink()
    changed = src / "id_2" / "img_0.png"
    changed.write_bytes((src / "id_3" / "img_0.png").read_bytes())
    os.utime(changed, (time.time() + 5, time.time() + 5))
    g = Gallery.open(out)
    rep = g.update(workers=0, progress=False)
    assert (rep.added, rep.changed, rep.removed, rep.embedded, rep.index) == (5, 1, 3, 6, "updated")
    assert len(g) == 80 + 5 - 3
    assert all(first[p] == i for p, i in zip(g.relpaths, g.ids.tolist()) if p in first and "id_2/img_0" not in p)
    assert max(g.ids) >= 80  # new rows get new ids; kept rows keep theirs
    # removed rows never come back from a search, even searched by their own embedding
    res = g.search(g.embeddings, k=min(10, len(g)))
    found = {p for row in res.paths for p in row}
    assert not any(str(p) in found for p in gone)
    assert sorted(read_shards_plainly(out)) == sorted(g.relpaths)
    # nothing changed: nothing rewritten
    assert g.update(workers=0, progress=False).index == "unchanged"
    # past the tombstone share, the next update compacts the shards and rebuilds the index
    for p in sorted((src / "id_0").glob("*.png")):
        p.unlink()
    rep = g.update(workers=0, progress=False)
    assert rep.index == "rebuilt" and len(g) == 62
    assert json.loads((out / "shards.json").read_text())["deleted"] is None
    assert sorted(read_shards_plainly(out)) == sorted(g.relpaths)
    g.close()


CHILD = """
import sys, time
from siamsearch.core.embedder import load_model
from siamsearch import Gallery

model = load_model(sys.argv[2], device="cpu")
real = model.embed_files

def slow(*a, **kw):
    for batch in real(*a, **kw):
        time.sleep(0.05)
        yield batch

model.embed_files = slow
Gallery.build(sys.argv[1], model, out=sys.argv[3], batch_size=4, workers=0, progress=False, shard_size=16)
print("finished")
"""


def test_sigkill_mid_build_rerun_embeds_only_uncommitted_shards(tmp_path, tiny_model):
    src = make_identity_folders(tmp_path / "imgs", n_ids=6, per_id=16)  # 96 images, 6 shards of 16
    out = tmp_path / "sh"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), str(src), str(tiny_model), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal = out / ".pending" / "committed.jsonl"

    def committed() -> int:  # complete lines: one per committed shard
        try:
            return journal.read_text().count("\n")
        except OSError:
            return 0

    deadline = time.time() + 180
    while time.time() < deadline and committed() < 2:
        if proc.poll() is not None:
            pytest.fail("the build ended before it could be killed: " + proc.stderr.read().decode()[-2000:])
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = committed()
    assert 2 <= done < 6 and not (out / "shards.json").exists()
    g = build(src, tiny_model, out, shard_size=16)
    assert g.last_report.embedded == 96 - 16 * done  # only the uncommitted shards
    assert g.last_report.resumed == 16 * done
    clean = build(src, tiny_model, tmp_path / "clean", shard_size=16)
    assert sorted(zip(g.relpaths, g.ids.tolist())) == sorted(zip(clean.relpaths, clean.ids.tolist()))
    np.testing.assert_array_equal(g.embeddings, clean.embeddings)
    assert not (out / ".pending").exists()


def test_cli_build_info_query_on_sharded_gallery(tmp_path, tiny_model):
    src = make_identity_folders(tmp_path / "imgs", n_ids=3, per_id=10)
    out = tmp_path / "sh"
    runner = CliRunner()
    res = runner.invoke(main, ["index", "build", str(src), "--model", str(tiny_model), "--out", str(out),
                               "--shard-size", "8", "--no-progress", "--workers", "0", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["rows"] == 30  # stdout is clean JSON (Faiss's on-disk messages silenced)
    res = runner.invoke(main, ["index", "info", str(out), "--json"])
    info = json.loads(res.output)
    assert res.exit_code == 0 and info["size"] == 30
    shards = {k: v for k, v in info["files"].items() if k.startswith("shards/")}
    assert len(shards) == 4 and info["disk_bytes"] > sum(shards.values()) > 0  # shards counted in the disk size
    res = runner.invoke(main, ["query", str(src / "id_1" / "img_0.png"), "--index", str(out), "-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    assert "id_1/img_0.png" in res.output
    # an HDF5 gallery is not silently turned into a sharded one
    runner.invoke(main, ["index", "build", str(src), "--model", str(tiny_model), "--out", str(tmp_path / "h5"),
                         "--no-progress", "--workers", "0"])
    res = runner.invoke(main, ["index", "build", str(src), "--model", str(tiny_model), "--out", str(tmp_path / "h5"),
                               "--engine", "local", "--shard-size", "8", "--no-progress", "--workers", "0"])
    assert res.exit_code == 2 and "HDF5" in res.output and "Traceback" not in res.output


# --------------------------------------------------------------------------- the merged on-disk index


def synthetic_shards(folder: Path, n: int, d: int, shard: int, seed: int = 0):
    """A sharded store of ``n`` clustered unit vectors (no images) and its reader."""
    from siamsearch.gallery import shards as sh

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, d))
    x = centres[rng.integers(0, 64, n)] + 0.35 * rng.normal(size=(n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")
    entries = []
    for k, s in enumerate(range(0, n, shard)):
        ids = np.arange(s, min(s + shard, n))
        name = f"shards/shard-{k:06d}.parquet"
        (folder / "shards").mkdir(parents=True, exist_ok=True)
        sh.write_shard(folder / name, ids, [f"{i}.png" for i in ids], [""] * len(ids), ["0" * 64] * len(ids),
                       np.zeros(len(ids)), np.zeros(len(ids), "int64"), x[ids])
        entries.append(sh.ShardEntry(name, len(ids), int(ids[0]), int(ids[-1]) + 1).to_dict())
    manifest = {"attrs": {}, "dim": d, "next_id": n, "shards": entries, "label_names": [], "skipped": []}
    return x, manifest


def test_merged_on_disk_index_recall_and_removals(tmp_path):
    from siamsearch.gallery import ann
    from siamsearch.gallery.shards import ShardedReader

    n, d = 12000, 32
    x, manifest = synthetic_shards(tmp_path, n, d, shard=3000)
    removed = np.arange(0, n, 10)
    reader = ShardedReader(tmp_path, manifest, deleted=(removed, np.ones(len(removed), bool)))
    choice = ondisk.choose_index(n, d)
    assert choice.factory == f"IVF{choice.nlist},Flat" and choice.nlist >= 64
    source = reader.source(np.arange(n))  # every vector is indexed; the removed ones are filtered at search
    trained = tmp_path / ondisk.TRAINED_NAME
    import faiss

    faiss.write_index(ondisk.train_empty(source, choice), str(trained))
    parts = ondisk.write_parts(trained, source.shard_blocks(), tmp_path / "parts")
    assert len(parts) == 4
    merged = ondisk.merge(trained, parts, tmp_path / "faiss.x.ivfdata")
    faiss.write_index(merged, str(tmp_path / "faiss.index"))
    del merged
    index = ann.AnnIndex(ondisk.read_ondisk(tmp_path / "faiss.index"), choice.factory, {"removal": "tombstone"},
                         tombstones=removed)
    live = reader.source()
    ondisk.tune(index, live)
    assert index.ntotal == n and len(index) == n - len(removed)
    q = x[1::97]
    _, got = index.search(q, 10)
    keep = np.setdiff1d(np.arange(n), removed)
    d2 = ((q[:, None, :] - x[keep][None]) ** 2).sum(-1)
    truth = keep[np.argsort(d2, axis=1)[:, :10]]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), truth.tolist())])
    assert recall >= 0.95, recall
    assert not np.isin(got, removed).any()


def test_index_sizing_rules():
    flat = ondisk.choose_index(10_000_000, 128)
    assert flat.factory.endswith(",Flat") and flat.nlist & (flat.nlist - 1) == 0
    assert flat.index_bytes == 10_000_000 * (512 + 8) + flat.nlist * 128 * 4
    small = ondisk.choose_index(10_000_000, 128, max_memory=ondisk.parse_memory("2G"))
    assert small.factory.endswith(",SQ8") and small.index_bytes <= 2 << 30
    big = ondisk.choose_index(1_000_000_000, 128, max_memory=ondisk.parse_memory("64G"))
    assert "_HNSW32" in big.factory and ",PQ" in big.factory and big.index_bytes <= 64 << 30
    with pytest.raises(SiamsearchError, match="max-index-memory"):
        ondisk.choose_index(1_000_000_000, 128, max_memory=ondisk.parse_memory("1G"))
    assert ondisk.parse_memory("512M") == 512 << 20 and ondisk.parse_memory("1.5GiB") == int(1.5 * (1 << 30))
    with pytest.raises(SiamsearchError, match="not understood"):
        ondisk.parse_memory("lots")
    assert ondisk.lists_for(100) == 2  # at least 40 training vectors per list


def test_damaged_store_manifest_says_how_to_rebuild(tmp_path, tiny_model):
    src = make_identity_folders(tmp_path / "imgs", n_ids=2, per_id=8)
    build(src, tiny_model, tmp_path / "sh", shard_size=8).close()
    (tmp_path / "sh" / "shards.json").write_text("{broken")
    with pytest.raises(GalleryError, match="--overwrite"):
        Gallery.open(tmp_path / "sh")


def test_engine_ray_without_ray_installed_says_how_to_install(tmp_path, tiny_model, monkeypatch):
    src = make_identity_folders(tmp_path / "imgs", n_ids=2, per_id=4)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    res = CliRunner().invoke(main, ["index", "build", str(src), "--model", str(tiny_model), "--out",
                                    str(tmp_path / "g"), "--engine", "ray", "--no-progress"])
    assert res.exit_code == 2 and "pip install 'siamsearch[ray]'" in res.output and "Traceback" not in res.output


def test_scale_doc_sizing_table_is_the_one_the_code_computes():
    import importlib.util

    results = REPO / "benchmarks" / "results" / "distributed_build.json"
    if not results.is_file():
        pytest.skip("benchmarks/results/distributed_build.json not written yet")
    spec = importlib.util.spec_from_file_location("distributed_build", REPO / "benchmarks" / "distributed_build.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    text = (REPO / "docs" / "scale.md").read_text(encoding="utf-8")
    block = text[text.index(bench.TABLE_START) + len(bench.TABLE_START):text.index(bench.TABLE_END)]
    assert block.strip() == bench.scale_block(json.loads(results.read_text())).strip()


def test_evaluate_opens_a_sharded_gallery(tmp_path, tiny_model):
    from siamsearch import evaluate

    src = make_identity_folders(tmp_path / "imgs", n_ids=4, per_id=9)
    build(src, tiny_model, tmp_path / "sh", shard_size=10).close()
    m = evaluate(tiny_model, None, index=tmp_path / "sh", out=tmp_path / "r")
    c = m["index_comparison"]
    assert c["n_items"] == 36 and c["index_type"].startswith("IVF")
    # every list is probed on so small a gallery: the deployed index agrees with exact search
    assert c["deployed"]["map_at_r"] == pytest.approx(c["exact"]["map_at_r"])


def test_object_storage_url_is_refused_not_made_a_local_folder(tmp_path, tiny_model, monkeypatch):
    src = make_identity_folders(tmp_path / "imgs", n_ids=2, per_id=4)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["index", "build", str(src), "--model", str(tiny_model), "--out",
                                    "s3://bucket/gallery", "--shard-size", "4", "--no-progress"])
    assert res.exit_code == 2 and "mount the bucket" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "s3:").exists()
    with pytest.raises(SiamsearchError, match="is a URL"):
        Gallery.open("gs://bucket/gallery")


def test_a_filesystem_without_flock_is_named_not_taken_for_a_running_build(tmp_path, monkeypatch):
    import errno
    import fcntl

    from siamsearch.gallery import store

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(GalleryError, match="does not support flock") as e:
        store.FolderLock(tmp_path / "g")
    assert "another build" not in str(e.value)


def test_journal_writes_the_plan_once_and_appends_each_commit(tmp_path):
    """The plan (every file of the run) is written once; each committed shard appends one fsynced line. A
    line cut short by a crash is ignored, a journal of another session is discarded, and a journal in the
    earlier format (commits inside run.json) is still read."""
    from siamsearch.gallery.shards import ShardEntry
    from siamsearch.gallery.sharded import ShardJournal

    folder = tmp_path / "g"
    (folder / "shards").mkdir(parents=True)
    args = ("fp", "/src", 8, "from-folder")
    j = ShardJournal(folder, *args)
    tasks = j.tasks([f"a/{i}.png" for i in range(10)], 4, 0, 0)
    assert [len(t.relpaths) for t in tasks] == [4, 4, 2]
    run_json = (folder / ".pending" / "run.json").read_bytes()
    for t in tasks[:2]:
        (folder / t.name).write_bytes(b"shard")
        j.commit(ShardEntry(t.name, len(t.relpaths), t.first_id, t.first_id + len(t.relpaths)))
    assert (folder / ".pending" / "run.json").read_bytes() == run_json  # not rewritten by the commits
    lines = (folder / ".pending" / "committed.jsonl").read_text().splitlines()
    assert [json.loads(line)["file"] for line in lines] == [t.name for t in tasks[:2]]
    with open(folder / ".pending" / "committed.jsonl", "a") as f:
        f.write('{"file": "shards/shard-0000')  # a crash in the middle of a third line
    again = ShardJournal(folder, *args)
    assert [e.file for e in again.committed] == [t.name for t in tasks[:2]]
    assert [t.name for t in again.tasks([f"a/{i}.png" for i in range(8, 10)], 4, 0, 0)] == [tasks[2].name]
    assert ShardJournal(folder, "other-model", "/src", 8, "from-folder").committed == []
    old_format = {"session": dict(zip(("fingerprint", "source_dir", "dim", "label_mode"), args)),
                  "committed": [e.to_dict() for e in again.committed], "plan": []}
    (folder / ".pending" / "committed.jsonl").unlink()
    (folder / ".pending" / "run.json").write_text(json.dumps(old_format))
    assert [e.file for e in ShardJournal(folder, *args).committed] == [t.name for t in tasks[:2]]
    # a journal of another precision is discarded (its shards would mix precisions under one record); one
    # written before journals recorded the precision (above) is read in any
    fp32 = ShardJournal(folder, *args, "fp32")
    fp32.save()
    assert json.loads((folder / ".pending" / "run.json").read_text())["session"]["precision"] == "fp32"
    assert ShardJournal(folder, *args, "bf16").committed == []
    assert [e.file for e in ShardJournal(folder, *args, "fp32").committed] == [t.name for t in tasks[:2]]


def test_failed_overwrite_leaves_the_published_shards_untouched(tmp_path, tiny_model, monkeypatch):
    """An --overwrite build that fails (or is killed) after writing shards must not write over the shards of
    the gallery it replaces: that gallery stays the committed one until the new build commits."""
    from siamsearch.core.checkpoint import save_checkpoint
    from siamsearch.core.config import ModelConfig
    from siamsearch.core.model import EmbeddingNet

    torch = pytest.importorskip("torch")
    src = make_identity_folders(tmp_path / "imgs", n_ids=3, per_id=10)
    with build(src, tiny_model, tmp_path / "sh", shard_size=10) as g:
        old_fingerprint = g.fingerprint
    before = read_shards_plainly(tmp_path / "sh")
    torch.manual_seed(1)
    cfg = ModelConfig(input_size=16, embedding_dim=8)
    other = tmp_path / "other.pt"
    save_checkpoint(other, cfg, EmbeddingNet(cfg).state_dict(), {"note": "another untrained model"})

    def fail_after_the_shards(*a, **kw):
        raise SiamsearchError("stopped after the shards were written")

    with monkeypatch.context() as m:
        m.setattr(ondisk, "train_empty", fail_after_the_shards)
        with pytest.raises(SiamsearchError, match="stopped after"):
            build(src, other, tmp_path / "sh", shard_size=10, overwrite=True)
    after = read_shards_plainly(tmp_path / "sh")
    assert set(after) == set(before)
    for p, e in after.items():
        np.testing.assert_array_equal(e, before[p])  # still the published model's embeddings
    with Gallery.open(tmp_path / "sh") as g:
        q = np.stack([before[p] for p in sorted(before)])
        exact = np.sqrt(np.maximum(((q[:, None] - q[None]) ** 2).sum(-1), 0))
        np.testing.assert_allclose(g.search(q, k=5).distances, np.sort(exact, axis=1)[:, :5], atol=1e-5)
    g = build(src, other, tmp_path / "sh", shard_size=10, overwrite=True)  # the rerun then replaces it whole
    assert len(g) == 30 and g.fingerprint != old_fingerprint and len(read_shards_plainly(tmp_path / "sh")) == 30
    g.close()


@pytest.mark.parametrize("factory, answer", [("IVF", "IVF"), ("IVF4", "IVF4,Flat"), ("IVF4,PQ32", None)])
def test_factory_shorthands_and_misfits_on_a_sharded_gallery(tmp_path, tiny_model, factory, answer):
    """The help's IVF / IVF4096 shorthands work; a factory that does not fit d (8 here) is a clear error given
    before any image is embedded, not a Faiss traceback after."""
    src = make_identity_folders(tmp_path / "imgs", n_ids=2, per_id=20)
    args = ["index", "build", str(src), "--model", str(tiny_model), "--out", str(tmp_path / "g"), "--shard-size",
            "16", "--factory", factory, "--no-progress"]
    res = CliRunner().invoke(main, args)
    if answer is None:
        assert res.exit_code == 2 and isinstance(res.exception, SystemExit)  # no traceback
        assert "Faiss cannot build index 'IVF4,PQ32'" in res.output
        assert not list((tmp_path / "g").glob("shards/*.parquet"))  # refused before embedding
    else:
        assert res.exit_code == 0, res.output
        with Gallery.open(tmp_path / "g") as g:
            assert g.info()["index"]["factory"].startswith(answer)


def test_too_many_lists_for_the_images_says_which_factory_to_give(tmp_path, tiny_model):
    """It advised "--engine local" to a user already on --engine local (--shard-size builds shards too)."""
    src = make_identity_folders(tmp_path / "imgs", n_ids=2, per_id=10)
    res = CliRunner().invoke(main, ["index", "build", str(src), "--model", str(tiny_model), "--out",
                                    str(tmp_path / "g"), "--shard-size", "8", "--factory", "IVF1024,Flat",
                                    "--no-progress"])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)
    assert "only 20 vectors to train IVF1024,Flat" in res.output and "--factory auto" in res.output
    assert "--engine local" not in res.output



def test_folder_of_only_unreadable_images_says_so_in_the_sharded_format(tmp_path, tiny_model):
    src = tmp_path / "imgs" / "a"
    src.mkdir(parents=True)
    (src / "x.png").write_bytes(b"not an image")
    (src / "y.png").write_bytes(b"")
    res = CliRunner().invoke(main, ["index", "build", str(src.parent), "--model", str(tiny_model), "--out",
                                    str(tmp_path / "g"), "--shard-size", "4", "--no-progress"])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit)  # no traceback
    assert "none of the 2 image files" in res.output and "vectors to train" not in res.output


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_or_missing_shard_is_a_clear_error_and_overwrite_repairs_it(tmp_path, tiny_model, damage):
    """A truncated shard gave a pyarrow ArrowInvalid traceback on info, query and update."""
    src = make_identity_folders(tmp_path / "imgs", n_ids=2, per_id=8)
    build(src, tiny_model, tmp_path / "sh", shard_size=8).close()
    shard = tmp_path / "sh" / "shards" / "shard-000001.parquet"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:300])
    else:
        shard.unlink()
    for args in (["index", "info", str(tmp_path / "sh")], ["index", "update", str(tmp_path / "sh"), "--no-progress"],
                 ["query", str(src / "id_0" / "img_0.png"), "--index", str(tmp_path / "sh")]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output  # no traceback
        assert "shard-000001.parquet cannot be read" in res.output and "--overwrite" in res.output
    g = build(src, tiny_model, tmp_path / "sh", shard_size=8, overwrite=True)
    assert len(g) == 16 and set(read_shards_plainly(tmp_path / "sh")) == set(g.relpaths)
    g.close()


def test_info_counts_deleted_rows_and_an_interrupted_run_of_a_sharded_gallery(tmp_path, tiny_model, monkeypatch):
    """info said "1 deleted rows awaiting compaction" for the id of an unreadable file (a gap, never a row, never
    compacted), and never said that a sharded run was interrupted (it looked for the HDF5 journal's segments)."""
    from siamsearch.gallery import sharded

    src = make_identity_folders(tmp_path / "imgs", n_ids=2, per_id=8)
    (src / "id_0" / "broken.png").write_bytes(b"not an image")
    build(src, tiny_model, tmp_path / "sh", shard_size=8).close()
    info = json.loads(CliRunner().invoke(main, ["index", "info", str(tmp_path / "sh"), "--json"]).output)
    assert info["size"] == 16 and info["deleted_rows"] == 0 and not info["interrupted_run_pending"]
    (src / "id_1" / "img_0.png").unlink()
    make_identity_folders(tmp_path / "more", n_ids=1, per_id=8, seed=5)
    for p in (tmp_path / "more" / "id_0").iterdir():
        p.rename(src / "id_1" / f"new_{p.name}")

    def killed(*a, **kw):
        raise SiamsearchError("killed before the publish")

    with monkeypatch.context() as m:
        m.setattr(sharded, "_publish", killed)
        with pytest.raises(SiamsearchError, match="killed"):
            Gallery.open(tmp_path / "sh").update(workers=0, progress=False)
    info = json.loads(CliRunner().invoke(main, ["index", "info", str(tmp_path / "sh"), "--json"]).output)
    assert info["interrupted_run_pending"] and info["size"] == 16
    with Gallery.open(tmp_path / "sh") as g:
        g.update(workers=0, progress=False)
    info = json.loads(CliRunner().invoke(main, ["index", "info", str(tmp_path / "sh"), "--json"]).output)
    assert info["size"] == 23 and info["deleted_rows"] == 1 and not info["interrupted_run_pending"]


@pytest.mark.parametrize("edit", ["next_id_too_small", "overlapping_ids", "wrong_dim"])
def test_hand_edited_shard_id_ranges_are_a_clear_error(tmp_path, tiny_model, edit):
    """next_id below the shards' ids gave an IndexError traceback; overlapping id ranges were read silently; a
    dim other than the model's was accepted by index info and query."""
    src = make_identity_folders(tmp_path / "imgs", n_ids=2, per_id=8)
    build(src, tiny_model, tmp_path / "sh", shard_size=8).close()
    path = tmp_path / "sh" / "shards.json"
    m = json.loads(path.read_text())
    if edit == "next_id_too_small":
        m["next_id"] = 3
    elif edit == "wrong_dim":
        m["dim"] = int(m["dim"]) + 1
    else:
        m["shards"][1]["first_id"] = 0
    path.write_text(json.dumps(m))
    for args in (["index", "info", str(tmp_path / "sh")], ["index", "update", str(tmp_path / "sh"), "--no-progress"],
                 ["query", str(src / "id_0" / "img_0.png"), "--index", str(tmp_path / "sh")]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output  # no traceback
        assert "shards.json is missing or damaged" in res.output and "--overwrite" in res.output


@pytest.mark.parametrize("extra, says", [(["--address", "auto"], "add --engine ray"),
                                         (["--max-index-memory", "1G"], "add --shard-size N")])
def test_scale_options_that_would_be_ignored_are_refused(tmp_path, tiny_model, extra, says):
    """--address without --engine ray, and --max-index-memory on an HDF5 build, were silently ignored."""
    src = make_identity_folders(tmp_path / "imgs", n_ids=2, per_id=4)
    res = CliRunner().invoke(main, ["index", "build", str(src), "--model", str(tiny_model), "--out",
                                    str(tmp_path / "g"), "--no-progress"] + extra)
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit) and says in res.output
    assert not (tmp_path / "g" / "gallery.h5").exists()


def test_index_budget_too_small_names_sizes_a_user_can_read():
    """It said 'need at least 0.00 GiB ... (it is 0.00 GiB)' for small budgets."""
    n, d = 300, 8
    sq8_bytes = n * (d + 8) + ondisk.lists_for(n) * d * 4  # SQ8 codes: d bytes a vector, 8-byte ids, quantizer
    with pytest.raises(SiamsearchError) as e:
        ondisk.choose_index(n, d, 1024)
    assert f"need at least {sq8_bytes / 1024:.1f} KiB" in str(e.value) and "(it is 1.0 KiB)" in str(e.value)


def test_opening_a_folder_whose_first_build_was_interrupted_says_to_rerun_it(tmp_path, tiny_model, monkeypatch):
    """It said '... is not a gallery (no gallery.h5); build one' of a sharded folder whose first build was killed."""
    from siamsearch.gallery import sharded

    src = make_identity_folders(tmp_path / "imgs", n_ids=2, per_id=8)

    def killed(*a, **kw):
        raise SiamsearchError("killed before the publish")

    with monkeypatch.context() as m:
        m.setattr(sharded, "_publish", killed)
        with pytest.raises(SiamsearchError, match="killed"):
            build(src, tiny_model, tmp_path / "sh", shard_size=8)
    with pytest.raises(GalleryError, match="first build was interrupted") as e:
        Gallery.open(tmp_path / "sh")
    assert "gallery.h5" not in str(e.value)
    g = build(src, tiny_model, tmp_path / "sh", shard_size=8)
    assert len(g) == 16 and g.last_report.resumed == 16
    g.close()


def _lists_match_the_quantizer(folder) -> bool:
    """Every live vector sits in the inverted list that faiss.index's own quantizer assigns it to."""
    import faiss

    index = faiss.read_index(str(folder / "faiss.index"), faiss.IO_FLAG_ONDISK_SAME_DIR)
    ivf = faiss.extract_index_ivf(index)
    where = {}
    for lst in range(ivf.nlist):
        n = ivf.invlists.list_size(lst)
        if n:
            for i in faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), n).tolist():
                where[i] = lst
    with Gallery.open(folder) as g:
        _, assigned = ivf.quantizer.search(np.ascontiguousarray(g.embeddings), 1)
        return all(where[i] == a for i, a in zip(g.ids.tolist(), assigned[:, 0].tolist()))


def test_update_after_a_killed_overwrite_does_not_merge_with_its_quantizer(tmp_path, tiny_model, monkeypatch):
    """An --overwrite killed after training replaced faiss.trained.index; the next update of the still-published
    gallery merged its old lists under the new quantizer (vectors in lists their centroids do not own)."""
    from siamsearch.core.checkpoint import save_checkpoint
    from siamsearch.core.config import ModelConfig
    from siamsearch.core.model import EmbeddingNet

    torch = pytest.importorskip("torch")
    src = make_identity_folders(tmp_path / "imgs", n_ids=4, per_id=30)
    build(src, tiny_model, tmp_path / "sh", shard_size=40, factory="IVF8,Flat").close()
    torch.manual_seed(1)
    cfg = ModelConfig(input_size=16, embedding_dim=8)
    save_checkpoint(tmp_path / "other.pt", cfg, EmbeddingNet(cfg).state_dict(), {"note": "another model"})

    def killed(*a, **kw):
        raise SiamsearchError("killed after training")

    with monkeypatch.context() as m:
        m.setattr(ondisk, "write_parts", killed)
        with pytest.raises(SiamsearchError, match="killed"):
            build(src, tmp_path / "other.pt", tmp_path / "sh", shard_size=40, factory="IVF8,Flat", overwrite=True)
    make_identity_folders(tmp_path / "more", n_ids=1, per_id=10, seed=7)
    for p in (tmp_path / "more" / "id_0").iterdir():
        p.rename(src / "id_0" / f"new_{p.name}")
    with Gallery.open(tmp_path / "sh") as g:
        report = g.update(workers=0, progress=False)
    assert report.added == 10 and report.index == "rebuilt"
    assert _lists_match_the_quantizer(tmp_path / "sh")
