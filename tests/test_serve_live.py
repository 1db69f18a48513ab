"""`siamsearch serve` on a real uvicorn on 127.0.0.1: a bounded mixed load from 16 concurrent clients,
two writer processes on one gallery, and SIGKILL in the middle of an enrolment."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from servekit import LiveServer, build_gallery, calibrated_model, free_port, png_bytes  # noqa: E402
from siamsearch.gallery import Gallery  # noqa: E402
from siamsearch.serve import ServeConfig  # noqa: E402
from siamsearch.serve.app import create_app  # noqa: E402
from siamsearch.serve.galleries import CRASH_ENV, STAGING_NAME, GalleryHandle, image_id  # noqa: E402
from siamsearch.serve.service import Service  # noqa: E402
from siamsearch.serve.uploads import decode_upload  # noqa: E402

API = "/api/v1"
REPO = Path(__file__).resolve().parents[1]


def _assert_equals_fresh_build(index: Path, model: Path, tmp: Path) -> dict:
    """The gallery on disk equals a fresh `index build` of its folder; returns {relpath: label}."""
    with Gallery.open(index) as g:
        served = {r: (g.label_names[lab] if lab >= 0 else None, e)
                  for r, lab, e in zip(g.relpaths, g.labels.tolist(), g.embeddings)}
        src = g.source_dir
        assert not g.info()["interrupted_run_pending"]
    with Gallery.build(src, str(model), out=tmp, workers=0, progress=False) as fresh:
        built = {r: (fresh.label_names[lab] if lab >= 0 else None, e)
                 for r, lab, e in zip(fresh.relpaths, fresh.labels.tolist(), fresh.embeddings)}
    assert sorted(served) == sorted(built)
    for r in built:
        assert served[r][0] == built[r][0], r
        np.testing.assert_allclose(served[r][1], built[r][1], atol=1e-5)
    return {r: v[0] for r, v in served.items()}


def test_mixed_load_from_16_clients(tmp_path):
    model = calibrated_model(tmp_path / "model.pt")
    index = build_gallery(tmp_path, model)
    app = create_app(ServeConfig(model=str(model), indexes=(str(index),), inference_threads=2, queue=64))
    rng = random.Random(0)
    kinds = rng.choices(["search", "verify", "enrol", "remove"], weights=[40, 25, 20, 15], k=208)
    lock = threading.Lock()
    enrolled: dict = {}   # id -> bytes
    removed: set = set()
    statuses: list = []
    base = [png_bytes(500 + i) for i in range(4)]

    def one(i: int, kind: str, client) -> None:
        if kind == "remove":
            with lock:
                live = sorted(set(enrolled) - removed)
                victim = live[i % len(live)] if live else None
                if victim is not None:
                    removed.add(victim)  # claimed: no other client removes it too
            if victim is None:
                kind = "search"
            else:
                r = client.delete(f"{API}/galleries/people/images/{victim}")
                statuses.append(r.status_code)
                assert r.status_code == 200, r.text
                return
        if kind == "search":
            r = client.post(f"{API}/galleries/people/search", files={"image": ("q.png", base[i % 4])},
                            data={"k": "3"})
            assert r.status_code == 200, r.text
            # a reader never sees a half-enrolled gallery: every neighbour's file is readable
            for n in r.json()["neighbors"]:
                img = client.get(f"{API}/galleries/people/images/{n['id']}")
                assert img.status_code in (200, 404), img.text  # 404 only if removed since the search
        elif kind == "verify":
            r = client.post(f"{API}/verify", files={"image_a": ("a.png", base[i % 4]),
                                                     "image_b": ("b.png", base[(i + 1) % 4])})
            assert r.status_code == 200, r.text
        else:
            data = png_bytes(10_000 + i)
            r = client.post(f"{API}/galleries/people/images", data={"identity": f"e{i % 5}"},
                            files=[("files", ("x.png", data))])
            assert r.status_code == 201, r.text
            (new,) = r.json()["ids"]
            with lock:
                assert new not in enrolled
                enrolled[new] = data
        statuses.append(r.status_code)

    t0 = time.time()
    with LiveServer(app) as url:
        clients = [httpx.Client(base_url=url, timeout=60) for _ in range(16)]
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(one, i, k, clients[i % 16]) for i, k in enumerate(kinds)]
            for f in futures:
                f.result()
        c = clients[0]
        assert len(statuses) == len(kinds) and max(statuses) < 500
        present = set(enrolled) - removed
        assert enrolled and removed and present
        # every enrolled image present once and searchable, every removed one gone
        for ident, data in enrolled.items():
            js = c.post(f"{API}/galleries/people/search", files={"image": ("q.png", data)}, data={"k": "100"}).json()
            ids = [n["id"] for n in js["neighbors"]]
            assert len(ids) == len(set(ids))
            if ident in present:
                assert ids[0] == ident and js["neighbors"][0]["distance"] < 1e-5
            else:
                assert ident not in ids
        counts = c.get(f"{API}/galleries/people/identities", params={"limit": 100}).json()
        assert sum(i["images"] for i in counts["identities"]) == 12 + len(present)
        for cl in clients:
            cl.close()
    elapsed = time.time() - t0
    labels = _assert_equals_fresh_build(index, model, tmp_path / "fresh")
    assert {image_id(r) for r, lab in labels.items() if lab.startswith("e")} == present
    assert elapsed < 240


def test_two_processes_writing_one_gallery_take_turns(tmp_path):
    """Two services on one gallery folder (as two uvicorn workers): writes serialise through the folder lock
    and each sees the other's enrolments on its next read."""
    model = calibrated_model(tmp_path / "model.pt")
    index = build_gallery(tmp_path, model)
    cfg = ServeConfig(model=str(model), indexes=(str(index),))
    one, two = Service(cfg), Service(cfg, model=None)
    ups = [decode_upload(png_bytes(700 + i), f"{i}.png", 10**6) for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        done = list(pool.map(lambda i: (one if i % 2 else two).enrol("people", f"p{i}", [ups[i]]), range(6)))
    ids = [d["ids"][0] for d in done]
    for svc in (one, two):
        h = svc.gallery("people")
        assert len(h.current()) == 18
        g = h.current()
        assert all(h.position(g, i) is not None for i in ids)
    _assert_equals_fresh_build(index, model, tmp_path / "fresh")


_ENROL_SCRIPT = """
import sys
from siamsearch import load_model
from siamsearch.serve.galleries import GalleryHandle
from siamsearch.serve.uploads import decode_upload
h = GalleryHandle(sys.argv[1], load_model(sys.argv[2]))
ups = [decode_upload(open(p, "rb").read(), p, 10**6) for p in sys.argv[3:]]
h.enrol("newbie", ups)
"""


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    env.update(extra)
    return env


@pytest.mark.parametrize("step,complete", [
    ("staged", False),  # the real-server test below covers a journaled enrolment ("moved") in the default run
    pytest.param("journal", True, marks=pytest.mark.slow),
    pytest.param("moved", True, marks=pytest.mark.slow),
    pytest.param("committed", True, marks=pytest.mark.slow)])
def test_sigkill_during_enrol_leaves_it_all_or_nothing(tmp_path, step, complete):
    model = calibrated_model(tmp_path / "model.pt")
    index = build_gallery(tmp_path, model)
    files = []
    for i in range(3):
        p = tmp_path / f"up{i}.png"
        p.write_bytes(png_bytes(900 + i))
        files.append(str(p))
    proc = subprocess.run([sys.executable, "-c", _ENROL_SCRIPT, str(index), str(model), *files],
                          env=_env(**{CRASH_ENV: step}), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with Gallery.open(index) as g:
        src = g.source_dir
    h = GalleryHandle(index, load_model_once(model))  # the restart: recovery runs here
    g = h.current()
    newbie = [r for r in g.relpaths if r.startswith("newbie/")]
    assert len(newbie) == (3 if complete else 0)
    assert sorted(p.relative_to(src).as_posix() for p in (src / "newbie").glob("*")) == sorted(newbie) \
        if complete else not (src / "newbie").exists()
    assert not (src / STAGING_NAME).exists() and not (index / ".serve-journal.json").exists()
    _assert_equals_fresh_build(index, model, tmp_path / "fresh")


def load_model_once(path):
    from siamsearch import load_model

    return load_model(path)


def test_real_server_killed_mid_enrol_restarts_consistent(tmp_path):
    """`siamsearch serve` in its own process, SIGKILLed between journaling and publishing an enrolment."""
    model = calibrated_model(tmp_path / "model.pt")
    index = build_gallery(tmp_path, model)
    port = free_port()
    cmd = [sys.executable, "-c", "from siamsearch.cli import main; main()", "serve", "--model", str(model),
           "--index", str(index), "--port", str(port), "--inference-threads", "1"]
    proc = subprocess.Popen(cmd, env=_env(**{CRASH_ENV: "moved"}), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300  # generous: on 2 shared cores under load, importing torch alone can take a minute
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "timeout"
            time.sleep(0.2)
        with pytest.raises(httpx.TransportError):
            httpx.post(url + f"{API}/galleries/people/images", data={"identity": "late"},
                       files=[("files", ("a.png", png_bytes(1))), ("files", ("b.png", png_bytes(2)))], timeout=60)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        out = proc.stdout.read()
        assert f"listening on {url}" in out and "loopback only" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # restart (in-process): the journaled enrolment completes, the gallery equals a fresh build
    svc = Service(ServeConfig(model=str(model), indexes=(str(index),)))
    idents = svc.gallery("people").identities(limit=100)["identities"]
    assert [i["images"] for i in idents if i["identity"] == "late"] == [2]
    _assert_equals_fresh_build(index, model, tmp_path / "fresh")


@pytest.mark.slow
def test_two_uvicorn_workers_serve_one_gallery(tmp_path):
    """`--workers 2`: enrolments through either worker are searchable through both; the gallery stays whole."""
    model = calibrated_model(tmp_path / "model.pt")
    index = build_gallery(tmp_path, model)
    port = free_port()
    cmd = [sys.executable, "-c", "from siamsearch.cli import main; main()", "serve", "--model", str(model),
           "--index", str(index), "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.3)
        data = {i: png_bytes(2000 + i) for i in range(8)}

        def enrol(i):
            with httpx.Client(base_url=url, timeout=120) as c:  # a new connection each: both workers get some
                r = c.post(f"{API}/galleries/people/images", data={"identity": f"w{i % 2}"},
                           files=[("files", ("x.png", data[i]))])
                assert r.status_code == 201, r.text
                return r.json()["ids"][0]

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(enrol, range(8)))
        for i, ident in enumerate(ids):
            for _ in range(3):
                with httpx.Client(base_url=url, timeout=60) as c:
                    js = c.post(f"{API}/galleries/people/search", files={"image": ("q.png", data[i])},
                                data={"k": "1"}).json()
                    assert js["neighbors"][0]["id"] == ident
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    _assert_equals_fresh_build(index, model, tmp_path / "fresh")
