"""`--engine ray`: a Ray Data pipeline embedding into Parquet shards, on a small local cluster.

Skipped when Ray is not installed (``pip install 'siamsearch[ray]'``). One local cluster
(2 CPUs, no dashboard) is shared by the tests of this module.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_identity_folders
from test_sharded import same_neighbours
from siamsearch import Gallery
from siamsearch.core.errors import SiamsearchError

ray = pytest.importorskip("ray")
pytest.importorskip("pyarrow")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """200 images in 8 identity folders and a tiny untrained model."""
    import torch

    from siamsearch.core.checkpoint import save_checkpoint
    from siamsearch.core.config import ModelConfig
    from siamsearch.core.model import EmbeddingNet

    root = tmp_path_factory.mktemp("ray")
    src = make_identity_folders(root / "imgs", n_ids=8, per_id=25, size=20)
    torch.manual_seed(0)
    cfg = ModelConfig(input_size=16, embedding_dim=8)
    save_checkpoint(root / "tiny.pt", cfg, EmbeddingNet(cfg).state_dict(), {"note": "untrained test model"})
    return root, src, root / "tiny.pt"


def build(src, model, out, **kw):
    kw.setdefault("workers", 0)
    kw.setdefault("progress", False)
    return Gallery.build(src, model, out=out, **kw)


def test_ray_build_equals_local_build(cluster, setup):
    root, src, model = setup
    local = build(src, model, root / "local")  # the default engine and format (HDF5)
    rg = build(src, model, root / "ray", engine="ray", shard_size=64)
    assert rg.last_report.embedded == 200 and len(rg) == 200
    m = json.loads((root / "ray" / "shards.json").read_text())
    assert [s["rows"] for s in m["shards"]] == [64, 64, 64, 8]
    ref = dict(zip(local.relpaths, local.embeddings))
    got = dict(zip(rg.relpaths, rg.embeddings))
    assert set(got) == set(ref)
    a = np.stack([ref[p] for p in sorted(ref)])
    b = np.stack([got[p] for p in sorted(ref)])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.9999
    np.testing.assert_array_equal(a, b)  # fp32 on CPU, same preprocessing and batches: bit-equal
    q = local.embeddings[::9]
    assert same_neighbours(local.search(q, k=10), rg.search(q, k=10))
    local.close()
    rg.close()


@pytest.mark.slow  # 2 Ray builds (~2 min on 2 loaded cores); the local engine's SIGKILL test covers the journal by default
def test_ray_driver_dies_mid_build_rerun_embeds_only_uncommitted_shards(cluster, setup, monkeypatch):
    from siamsearch.gallery import sharded

    root, src, model = setup
    out = root / "killed"
    real = sharded._write_result
    calls = []

    def dies_after_two(*a, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the driver stops between two shard commits
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(sharded, "_write_result", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        build(src, model, out, engine="ray", shard_size=40)
    monkeypatch.undo()
    assert not (out / "shards.json").exists()
    assert (out / ".pending" / "committed.jsonl").read_text().count("\n") == 2
    g = build(src, model, out, engine="ray", shard_size=40)
    assert g.last_report.embedded == 200 - 2 * 40 and g.last_report.resumed == 80  # 3 of 5 shards embedded
    clean = build(src, model, root / "clean", shard_size=40)  # uninterrupted, local engine
    assert sorted(zip(g.relpaths, g.ids.tolist())) == sorted(zip(clean.relpaths, clean.ids.tolist()))
    np.testing.assert_array_equal(g.embeddings, clean.embeddings)
    g.close()
    clean.close()


@pytest.mark.slow
def test_ray_update_embeds_only_new_files(cluster, setup, tmp_path):
    import shutil

    root, src, model = setup
    mine = tmp_path / "imgs"
    shutil.copytree(src, mine)
    g = build(mine, model, tmp_path / "g", engine="ray", shard_size=64)
    make_identity_folders(tmp_path / "more", n_ids=1, per_id=6, seed=5, size=20)
    (tmp_path / "more" / "id_0").rename(mine / "id_new")
    gone = {p.relative_to(mine).as_posix() for p in sorted((mine / "id_3").glob("*.png"))[:4]}
    for p in gone:
        (mine / p).unlink()
    rep = g.update(engine="ray", workers=0, progress=False)
    assert (rep.added, rep.removed, rep.embedded, rep.index) == (6, 4, 6, "updated")
    assert len(g) == 202 and not gone & set(g.relpaths)
    assert sorted(g.relpaths) == sorted(p.relative_to(mine).as_posix() for p in mine.rglob("*.png"))
    g.close()


def test_model_unreadable_on_worker_is_a_clear_error(cluster, setup, tmp_path):
    from siamsearch.core.embedder import load_model

    root, src, model = setup
    copy = tmp_path / "model.pt"
    copy.write_bytes(model.read_bytes())
    embedder = load_model(copy, device="cpu")  # the driver has the model; the workers will not
    copy.write_bytes(b"not a checkpoint")
    with pytest.raises(SiamsearchError, match="cannot be loaded on a Ray worker"):
        build(src, embedder, tmp_path / "g", engine="ray", shard_size=64)
    assert not (tmp_path / "g" / "shards.json").exists()


def test_unreachable_address_is_a_clear_error(setup, tmp_path):
    from click.testing import CliRunner

    from siamsearch.cli import main

    root, src, model = setup
    res = CliRunner().invoke(main, ["index", "build", str(src), "--model", str(model), "--out", str(tmp_path / "g"),
                                    "--engine", "ray", "--address", "127.0.0.1:1", "--no-progress"])
    assert res.exit_code == 2 and "cannot reach a Ray cluster at 127.0.0.1:1" in res.output
    assert "Traceback" not in res.output


@pytest.mark.slow
def test_worker_killed_mid_build_shard_is_retried_not_half_written(cluster, setup, tmp_path):
    root, src, model = setup
    out = tmp_path / "g"
    killed = []

    def actor_pids() -> list:
        """Ray names an actor's process after its class (``ray::MapWorker(...EmbedActor)``)."""
        pids = []
        for d in Path("/proc").iterdir():
            try:
                if d.name.isdigit() and b"EmbedActor" in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
        return pids

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            journal = out / ".pending" / "committed.jsonl"
            started = journal.exists() and journal.read_text().count("\n") > 0
            for pid in actor_pids() if started else []:
                os.kill(pid, 9)  # mid-build: one shard is written, the others are in flight
                killed.append(pid)
                return
            time.sleep(0.2)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    g = build(src, model, out, engine="ray", shard_size=32)
    t.join()
    assert killed, "no embedding actor was found to kill"
    assert len(g) == 200 and g.last_report.embedded == 200
    assert sorted(g.relpaths) == sorted(p.relative_to(src).as_posix() for p in src.rglob("*.png"))
    g.close()


TWO_NODES = """
import json, sys
from ray.cluster_utils import Cluster
import ray
from siamsearch import Gallery

c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
c.add_node(num_cpus=2)
ray.init(address=c.address)
c.wait_for_nodes()
g = Gallery.build(sys.argv[1], sys.argv[2], out=sys.argv[3], engine="ray", shard_size=16, workers=0,
                  progress=False)
m = json.load(open(sys.argv[3] + "/shards.json"))
print(json.dumps({"nodes": sorted({n for s in m["shards"] for n in s["nodes"]}), "rows": len(g),
                  "cluster": len(ray.nodes())}))
ray.shutdown()
c.shutdown()
"""


@pytest.mark.slow
def test_two_node_cluster_spreads_shards_over_both(setup, tmp_path):
    root, src, model = setup
    script = tmp_path / "two.py"
    script.write_text(textwrap.dedent(TWO_NODES))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(script), str(src), str(model), str(tmp_path / "g")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["cluster"] == 2 and out["rows"] == 200
    assert len(out["nodes"]) == 2, out


@pytest.mark.parametrize("as_objects", [False, True])
def test_collect_groups_rows_into_tasks_in_order(as_objects):
    """The driver's grouping of the pipeline's rows (no cluster needed): batches that span tasks, rows out
    of order within a task, a row delivered twice (a retried block: the last one counts), failed rows, and
    embeddings as a [b, d] array or one array per row."""
    from siamsearch.gallery.engines import ShardTask, _collect

    tasks = [ShardTask("shards/a.parquet", 0, ["a0", "a1", "a2"]), ShardTask("shards/b.parquet", 3, ["b0", "b1"])]
    rows = [(0, 1, True, "", "h01", 1.0), (0, 0, True, "", "h00", 0.0), (0, 1, True, "", "h01", 1.5),
            (0, 2, False, "corrupt", "", 9.0), (1, 1, True, "", "h11", 11.0), (1, 0, True, "", "h10", 10.0)]

    def batch(part):
        emb = np.array([[r[5], -r[5]] for r in part], "float32")
        return {"task": np.array([r[0] for r in part]), "pos": np.array([r[1] for r in part]),
                "ok": np.array([r[2] for r in part]), "reason": np.array([r[3] for r in part], dtype=object),
                "sha": np.array([r[4] for r in part], dtype=object),
                "embedding": np.array(list(emb) + [None], dtype=object)[:-1] if as_objects else emb,
                "node": np.array(["n1"] * len(part), dtype=object)}

    class FakeDataset:
        def iter_batches(self, batch_size, batch_format):
            return iter([batch(rows[:2]), batch(rows[2:5]), batch(rows[5:])])

    out = list(_collect(FakeDataset(), tasks, batch_size=3))
    assert [r.task.name for r in out] == ["shards/a.parquet", "shards/b.parquet"]
    a, b = out
    assert a.relpaths == ["a0", "a1"] and a.sha256 == ["h00", "h01"] and a.failures == [("a2", "corrupt")]
    np.testing.assert_array_equal(a.embeddings, [[0.0, -0.0], [1.5, -1.5]])  # the second delivery of a1
    assert b.relpaths == ["b0", "b1"] and b.sha256 == ["h10", "h11"] and b.nodes == ["n1"]
    assert a.embeddings.dtype == np.float32 and a.embeddings.flags.c_contiguous


def test_ray_decoding_matches_the_local_engine(tmp_path):
    """The Ray task's read -> hash -> decode -> preprocess gives the pixels the local engine embeds (a large
    JPEG is decoded at reduced scale by both) and the hash of the file's bytes; unreadable files get the
    local engine's reasons."""
    import hashlib

    from PIL import Image

    from siamsearch.core.config import ModelConfig
    from siamsearch.core.preprocess import build_transform
    from siamsearch.gallery.engines import _decode_batch

    cfg = ModelConfig(input_size=16, embedding_dim=8, in_channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    rng = np.random.default_rng(0)
    big = tmp_path / "big.jpg"
    Image.fromarray(rng.integers(0, 256, (120, 96, 3), dtype=np.uint8)).save(big, quality=90)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    paths = [str(big), str(tmp_path / "bad.png"), str(tmp_path / "missing.png")]
    out = _decode_batch({"task": np.zeros(3, int), "pos": np.arange(3), "path": np.array(paths, dtype=object)},
                        cfg.to_json())
    local = build_transform(cfg, train=False)(str(big)).numpy()  # what the local engine embeds for a path
    np.testing.assert_array_equal(out["pixels"][0], local)
    assert out["sha"][0] == hashlib.sha256(big.read_bytes()).hexdigest()
    assert out["ok"].tolist() == [True, False, False]
    assert out["reason"][1].startswith("not an image") and out["reason"][2] == "missing or not readable"
