"""Galleries: a folder of images embedded into a row store (gallery.h5) plus a Faiss index (see index/README.md)."""
from .gallery import BuildReport, Gallery, SearchResult

__all__ = ["Gallery", "SearchResult", "BuildReport"]
