"""The on-disk merge of index parts (gallery/ondisk.py): the same index as Faiss's own merge and as one
in-memory IVF on the same vectors, and a merging process whose memory does not grow with the index."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from siamsearch.gallery import ondisk

REPO = Path(__file__).resolve().parents[1]


def trained_and_parts(folder: Path, x: np.ndarray, factory: str, cuts: list, seed: int = 0) -> tuple:
    """A trained empty index (on ``x``) and one part file per slice ``cuts[k]:cuts[k+1]`` of ``x``."""
    index = faiss.index_factory(x.shape[1], factory)
    index.train(x[np.random.default_rng(seed).permutation(len(x))[:4000]])
    trained = folder / ondisk.TRAINED_NAME
    faiss.write_index(index, str(trained))
    blocks = [(k, np.arange(a, b), x[a:b]) for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]
    return trained, ondisk.write_parts(trained, blocks, folder / "parts")


def faiss_merge(trained: Path, inputs: list, ivfdata: Path) -> faiss.Index:
    """The reference: ``OnDiskInvertedLists.merge_from_multiple`` over the inputs' lists, in order."""
    index = faiss.read_index(str(trained))
    ivf = faiss.extract_index_ivf(index)
    lists = faiss.InvertedListsPtrVector()
    for inp in inputs:
        lists.push_back(faiss.extract_index_ivf(inp).invlists)
    out = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(ivfdata))
    with ondisk.quiet_stdout():
        index.ntotal = ivf.ntotal = out.merge_from_multiple(lists.data(), lists.size(), False)
    ivf.replace_invlists(out, True)
    out.this.disown()
    return index


def layout(index: faiss.Index) -> tuple:
    """(size, capacity, offset) of every list and the file size: what the index header records."""
    od = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    return [(od.lists.at(j).size, od.lists.at(j).capacity, od.lists.at(j).offset) for j in range(od.nlist)], \
        od.totsize


def vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, d))[rng.integers(0, 64, n)] + 0.4 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF16,SQ8"])
@pytest.mark.parametrize("buffer_bytes", [1000, 1 << 24])  # many runs of lists (one list a run), one run
def test_merge_equals_faiss_merge_and_one_in_memory_ivf(tmp_path, monkeypatch, factory, buffer_bytes):
    monkeypatch.setattr(ondisk, "MERGE_BUFFER_BYTES", buffer_bytes)
    x = vectors(6000, 16)
    trained, parts = trained_and_parts(tmp_path, x, factory, [0, 2500, 2500, 4000, 6000])  # one part empty
    merged = ondisk.merge(trained, parts, tmp_path / "faiss.a.ivfdata")
    faiss.write_index(merged, str(tmp_path / "a.index"))
    ref = faiss_merge(trained, [faiss.read_index(str(p), faiss.IO_FLAG_MMAP) for p in parts],
                      tmp_path / "faiss.ref.ivfdata")
    faiss.write_index(ref, str(tmp_path / "ref.index"))
    assert (tmp_path / "faiss.a.ivfdata").read_bytes() == (tmp_path / "faiss.ref.ivfdata").read_bytes()
    assert layout(merged) == layout(ref) and merged.ntotal == ref.ntotal == len(x)
    memory = faiss.read_index(str(trained))
    memory.add_with_ids(x, np.arange(len(x)))
    reread = ondisk.read_ondisk(tmp_path / "a.index")
    q = vectors(50, 16, seed=1)
    for nprobe in (3, faiss.extract_index_ivf(memory).nlist):
        for idx in (memory, merged, reread):
            faiss.extract_index_ivf(idx).nprobe = nprobe
        want = memory.search(q, 10)
        for idx in (merged, reread):
            got = idx.search(q, 10)
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[0], want[0])


def test_merge_onto_a_base_with_spare_capacity_keeps_every_vector(tmp_path, monkeypatch):
    """An update merges new parts with the committed index; here the base's lists have capacity > size
    (Faiss's own on-disk adds round capacities up), so they are read list by list."""
    monkeypatch.setattr(ondisk, "MERGE_BUFFER_BYTES", 4096)
    x = vectors(5000, 16, seed=2)
    trained, parts = trained_and_parts(tmp_path, x, "IVF16,Flat", [3000, 4000, 5000])
    base = faiss.read_index(str(trained))
    ivf = faiss.extract_index_ivf(base)
    lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(tmp_path / "faiss.base.ivfdata"))
    ivf.replace_invlists(lists, True)
    lists.this.disown()
    with ondisk.quiet_stdout():
        base.add_with_ids(x[:3000], np.arange(3000))
    od = faiss.downcast_InvertedLists(ivf.invlists)
    assert any(od.lists.at(j).capacity > od.lists.at(j).size for j in range(ivf.nlist))
    faiss.write_index(base, str(tmp_path / "base.index"))
    del base
    merged = ondisk.merge(trained, parts, tmp_path / "faiss.m.ivfdata", base=tmp_path / "base.index")
    ref = faiss_merge(trained, [faiss.read_index(str(p), faiss.IO_FLAG_MMAP) for p in parts] +
                      [ondisk.read_ondisk(tmp_path / "base.index")], tmp_path / "faiss.ref.ivfdata")
    assert (tmp_path / "faiss.m.ivfdata").read_bytes() == (tmp_path / "faiss.ref.ivfdata").read_bytes()
    assert layout(merged) == layout(ref) and merged.ntotal == ref.ntotal
    memory = faiss.read_index(str(trained))
    memory.add_with_ids(x, np.arange(len(x)))
    for idx in (memory, merged):
        faiss.extract_index_ivf(idx).nprobe = 16
    q = vectors(40, 16, seed=3)
    np.testing.assert_array_equal(merged.search(q, 5)[0], memory.search(q, 5)[0])
    assert merged.ntotal == 5000


MERGE_CHILD = r"""
import json, sys
from pathlib import Path
from siamsearch.gallery import ondisk
ondisk.MERGE_BUFFER_BYTES = 2 << 20
work = Path(sys.argv[1])
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # peak RSS (VmHWM) := RSS now
before = status("VmRSS:")
merged = ondisk.merge(work / ondisk.TRAINED_NAME, sorted((work / "parts").glob("*.index")), work / "faiss.m.ivfdata")
print(json.dumps({"growth_mb": status("VmHWM:") - before, "ntotal": merged.ntotal}))
"""


def test_merge_memory_does_not_grow_with_the_index(tmp_path):
    """Peak RSS growth of a merging process stays far below the index (it was about twice the index when
    the parts and the output were memory-mapped and touched: their pages counted in the process's RSS)."""
    n, d = 300_000, 64
    x = np.random.default_rng(0).normal(size=(n, d)).astype("float32")
    trained_and_parts(tmp_path, x, "IVF64,Flat", list(range(0, n + 1, n // 10)))
    del x
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", MERGE_CHILD, str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    index_mb = (tmp_path / "faiss.m.ivfdata").stat().st_size / 2**20
    assert got["ntotal"] == n and index_mb > 70
    assert got["growth_mb"] < 0.4 * index_mb, (got, index_mb)
