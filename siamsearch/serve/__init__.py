"""`siamsearch serve`: the gallery service (FastAPI + uvicorn), its web page and its API.

A front end like the CLI: it imports the library, nothing imports it. Needs the
``serve`` extra (``pip install 'siamsearch[serve]'``).

Python API::

    from siamsearch.serve import ServeConfig, create_app
    app = create_app(ServeConfig(model="model.pt", indexes=("index/shop",)))   # an ASGI app
"""
from __future__ import annotations

from .config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
