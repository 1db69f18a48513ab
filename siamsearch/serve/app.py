"""The FastAPI app of ``siamsearch serve``: REST API, web page, offline OpenAPI docs, metrics.

:func:`create_app` builds it from a :class:`~siamsearch.serve.config.ServeConfig`
(or an existing :class:`~siamsearch.serve.service.Service`); :func:`app_from_env`
is the factory uvicorn's worker processes import (``--workers N``).
"""
from __future__ import annotations

import asyncio
import time
from importlib import resources
from pathlib import Path
from typing import Optional, Union

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..core.errors import SiamsearchError
from .config import ServeConfig
from .errors import ApiError, from_library
from .service import Service, check_threshold
from .uploads import decode_upload

API = "/api/v1"
STATIC_DIR = resources.files("siamsearch.serve") / "static"
K_MAX = 100


def _error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


class BodyLimit:
    """ASGI middleware: a declared ``Content-Length`` over the limit gets 413 before any byte of the body is
    read; a body that grows past it while streaming (chunked) is cut off with 413."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        too_big = ApiError(413, "upload_too_large", f"the request body is over this server's limit of "
                                                    f"{limit / 2**20:g} MiB (--max-upload-mb)")
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = 0
                if declared > limit:
                    return await _error_response(too_big)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise StarletteHTTPException(413, too_big.message)
            return msg

        return await self.app(scope, limited, send)


class MetricsMiddleware:
    """ASGI middleware: count and time every request by its route template (low cardinality)."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]

        async def sending(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, scope.get("method", ""), str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)


def create_app(config: Union[ServeConfig, Service]) -> FastAPI:
    """The app serving ``config``'s model and galleries (or an already built :class:`Service`)."""
    svc = config if isinstance(config, Service) else Service(config)
    app = FastAPI(title="siamsearch", version=__version__, docs_url=None, redoc_url=None,
                  description="Verify, identify, enrol and remove images over HTTP. Errors are "
                              '`{"error": {"code", "message"}}`. Image inputs are multipart uploads.')
    app.state.service = svc
    _install_errors(app)
    _install_pages(app)
    _install_api(app, svc)
    app.add_middleware(BodyLimit, max_bytes=svc.config.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=svc.metrics)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: the config comes from ``SIAMSEARCH_SERVE_CONFIG``."""
    return create_app(ServeConfig.from_env())


# --------------------------------------------------------------------------- errors


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return _error_response(e)

    @app.exception_handler(SiamsearchError)
    async def library_error(request: Request, e: SiamsearchError):
        return _error_response(from_library(e))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        parts = []
        for err in e.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path", "form"))
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return _error_response(ApiError(422, "invalid_request", "; ".join(parts) or "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        raw = request.scope.get("raw_path", b"").lower()
        if e.status_code == 404 and raw.startswith(API.encode()) and (
                any(t in raw for t in (b"%2f", b"%5c", b"%00", b"\\")) or "/../" in request.url.path + "/"):
            return _error_response(ApiError(400, "bad_path", "gallery names, identities and image ids are single "
                                                             "path segments: no '/', '\\', '..' or NUL"))
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "upload_too_large"}
        return _error_response(ApiError(e.status_code, codes.get(e.status_code, "http_error"), str(e.detail),
                                        dict(e.headers or {})))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):  # never a traceback to the client
        return _error_response(ApiError(500, "internal_error", f"internal error ({type(e).__name__}); the server "
                                                               "log has the details"))


# --------------------------------------------------------------------------- page, docs, health


def _install_pages(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    try:  # Swagger UI 5 and ReDoc as files of the fastapi-offline package: /docs works without internet
        import fastapi_offline

        assets = Path(fastapi_offline.__file__).parent / "static"
        have_swagger = (assets / "swagger-ui-bundle.js").is_file()
    except ImportError:
        have_swagger = False
    if have_swagger:
        app.mount("/docs-assets", StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(str(STATIC_DIR / "index.html"), media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        if not have_swagger:
            raise ApiError(503, "docs_unavailable", "install fastapi-offline (pip install 'siamsearch[serve]') "
                                                    "for offline docs; /openapi.json works without it")
        return get_swagger_ui_html(openapi_url="/openapi.json", title="siamsearch API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc():
        if not have_swagger:
            raise ApiError(503, "docs_unavailable", "install fastapi-offline (pip install 'siamsearch[serve]')")
        return get_redoc_html(openapi_url="/openapi.json", title="siamsearch API",
                              redoc_js_url="/docs-assets/redoc.standalone.js",
                              redoc_favicon_url="/docs-assets/favicon.png", with_google_fonts=False)

    @app.get("/healthz", tags=["health"], summary="Liveness")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Model and galleries loaded")
    async def readyz(request: Request):
        svc: Service = request.app.state.service
        try:
            sizes = {name: len(h.current()) for name, h in svc.galleries.items()}
        except SiamsearchError as e:
            raise ApiError(503, "not_ready", str(e), {"Retry-After": "5"}) from None
        return {"ready": True, "model": svc.model.fingerprint, "galleries": sizes}

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def metrics(request: Request):
        from .metrics import CONTENT_TYPE_LATEST

        return Response(request.app.state.service.metrics.render(), media_type=CONTENT_TYPE_LATEST)


# --------------------------------------------------------------------------- the API


def _auth(svc: Service, role: str):
    def check(request: Request) -> None:
        key = request.headers.get("x-api-key")
        if svc.keys is not None:
            got = svc.keys.role(key)
            if got is None:
                raise ApiError(401, "unauthorized", "missing or unknown API key; send it in the X-API-Key header")
            if role == "write" and got != "write":
                raise ApiError(403, "forbidden", "this API key may read (verify, search, info) but not enrol or "
                                                 "remove; use a write key")
        if svc.limiter is not None:
            client = f"key:{key}" if svc.keys is not None else f"addr:{request.client.host if request.client else ''}"
            svc.limiter.check(client)
    return Depends(check)


async def _read(f: UploadFile, field: str) -> tuple[bytes, str]:
    """An upload's bytes and name, read on the event loop; decoding happens in the inference pool
    (:func:`_decoded`), so that a large photo being decoded does not stall every other connection."""
    return await f.read(), f.filename or field


def _decoded(svc: Service, raw: tuple[bytes, str]):
    """Decode a :func:`_read` upload (header limits first); runs on a pool or worker thread."""
    with svc.metrics.timed("decode"):
        return decode_upload(raw[0], raw[1], svc.config.max_pixels)


def _install_api(app: FastAPI, svc: Service) -> None:
    read, write = _auth(svc, "read"), _auth(svc, "write")

    @app.get(f"{API}/info", tags=["api"], dependencies=[read], summary="Model, calibration, galleries, limits")
    async def info():
        return await asyncio.to_thread(svc.info)

    @app.post(f"{API}/verify", tags=["api"], dependencies=[read], summary="Same identity or not (verify --json)")
    async def verify(image_a: UploadFile = File(..., description="first image"),
                     image_b: UploadFile = File(..., description="second image"),
                     threshold: Optional[float] = Form(None, ge=0, le=2,
                                                       description="distance threshold [default: calibration]")):
        a, b = await _read(image_a, "image_a"), await _read(image_b, "image_b")
        threshold = check_threshold(threshold)
        return await svc.pool.run(lambda: svc.verify(_decoded(svc, a), _decoded(svc, b), threshold))

    @app.post(API + "/galleries/{name}/search", tags=["api"], dependencies=[read],
              summary="k nearest gallery images and the predicted identity")
    async def search(name: str, image: UploadFile = File(...), k: int = Form(5, ge=1, le=K_MAX),
                     open_set: bool = Form(False, description="'unknown' beyond the threshold"),
                     threshold: Optional[float] = Form(None, ge=0, le=2)):
        svc.gallery(name)
        raw = await _read(image, "image")
        return await svc.pool.run(lambda: svc.search(name, _decoded(svc, raw), k, open_set, threshold))

    @app.post(API + "/galleries/{name}/images", tags=["api"], dependencies=[write], status_code=201,
              summary="Enrol images of an identity (stored in the gallery's folder, searchable on return)")
    async def enrol(name: str, identity: str = Form(...), files: list[UploadFile] = File(...)):
        svc.gallery(name)
        raws = [await _read(f, f"files[{i}]") for i, f in enumerate(files)]
        return await asyncio.to_thread(lambda: svc.enrol(name, identity, [_decoded(svc, r) for r in raws]))

    @app.get(API + "/galleries/{name}/identities", tags=["api"], dependencies=[read],
             summary="Identities with image counts (paginated)")
    async def identities(name: str, offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=1000)):
        return await asyncio.to_thread(svc.gallery(name).identities, offset, limit)

    @app.get(API + "/galleries/{name}/images/{image_id}", tags=["api"], dependencies=[read],
             summary="The stored image file")
    async def image(name: str, image_id: str):
        data, media = await asyncio.to_thread(svc.gallery(name).image_bytes, image_id)
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})

    @app.delete(API + "/galleries/{name}/images/{image_id}", tags=["api"], dependencies=[write],
                summary="Remove one image")
    async def remove_image(name: str, image_id: str):
        svc.gallery(name)
        return await asyncio.to_thread(svc.remove, name, image_id)

    @app.delete(API + "/galleries/{name}/identities/{identity}", tags=["api"], dependencies=[write],
                summary="Remove every image of an identity")
    async def remove_identity(name: str, identity: str):
        svc.gallery(name)
        return await asyncio.to_thread(svc.remove, name, None, identity)

    @app.get(API + "/galleries/{name}/map", tags=["api"], dependencies=[read],
             summary="2-D PCA view of the gallery's embeddings")
    async def embedding_map(name: str, limit: int = Query(2000, ge=2, le=20000)):
        return await asyncio.to_thread(svc.gallery(name).embedding_map, limit)

