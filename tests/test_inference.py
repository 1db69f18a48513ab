"""Inference precision, compile fallback and the one embedding loop (siamsearch.core.inference)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from siamsearch.core.checkpoint import load_checkpoint, save_checkpoint
from siamsearch.core.config import ModelConfig
from siamsearch.core.embedder import Embedder
from siamsearch.core.errors import SiamsearchError
from siamsearch.core.inference import (COMPILE_MIN_IMAGES, InferenceRunner, cpu_has_native_bf16, resolve_precision,
                                       should_compile, stream_embeddings)


def _images(n: int, size: int = 32, seed: int = 0, identities: int = 50) -> list:
    """Grey uint8 images: a blob per identity (seeded position and width) plus noise per image."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(6, size - 6, size=(identities, 2))
    widths = rng.uniform(6, 30, size=identities)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        k = i % identities
        img = 255 * np.exp(-((yy - centres[k, 0]) ** 2 + (xx - centres[k, 1]) ** 2) / widths[k])
        out.append(np.clip(img + rng.normal(0, 25, (size, size)), 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from siamsearch.core.model import EmbeddingNet

    torch.manual_seed(0)
    cfg = ModelConfig(input_size=32, embedding_dim=64)
    path = tmp_path_factory.mktemp("m") / "m.pt"
    save_checkpoint(path, cfg, EmbeddingNet(cfg).state_dict(), {"note": "untrained"})
    return path


def test_resolve_precision(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("SIAMSEARCH_CPU_BF16", "1")
    assert cpu_has_native_bf16() and resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setenv("SIAMSEARCH_CPU_BF16", "0")
    assert not cpu_has_native_bf16() and resolve_precision("auto", cpu) == "fp32"
    for p in ("fp32", "bf16", "fp16"):
        assert resolve_precision(p.upper(), cpu) == p
    with pytest.raises(SiamsearchError, match="unknown precision"):
        resolve_precision("int8", cpu)
    # a bad $SIAMSEARCH_PRECISION was reported as "unknown precision None"
    from siamsearch.core import inference

    monkeypatch.setitem(inference._default_precision, "value", "int8")
    with pytest.raises(SiamsearchError, match=r"unknown precision 'int8' \(from \$SIAMSEARCH_PRECISION\)"):
        resolve_precision(None, cpu)


def test_compile_threshold():
    assert not should_compile("auto", COMPILE_MIN_IMAGES - 1, "cuda") and should_compile("auto", COMPILE_MIN_IMAGES, "cuda")
    assert not should_compile("auto", 10**9, "cpu") and not should_compile("auto", 10**9)  # never on the CPU
    assert should_compile(True, 1) and not should_compile(False, 10**9)
    with pytest.raises(SiamsearchError):
        should_compile("always", 1)


def test_bf16_embeddings_agree_with_fp32(model_path):
    """Issue 14 accuracy bar: cosine >= 0.999, same nearest neighbour for >= 99.5 % of queries (a bf16
    gallery searched with fp32 queries and the reverse), verification decisions unchanged away from
    the threshold."""
    ck = load_checkpoint(model_path)
    fp32 = Embedder(ck, device="cpu", precision="fp32")
    bf16 = Embedder(ck, device="cpu", precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    gallery = _images(600, seed=1, identities=600)  # 600 distinct images
    rng = np.random.default_rng(3)
    queries = [np.clip(g + rng.normal(0, 12, g.shape), 0, 255).astype(np.uint8) for g in gallery[:400]]
    g32, g16 = fp32.embed(gallery, batch_size=128), bf16.embed(gallery, batch_size=128)
    q32, q16 = fp32.embed(queries, batch_size=128), bf16.embed(queries, batch_size=128)
    assert np.allclose(np.linalg.norm(g16, axis=1), 1.0, atol=1e-5)
    cos = np.r_[(g32 * g16).sum(1), (q32 * q16).sum(1)]
    assert cos.min() >= 0.999, cos.min()

    def nn(q, g):  # independent brute force
        return np.argmin(((q[:, None, :].astype(np.float64) - g[None].astype(np.float64)) ** 2).sum(-1), axis=1)

    ref = nn(q32, g32)
    for q, g in ((q32, g16), (q16, g32), (q16, g16)):
        assert np.mean(nn(q, g) == ref) >= 0.995
    # verification: genuine pairs (query i, its gallery image) and impostors (query i, gallery i + 7);
    # threshold at the median fp32 distance; "away" = farther from it than 5 % of that distance
    other = (np.arange(400) + 7) % 600
    d32 = np.r_[np.linalg.norm(q32 - g32[:400], axis=1), np.linalg.norm(q32 - g32[other], axis=1)]
    d16 = np.r_[np.linalg.norm(q16 - g32[:400], axis=1), np.linalg.norm(q16 - g32[other], axis=1)]
    thr = float(np.median(d32))
    away = np.abs(d32 - thr) > 0.05 * thr
    assert away.mean() > 0.5
    assert np.array_equal((d32 <= thr)[away], (d16 <= thr)[away])


def test_compile_failure_falls_back_to_eager(model_path, monkeypatch):
    ck = load_checkpoint(model_path)
    emb = Embedder(ck, device="cpu", precision="fp32", compile=False)
    x = torch.stack([emb.transform(im) for im in _images(4)])
    ref = emb.embed_tensor(x)

    def broken(net, **kw):
        def fn(x):
            raise RuntimeError("no compiler here")
        return fn

    monkeypatch.setattr(torch, "compile", broken)
    runner = InferenceRunner(emb.net, emb.device, "fp32")
    assert runner.compile()
    with pytest.warns(RuntimeWarning, match="eager"):
        out = runner(x)
    assert not runner.compiled and np.allclose(out, ref, atol=1e-6)


def test_stream_reports_failures_in_order(model_path):
    ck = load_checkpoint(model_path)
    emb = Embedder(ck, device="cpu", precision="fp32")
    ims = _images(7)

    def load(i):
        if i == 3:
            from siamsearch.core.errors import UnreadableImage
            raise UnreadableImage(f"item{i}", "corrupt (test)")
        return ims[i]

    batches = list(stream_embeddings(emb.runner, 7, load, emb.transform, emb.dim, batch_size=3))
    pos = np.concatenate([b.positions for b in batches])
    assert pos.tolist() == [0, 1, 2, 4, 5, 6]
    assert [f for b in batches for f in b.failures] == [(3, "corrupt (test)")]
    ref = emb.embed([ims[i] for i in pos])
    assert np.allclose(np.concatenate([b.embeddings for b in batches]), ref, atol=1e-6)


def test_in_process_batches_equal_the_dataloader_ones(model_path):
    """Without decoding workers the batches are made in this process without a DataLoader; they are the
    batches a DataLoader with one worker process makes: same positions, failures and embeddings."""
    emb = Embedder(load_checkpoint(model_path), device="cpu", precision="fp32")
    ims = _images(8)

    def load(i):
        if i in (0, 5, 6):
            from siamsearch.core.errors import UnreadableImage
            raise UnreadableImage(f"item{i}", f"corrupt {i} (test)")
        return ims[i]

    here = list(stream_embeddings(emb.runner, 8, load, emb.transform, emb.dim, batch_size=3))
    loader = list(stream_embeddings(emb.runner, 8, load, emb.transform, emb.dim, batch_size=3, workers=1))
    assert [b.positions.tolist() for b in here] == [b.positions.tolist() for b in loader] == [[1, 2], [3, 4], [7]]
    assert [b.failures for b in here] == [b.failures for b in loader]
    for a, b in zip(here, loader):
        assert a.embeddings.shape == b.embeddings.shape and np.allclose(a.embeddings, b.embeddings, atol=1e-6)
    assert list(stream_embeddings(emb.runner, 0, load, emb.transform, emb.dim)) == []


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_embedding_workers_give_the_in_process_answer(model_path, precision):
    """Forked workers that decode and embed whole batches on one thread: same order, same failures, same
    embeddings (up to the summation order of one thread against two)."""
    emb = Embedder(load_checkpoint(model_path), device="cpu", precision=precision)
    ims = _images(11)

    def load(i):
        if i in (3, 8):
            from siamsearch.core.errors import UnreadableImage
            raise UnreadableImage(f"item{i}", f"corrupt {i} (test)")
        return ims[i]

    here = list(stream_embeddings(emb.runner, 11, load, emb.transform, emb.dim, batch_size=3))
    forked = list(stream_embeddings(emb.runner, 11, load, emb.transform, emb.dim, batch_size=3, embed_workers=2))
    assert [b.positions.tolist() for b in forked] == [b.positions.tolist() for b in here]
    assert [b.failures for b in forked] == [b.failures for b in here] == [[], [(3, "corrupt 3 (test)")],
                                                                          [(8, "corrupt 8 (test)")], []]
    a = np.concatenate([b.embeddings for b in here])
    b = np.concatenate([b.embeddings for b in forked])
    assert a.shape == b.shape == (9, emb.dim) and b.dtype == np.float32
    assert np.min(np.sum(a * b, axis=1)) >= (0.99999 if precision == "fp32" else 0.9995)


def test_embed_files_ignores_embedding_workers_where_it_cannot_fork(model_path, monkeypatch, tmp_path):
    from PIL import Image

    from siamsearch.core import embedder as embedder_module

    paths = []
    for i, im in enumerate(_images(4)):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(im).save(paths[-1])
    emb = Embedder(load_checkpoint(model_path), device="cpu", precision="fp32")
    seen = []
    real = embedder_module.stream_embeddings
    monkeypatch.setattr(embedder_module, "stream_embeddings", lambda *a, **kw: (seen.append(kw["embed_workers"]),
                                                                                real(*a, **kw))[1])
    monkeypatch.setattr(embedder_module, "can_embed_in_workers", lambda: False)
    assert sum(len(b.positions) for b in emb.embed_files(paths, embed_workers=2)) == 4
    monkeypatch.setattr(embedder_module, "can_embed_in_workers", lambda: True)
    assert sum(len(b.positions) for b in emb.embed_files(paths, embed_workers=2)) == 4
    assert seen == [0, 2]


@pytest.mark.slow
def test_compiled_runner_matches_eager_for_ragged_batches(model_path):
    """torch.compile (static shapes): shorter batches are padded, longer ones split; outputs match eager."""
    ck = load_checkpoint(model_path)
    emb = Embedder(ck, device="cpu", precision="fp32", compile=False)
    runner = InferenceRunner(emb.net, emb.device, "fp32")
    x = torch.stack([emb.transform(im) for im in _images(11)])
    ref = emb.embed_tensor(x)
    runner.compile()
    got = np.concatenate([runner(x[:6]), runner(x[6:9]), runner(x[9:])])  # 6 compiles; 3 and 2 are padded
    assert np.allclose(got, ref, atol=1e-4)
    assert np.allclose(runner(x), ref, atol=1e-4)  # 11 > 6: split
    assert runner.compiled and runner._static_batch == 6


def test_keep_freed_memory_is_switched_on_once_and_can_be_refused(monkeypatch):
    import platform

    from siamsearch.core import inference

    monkeypatch.setitem(inference._malloc_tuned, "done", False)
    monkeypatch.setenv("SIAMSEARCH_MALLOC_TUNING", "0")
    assert inference.keep_freed_memory() is False and inference._malloc_tuned["done"] is False
    monkeypatch.delenv("SIAMSEARCH_MALLOC_TUNING")
    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert inference.keep_freed_memory() is expected
    assert inference._malloc_tuned["done"] is expected


@pytest.mark.parametrize("embed_workers", [0, 2])
def test_embed_files_digests_are_the_hashes_of_the_embedded_files(model_path, tmp_path, embed_workers):
    """``digests=True``: each embedded file's SHA-256 (hashlib over the file's bytes, computed here
    independently), aligned with the positions; embeddings and failures as without digests."""
    import hashlib

    from PIL import Image

    emb = Embedder(load_checkpoint(model_path), device="cpu", precision="fp32")
    paths = []
    for i, im in enumerate(_images(7)):
        p = tmp_path / f"{i}.png"
        Image.fromarray(im, "L").save(p) if i != 4 else p.write_bytes(b"not an image")
        paths.append(str(p))
    paths.append(str(tmp_path / "missing.png"))
    plain = list(emb.embed_files(paths, batch_size=3, embed_workers=embed_workers))
    hashed = list(emb.embed_files(paths, batch_size=3, embed_workers=embed_workers, digests=True))
    assert all(b.digests is None for b in plain)
    assert [b.failures for b in hashed] == [b.failures for b in plain]
    assert [f[0] for b in hashed for f in b.failures] == [4, 7]
    for a, b in zip(plain, hashed):
        assert b.positions.tolist() == a.positions.tolist() and np.allclose(a.embeddings, b.embeddings, atol=1e-6)
        assert b.digests == [hashlib.sha256(open(paths[i], "rb").read()).hexdigest() for i in b.positions]


def test_fp16_on_the_cpu_warns_that_it_is_slow(model_path):
    """fp16 on a CPU ran ~10x slower than fp32 without a word; it still runs (cosine to fp32 >= 0.999)."""
    with pytest.warns(RuntimeWarning, match="fp16 on the CPU runs, but about 10x slower than fp32"):
        m16 = Embedder(load_checkpoint(model_path), device="cpu", precision="fp16")
    x = [np.random.default_rng(i).integers(0, 256, (32, 32), dtype=np.uint8) for i in range(8)]
    e32 = Embedder(load_checkpoint(model_path), device="cpu", precision="fp32").embed(x)
    assert (m16.embed(x) * e32).sum(1).min() >= 0.999
