"""Galleries: a folder of images embedded into a row store (gallery.h5) plus a Faiss index (see index/README.md).

Names are imported lazily: a Ray actor that unpickles :class:`~siamsearch.gallery.engines.EmbedActor` imports
this package, and should not pay for h5py, Faiss and the whole gallery layer it never uses (~0.45 s of CPU in
each actor's start).
"""
from importlib import import_module

_LAZY = {"Gallery": "gallery", "SearchResult": "gallery", "BuildReport": "gallery"}

__all__ = ["Gallery", "SearchResult", "BuildReport"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'siamsearch.gallery' has no attribute {name!r}")
