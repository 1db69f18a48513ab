"""`siamsearch serve`: the gallery service (REST API, web page, docs) on FastAPI + uvicorn."""
from __future__ import annotations

import os

import click

from .options import checkpoint_option, device_option
from .precision import precision_option


@click.command(context_settings={"show_default": True})
@checkpoint_option(help="Checkpoint that built every served gallery (its calibration gives the threshold).")
@click.option("--index", "indexes", required=True, multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Gallery folder to serve (repeatable); the API names it by its folder's name.")
@click.option("--host", default="127.0.0.1", help="Address to listen on; other than loopback needs --api-keys.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, help="TCP port.")
@click.option("--api-keys", "api_keys", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File of API keys, one 'KEY read' or 'KEY write' per line (sent as X-API-Key).")
@click.option("--max-upload-mb", type=click.FloatRange(min=0, min_open=True), default=8.0,
              help="Request bodies above this size get 413.")
@click.option("--max-pixels", type=click.IntRange(1), default=40_000_000,
              help="Images with more pixels get 413, checked from the header before decoding.")
@click.option("--workers", type=click.IntRange(1), default=1, help="uvicorn worker processes.")
@click.option("--inference-threads", type=click.IntRange(1), default=2,
              help="Threads per process that decode, embed and search.")
@click.option("--queue", type=click.IntRange(0), default=32,
              help="Requests that may wait for an inference thread; beyond that 503 with Retry-After.")
@click.option("--rate-limit", type=click.FloatRange(0), default=0.0,
              help="Requests per second per client (API key, or address without keys), bursts of twice that; "
                   "over it 429 with Retry-After. 0 = no limit.")
@device_option
@precision_option
def serve(model, indexes, host, port, api_keys, max_upload_mb, max_pixels, workers, inference_threads, queue,
          rate_limit, device):
    """Serve galleries over HTTP: verify, search, enrol, remove; a web page at / and API docs at /docs.

    \b
    Enrol and remove write the gallery's image folder and run the same code as
    `siamsearch index update`, so `index info`, `query` and a restart read the
    same gallery. Needs the serve extra: pip install 'siamsearch[serve]'.

    \b
    Examples:
      siamsearch serve --model runs/demo/model.pt --index index/demo
      siamsearch serve --model model.pt --index index/shop --index index/staff --port 9000
      siamsearch serve --model model.pt --index index/shop --host 0.0.0.0 --api-keys keys.txt --workers 2
    """
    from ..core.errors import SiamsearchError
    from ..serve.config import CONFIG_ENV, ServeConfig

    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as e:
        raise SiamsearchError(f"`siamsearch serve` needs the serve extra ({e.name} is missing): "
                              "pip install 'siamsearch[serve]'") from None
    cfg = ServeConfig(model=model, indexes=tuple(indexes), host=host, port=port, api_keys=api_keys,
                      max_upload_mb=max_upload_mb, max_pixels=max_pixels, workers=workers,
                      inference_threads=inference_threads, queue=queue, rate_limit=rate_limit,
                      device=device).check()
    if workers == 1:
        app = create_app(cfg)  # load model and galleries now: errors are reported before listening
        svc = app.state.service
        names = ", ".join(f"{h.name} ({len(h.current())} images)" for h in svc.galleries.values())
        fp = svc.model.fingerprint
    else:
        from ..serve.service import Service

        svc = Service(cfg)  # check everything once in this process; each worker loads its own copy
        names = ", ".join(f"{h.name} ({len(h.current())} images)" for h in svc.galleries.values())
        fp = svc.model.fingerprint
        os.environ[CONFIG_ENV] = cfg.to_env()
        os.environ["SIAMSEARCH_PRECISION"] = svc.model.precision  # the workers load the model afresh
        app = "siamsearch.serve.app:app_from_env"
    url = f"http://{host if ':' not in host else '[' + host + ']'}:{port}"
    click.echo(f"model {fp}; galleries: {names}")
    click.echo(f"listening on {url}  (web page {url}/, API docs {url}/docs, {workers} worker(s))")
    if api_keys is None:
        click.echo("no --api-keys: anyone on this machine can enrol and remove; serving on loopback only")
    uvicorn.run(app, host=host, port=port, workers=workers if workers > 1 else None,
                factory=workers > 1, log_level="warning", timeout_graceful_shutdown=5)
