"""Galleries: a folder of images embedded into a row store (gallery.h5) plus a Faiss index (see index/README.md).

Names are imported lazily: a Ray actor that unpickles :class:`~siamsearch.gallery.engines.EmbedActor` imports
this package, and should not pay for h5py, Faiss and the whole gallery layer it never uses (~0.45 s of CPU in
each actor's start).
"""
from ..core.lazy import lazy_attributes

_LAZY = {"Gallery": "gallery", "SearchResult": "gallery", "BuildReport": "gallery"}

__all__ = ["Gallery", "SearchResult", "BuildReport"]

__getattr__ = lazy_attributes(__name__, _LAZY)
