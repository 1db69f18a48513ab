"""`siamsearch serve` through FastAPI's TestClient: every endpoint, every error status, enrol/remove
round trips checked against the library and a fresh `index build`, API keys, limits, metrics, docs."""
from __future__ import annotations

import asyncio
import os
import io
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from servekit import THRESHOLD, build_gallery, calibrated_model, png_bytes, png_declaring  # noqa: E402
from siamsearch.core.errors import FingerprintMismatch, SiamsearchError  # noqa: E402
from siamsearch.gallery import Gallery  # noqa: E402
from siamsearch.serve import ServeConfig  # noqa: E402
from siamsearch.serve.app import create_app  # noqa: E402
from siamsearch.serve.galleries import image_id  # noqa: E402
from siamsearch.serve.service import Service  # noqa: E402

API = "/api/v1"
READ_KEY, WRITE_KEY = "r" * 20, "w" * 20


@pytest.fixture
def served(tmp_path):
    model = calibrated_model(tmp_path / "model.pt")
    index = build_gallery(tmp_path, model)
    cfg = ServeConfig(model=str(model), indexes=(str(index),), max_pixels=10_000, max_upload_mb=0.25)
    client = TestClient(create_app(cfg))
    return {"client": client, "model": model, "index": index, "cfg": cfg, "root": tmp_path,
            "svc": client.app.state.service}


def _file(data: bytes, name: str = "q.png"):
    return (name, io.BytesIO(data), "image/png")


def _gallery_image(index, j: int = 0):
    with Gallery.open(index) as g:
        return g.paths[j], g.relpaths[j], g.labels[j], g.label_names


def _assert_error(r, status: int, code: str | None = None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert "Traceback" not in r.text
    if code is not None:
        assert body["error"]["code"] == code, body


def test_health_ready_and_info(served):
    c = served["client"]
    assert c.get("/healthz").json() == {"status": "ok"}
    ready = c.get("/readyz").json()
    assert ready["ready"] and ready["galleries"] == {"people": 12}
    info = c.get(f"{API}/info").json()
    with Gallery.open(served["index"]) as g:
        assert info["model"]["fingerprint"] == g.fingerprint
        assert info["galleries"] == [{"name": "people", "size": 12, "identities": 4, "index": g.index.factory,
                                      "dim": 8, "label_mode": "from-folder"}]
    assert info["model"]["embedding_dim"] == 8 and info["model"]["config"]["input_size"] == 16
    cal = info["calibration"]
    assert cal["threshold"] == THRESHOLD and cal["far_ci95"] == [0.004, 0.015] and cal["rule"] == "far"
    assert info["limits"]["max_pixels"] == 10_000 and info["limits"]["k_max"] == 100


def test_verify_matches_the_library(served):
    from siamsearch import load_model, verify

    c = served["client"]
    path_a, _, _, _ = _gallery_image(served["index"], 0)
    path_b, _, _, _ = _gallery_image(served["index"], 5)
    with open(path_a, "rb") as fa, open(path_b, "rb") as fb:
        a, b = fa.read(), fb.read()
    r = c.post(f"{API}/verify", files={"image_a": _file(a), "image_b": _file(b)})
    assert r.status_code == 200, r.text
    want = verify(load_model(served["model"]), path_a, path_b).to_dict()
    got = r.json()
    assert set(got) == set(want)  # the keys of `verify --json`
    assert got["distance"] == pytest.approx(want["distance"], abs=1e-5)
    assert got["is_same"] == want["is_same"] and got["threshold"] == THRESHOLD
    assert got["threshold_source"] == "calibration" and got["calibration"]["threshold"] == THRESHOLD
    same = c.post(f"{API}/verify", files={"image_a": _file(a), "image_b": _file(a)}).json()
    assert same["distance"] < 1e-5 and same["is_same"]
    # an explicit threshold below the distance: different, and no calibration record
    t = want["distance"] / 2
    exp = c.post(f"{API}/verify", files={"image_a": _file(a), "image_b": _file(b)}, data={"threshold": str(t)}).json()
    assert exp["threshold"] == pytest.approx(t) and not exp["is_same"] and exp["threshold_source"] == "explicit"


def test_bad_uploads_get_the_right_status(served):
    c = served["client"]
    good = png_bytes(1)
    post = lambda a: c.post(f"{API}/verify", files={"image_a": _file(a), "image_b": _file(good)})  # noqa: E731
    _assert_error(post(b"this is not an image at all"), 415, "unsupported_media_type")
    _assert_error(post(good[: len(good) // 2]), 422, "unreadable_image")  # truncated PNG
    _assert_error(post(b""), 422, "unreadable_image")
    _assert_error(post(png_bytes(2, size=200)), 413, "image_too_large")  # 40,000 px > --max-pixels 10,000
    _assert_error(post(png_declaring(30_000, 30_000)), 413, "image_too_large")  # a bomb: header only is read
    _assert_error(c.post(f"{API}/verify", files={"image_a": _file(good)}), 422, "invalid_request")  # image_b missing
    _assert_error(c.post(f"{API}/verify", files={"image_a": _file(good), "image_b": _file(good)},
                         data={"threshold": "3"}), 422)


def test_upload_over_the_size_limit_is_413_before_reading(served):
    c, svc = served["client"], served["svc"]
    big = b"\0" * (300 * 1024)  # > 0.25 MiB
    _assert_error(c.post(f"{API}/verify", files={"image_a": _file(big), "image_b": _file(big)}), 413,
                  "upload_too_large")

    # a chunked body (no Content-Length) is cut off while streaming
    def chunks():
        for _ in range(40):
            yield b"x" * 10_000

    r = c.post(f"{API}/verify", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"})
    _assert_error(r, 413)
    metrics = c.get("/metrics").text
    assert 'status="413"' in metrics and svc is not None


def test_search_matches_gallery_search_and_k_limits(served):
    c = served["client"]
    path, rel, label, names = _gallery_image(served["index"], 4)
    with open(path, "rb") as f:
        data = f.read()
    r = c.post(f"{API}/galleries/people/search", files={"image": _file(data)}, data={"k": "5"})
    assert r.status_code == 200, r.text
    js = r.json()
    with Gallery.open(served["index"]) as g:
        want = g.search([path], k=5)
        want_rel = [g.relpaths[int(np.flatnonzero(g.ids == i)[0])] for i in want.ids[0]]
    assert [n["path"] for n in js["neighbors"]] == want_rel
    assert [n["id"] for n in js["neighbors"]] == [image_id(r) for r in want_rel]
    np.testing.assert_allclose([n["distance"] for n in js["neighbors"]], want.distances[0], atol=1e-5)
    top = js["neighbors"][0]
    assert top["path"] == rel and top["label"] == names[label] and top["distance"] < 1e-5 and top["rank"] == 1
    assert js["prediction"] == names[label] and js["open_set"] is False and js["query"] == "q.png"
    for k in ("0", "101", "-3", "five"):
        _assert_error(c.post(f"{API}/galleries/people/search", files={"image": _file(data)}, data={"k": k}), 422)
    _assert_error(c.post(f"{API}/galleries/nobody/search", files={"image": _file(data)}), 404, "gallery_not_found")
    _assert_error(c.post(f"{API}/galleries/%2E%2E/search", files={"image": _file(data)}), 400)
    for name in ("a%2Fb", "..%2F..%2Fetc", "people%00", "a%5Cb"):  # encoded traversal: 400, not a 404
        _assert_error(c.post(f"{API}/galleries/{name}/search", files={"image": _file(data)}), 400)
    _assert_error(c.delete(f"{API}/galleries/people/identities/..%2Fid_0"), 400, "bad_path")
    _assert_error(c.post(f"{API}/galleries/people/search", files={"image": _file(b"GIF89a broken")}), 415)


def test_open_set_search_answers_unknown_beyond_the_threshold(served):
    c = served["client"]
    stranger = png_bytes(99)
    js = c.post(f"{API}/galleries/people/search", files={"image": _file(stranger)}, data={"k": "3"}).json()
    nearest = js["neighbors"][0]["distance"]
    assert nearest > 1e-4
    t = nearest / 2
    r = c.post(f"{API}/galleries/people/search", files={"image": _file(stranger)},
               data={"k": "3", "threshold": str(t)}).json()
    assert r["prediction"] == "unknown" and r["open_set"] and r["threshold_source"] == "explicit"
    cal = c.post(f"{API}/galleries/people/search", files={"image": _file(stranger)}, data={"open_set": "true"}).json()
    assert cal["threshold"] == THRESHOLD and cal["threshold_source"] == "calibration"
    assert cal["prediction"] == ("unknown" if nearest > THRESHOLD else js["neighbors"][0]["label"])


def _fresh_build_equal(index, model, tmp):
    """The served gallery on disk equals a fresh `index build` of its folder (paths, labels, embeddings)."""
    with Gallery.open(index) as g:
        served = {r: (g.label_names[lab] if lab >= 0 else None, e)
                  for r, lab, e in zip(g.relpaths, g.labels.tolist(), g.embeddings)}
        src = g.source_dir
    with Gallery.build(src, str(model), out=tmp, workers=0, progress=False) as fresh:
        built = {r: (fresh.label_names[lab] if lab >= 0 else None, e)
                 for r, lab, e in zip(fresh.relpaths, fresh.labels.tolist(), fresh.embeddings)}
    assert set(served) == set(built)
    for r in built:
        assert served[r][0] == built[r][0]
        np.testing.assert_allclose(served[r][1], built[r][1], atol=1e-5)


def test_enrol_search_remove_and_restart(served):
    c, index, model = served["client"], served["index"], served["model"]
    new = [png_bytes(10), png_bytes(11)]
    r = c.post(f"{API}/galleries/people/images", data={"identity": "zoe"},
               files=[("files", _file(new[0], "a.png")), ("files", _file(new[1], "b.png"))])
    assert r.status_code == 201, r.text
    ids = r.json()["ids"]
    assert len(ids) == 2 and all(p["path"].startswith("zoe/") for p in r.json()["images"])
    for data, i in zip(new, ids):
        js = c.post(f"{API}/galleries/people/search", files={"image": _file(data)}, data={"k": "1"}).json()
        assert js["neighbors"][0]["id"] == i and js["neighbors"][0]["distance"] < 1e-5 and js["prediction"] == "zoe"
        assert c.get(f"{API}/galleries/people/images/{i}").content == data  # the stored bytes are the upload
    idents = c.get(f"{API}/galleries/people/identities", params={"limit": 2, "offset": 4}).json()
    assert idents["total"] == 5 and len(idents["identities"]) == 1
    assert idents["identities"][0]["identity"] == "zoe" and idents["identities"][0]["images"] == 2
    assert sorted(idents["identities"][0]["image_ids"]) == sorted(ids)
    # the gallery on disk is what `index info` and a fresh build read
    with Gallery.open(index) as g:
        assert len(g) == 14 and g.info()["labels"]["per_label"]["zoe"] == 2
    _fresh_build_equal(index, model, served["root"] / "fresh1")
    # remove one image, then the identity
    r = c.delete(f"{API}/galleries/people/images/{ids[0]}")
    assert r.status_code == 200 and r.json()["removed"][0]["id"] == ids[0]
    js = c.post(f"{API}/galleries/people/search", files={"image": _file(new[0])}, data={"k": "14"}).json()
    assert ids[0] not in [n["id"] for n in js["neighbors"]] and len(js["neighbors"]) == 13
    _assert_error(c.delete(f"{API}/galleries/people/images/{ids[0]}"), 404, "image_not_found")
    _assert_error(c.get(f"{API}/galleries/people/images/{ids[0]}"), 404)
    assert c.delete(f"{API}/galleries/people/identities/zoe").json()["removed"][0]["id"] == ids[1]
    _assert_error(c.delete(f"{API}/galleries/people/identities/zoe"), 404, "identity_not_found")
    assert c.get("/readyz").json()["galleries"] == {"people": 12}
    # a restart reads the same gallery
    again = TestClient(create_app(served["cfg"]))
    assert again.get("/readyz").json()["galleries"] == {"people": 12}
    assert again.get(f"{API}/galleries/people/identities").json() == c.get(f"{API}/galleries/people/identities").json()
    _fresh_build_equal(index, model, served["root"] / "fresh2")


def test_enrol_refuses_traversal_and_bad_files(served):
    c, root = served["client"], served["root"]
    before = sorted(p for p in root.rglob("*") if p.is_file())
    for ident in ("../evil", "a/b", "..", ".hidden", "x\0y", "", "a\\b"):
        r = c.post(f"{API}/galleries/people/images", data={"identity": ident}, files=[("files", _file(png_bytes(3)))])
        assert r.status_code in (400, 422), (ident, r.text)
        _assert_error(r, r.status_code)
    _assert_error(c.post(f"{API}/galleries/people/images", data={"identity": "ok"},
                         files=[("files", _file(b"not an image"))]), 415)
    after = sorted(p for p in root.rglob("*") if p.is_file() and ".serve-write.lock" not in p.name)
    assert after == [p for p in before if ".serve-write.lock" not in p.name]  # nothing written anywhere


def test_api_keys(tmp_path, served):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# test keys\n{READ_KEY} read\n{WRITE_KEY} write\n")
    cfg = ServeConfig(model=served["cfg"].model, indexes=served["cfg"].indexes, api_keys=str(keys))
    c = TestClient(create_app(cfg))
    _assert_error(c.get(f"{API}/info"), 401, "unauthorized")
    _assert_error(c.get(f"{API}/info", headers={"X-API-Key": "w" * 19 + "x"}), 401)
    assert c.get(f"{API}/info", headers={"X-API-Key": READ_KEY}).status_code == 200
    enrol = dict(data={"identity": "kim"}, files=[("files", _file(png_bytes(5)))])
    _assert_error(c.post(f"{API}/galleries/people/images", **enrol), 401)
    _assert_error(c.post(f"{API}/galleries/people/images", headers={"X-API-Key": READ_KEY}, **enrol), 403, "forbidden")
    _assert_error(c.delete(f"{API}/galleries/people/identities/id_0", headers={"X-API-Key": READ_KEY}), 403)
    assert c.post(f"{API}/galleries/people/images", headers={"X-API-Key": WRITE_KEY}, **enrol).status_code == 201
    assert c.get("/healthz").status_code == 200  # health and the page need no key
    # a short key, an unknown role, a public host without keys: refused at startup
    keys.write_text("short read\n")
    with pytest.raises(SiamsearchError, match="at least 16"):
        Service(cfg)
    keys.write_text(f"{READ_KEY} admin\n")
    with pytest.raises(SiamsearchError, match="KEY read"):
        Service(cfg)
    with pytest.raises(SiamsearchError, match="--api-keys"):
        ServeConfig(model=cfg.model, indexes=cfg.indexes, host="0.0.0.0").check()


def test_startup_refuses_a_gallery_of_another_model(served, tmp_path):
    other = calibrated_model(tmp_path / "other.pt", seed=7)
    from siamsearch import load_model

    fp_other = load_model(other).fingerprint
    with Gallery.open(served["index"]) as g:
        fp_gallery = g.fingerprint
    with pytest.raises(FingerprintMismatch) as e:
        Service(ServeConfig(model=str(other), indexes=served["cfg"].indexes))
    assert fp_other in str(e.value) and fp_gallery in str(e.value)


def test_full_pool_answers_503_with_retry_after(served):
    import httpx

    svc = Service(ServeConfig(model=served["cfg"].model, indexes=served["cfg"].indexes, inference_threads=1, queue=0))
    app = create_app(svc)
    gate, entered = threading.Event(), threading.Event()
    real = svc.model.embed

    def slow_embed(*a, **kw):
        entered.set()
        gate.wait(10)
        return real(*a, **kw)

    svc.model.embed = slow_embed
    img = png_bytes(7)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            first = asyncio.create_task(client.post(f"{API}/galleries/people/search", files={"image": _file(img)}))
            while not entered.is_set():
                await asyncio.sleep(0.01)
            second = await client.post(f"{API}/galleries/people/search", files={"image": _file(img)})
            gate.set()
            return await first, second

    first, second = asyncio.run(go())
    assert first.status_code == 200
    _assert_error(second, 503, "busy")
    assert second.headers["retry-after"] == "1"
    assert "siamsearch_busy_rejections_total 1.0" in svc.metrics.render().decode()


def test_metrics_docs_page_and_map(served):
    c = served["client"]
    data = png_bytes(8)
    c.post(f"{API}/galleries/people/search", files={"image": _file(data)})
    m = c.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    text = m.text
    assert 'siamsearch_requests_total{endpoint="/api/v1/galleries/{name}/search",method="POST",status="200"} 1.0' in text
    for stage in ("decode", "embed", "search"):
        assert f'siamsearch_stage_seconds_count{{stage="{stage}"}}' in text
    assert 'siamsearch_gallery_images{gallery="people"} 12.0' in text
    for page in ("/docs", "/redoc"):
        html = c.get(page).text
        assert "/docs-assets/" in html and "cdn" not in html.lower() and "https://" not in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"):
        assert c.get(f"/docs-assets/{asset}").status_code == 200
    spec = c.get("/openapi.json").json()
    assert {f"{API}/verify", f"{API}/galleries/{{name}}/search", f"{API}/galleries/{{name}}/images"} <= set(spec["paths"])
    page = c.get("/").text
    assert "<script" in page and "http://" not in page and "https://" not in page  # no CDN
    assert c.get("/static/app.js").status_code == 200 and c.get("/static/style.css").status_code == 200
    mp = c.get(f"{API}/galleries/people/map").json()
    assert mp["total"] == 12 and len(mp["points"]) == 12 and {p["label"] for p in mp["points"]} == {f"id_{k}" for k in range(4)}
    _assert_error(c.get("/no/such/route"), 404)


def test_rate_limit_answers_429_with_retry_after(served):
    from siamsearch.serve.ratelimit import RateLimiter

    cfg = ServeConfig(model=served["cfg"].model, indexes=served["cfg"].indexes, rate_limit=1.0)
    c = TestClient(create_app(cfg))
    assert c.app.state.service.limiter.rate == 1.0
    c.app.state.service.limiter = RateLimiter(1.0, clock=lambda: 0.0)  # frozen time: no refill in between
    assert [c.get(f"{API}/info").status_code for _ in range(2)] == [200, 200]  # a burst of 2 at 1 request/s
    r = c.get(f"{API}/info")
    _assert_error(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1
    assert c.get("/healthz").status_code == 200  # health is not limited
    # the bucket refills at the rate, per client
    now = [0.0]
    lim = RateLimiter(2.0, clock=lambda: now[0])
    for _ in range(4):
        lim.check("a")
    with pytest.raises(Exception, match="retry after 1 s"):
        lim.check("a")
    lim.check("b")
    now[0] = 0.5
    lim.check("a")


def test_enrol_conflicts_are_409_and_leave_nothing_behind(served, tmp_path):
    from siamsearch.gallery.store import FolderLock

    c, index = served["client"], served["index"]
    with Gallery.open(index) as g:
        src = g.source_dir
    before = sorted(p.relative_to(src).as_posix() for p in src.rglob("*"))
    with FolderLock(index):  # an `index update` of this gallery is running
        r = c.post(f"{API}/galleries/people/images", data={"identity": "zed"}, files=[("files", _file(png_bytes(6)))])
    _assert_error(r, 409, "gallery_busy")
    assert sorted(p.relative_to(src).as_posix() for p in src.rglob("*")) == before  # no file, no folder left
    assert c.get("/readyz").json()["galleries"] == {"people": 12}
    # a gallery without identities (--labels none) has nothing to enrol into
    flat = tmp_path / "flat_images"
    flat.mkdir()
    for i in range(3):
        (flat / f"{i}.png").write_bytes(png_bytes(60 + i))
    Gallery.build(flat, served["cfg"].model, out=tmp_path / "index" / "flat", workers=0, progress=False).close()
    c2 = TestClient(create_app(ServeConfig(model=served["cfg"].model, indexes=(str(tmp_path / "index" / "flat"),))))
    _assert_error(c2.post(f"{API}/galleries/flat/images", data={"identity": "zed"},
                          files=[("files", _file(png_bytes(6)))]), 409, "no_identities")
    js = c2.post(f"{API}/galleries/flat/search", files={"image": _file(png_bytes(60))}, data={"k": "2"}).json()
    assert js["neighbors"][0]["path"] == "0.png" and js["neighbors"][0]["label"] is None and js["prediction"] is None


def test_cli_refuses_bad_setups_cleanly(served, tmp_path):
    from click.testing import CliRunner

    from siamsearch.cli import main

    base = ["serve", "--model", served["cfg"].model, "--index", str(served["index"])]
    r = CliRunner().invoke(main, [*base, "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "--api-keys" in r.output and "Traceback" not in r.output
    other = calibrated_model(tmp_path / "other.pt", seed=3)
    r = CliRunner().invoke(main, ["serve", "--model", str(other), "--index", str(served["index"])])
    assert r.exit_code == 2 and "was built with model" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["serve", "--help"])
    assert r.exit_code == 0 and "--max-upload-mb" in r.output and "--api-keys" in r.output


@pytest.mark.parametrize("workers, threads", [(1, 1), (1, 2), (2, 1), (1, 64)])
def test_inference_threads_share_out_the_cores(served, workers, threads, monkeypatch):
    """Each inference thread runs torch on cores / (workers x inference threads) threads (at least one), set in
    the thread itself (the count is per calling thread); the main thread's setting is left alone."""
    import torch

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    cfg = ServeConfig(model=served["cfg"].model, indexes=served["cfg"].indexes, workers=workers,
                      inference_threads=threads)
    assert cfg.torch_threads == max(1, 4 // (workers * threads))
    before = torch.get_num_threads()
    svc = Service(cfg)
    try:
        seen = asyncio.run(svc.pool.run(torch.get_num_threads))
    finally:
        svc.pool.shutdown()
    assert seen == cfg.torch_threads and torch.get_num_threads() == before


def test_decoding_an_upload_does_not_stall_the_event_loop(served, monkeypatch):
    """Uploads are decoded in the inference pool: while one large photo decodes, other connections (here a
    health check) are answered."""
    import httpx

    from siamsearch.serve import app as app_module

    svc = Service(ServeConfig(model=served["cfg"].model, indexes=served["cfg"].indexes))
    app = create_app(svc)
    real, started, decoded_at = app_module.decode_upload, threading.Event(), []

    def slow_decode(*a, **kw):
        started.set()
        time.sleep(1.5)  # a large photo (long enough that a loaded machine still answers within it)
        decoded_at.append(time.perf_counter())
        return real(*a, **kw)

    monkeypatch.setattr(app_module, "decode_upload", slow_decode)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            search = asyncio.create_task(client.post(f"{API}/galleries/people/search",
                                                     files={"image": _file(png_bytes(3))}))
            while not started.is_set():
                await asyncio.sleep(0.01)
            health = await client.get("/healthz")
            answered_at = time.perf_counter()
            return await search, health, answered_at

    found, health, answered_at = asyncio.run(go())
    assert found.status_code == 200 and health.status_code == 200
    # answered while the decode was still running (on the event loop it would have had to wait for it)
    assert answered_at < decoded_at[0]
    svc.pool.shutdown()
