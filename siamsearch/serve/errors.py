"""API errors: one JSON shape, ``{"error": {"code", "message"}}``, and the status of each library error.

Library exceptions are mapped here, in one place, so that every endpoint answers
a bad upload, a missing gallery or a busy server the same way.
"""
from __future__ import annotations

from typing import Optional

from ..core.errors import FingerprintMismatch, GalleryError, SiamsearchError, UnreadableImage


class ApiError(Exception):
    """An error answer: HTTP ``status``, a stable machine-readable ``code`` and a ``message`` for people.

    Attributes:
        headers: extra response headers (e.g. ``Retry-After`` on 503).
    """

    def __init__(self, status: int, code: str, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status = int(status)
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict:
        """The JSON body: ``{"error": {"code": ..., "message": ...}}``."""
        return {"error": {"code": self.code, "message": self.message}}


def unreadable_status(reason: str) -> tuple[int, str]:
    """Status and code for an :class:`UnreadableImage` reason: bombs 413, non-images 415, damaged files 422."""
    r = reason.lower()
    if "bomb" in r or "too many pixels" in r:
        return 413, "image_too_large"
    if r.startswith("not an image"):
        return 415, "unsupported_media_type"
    return 422, "unreadable_image"


def from_library(e: SiamsearchError) -> ApiError:
    """The :class:`ApiError` for a library exception (its message is kept: it says what to do)."""
    if isinstance(e, UnreadableImage):
        status, code = unreadable_status(e.reason)
        return ApiError(status, code, str(e))
    if isinstance(e, FingerprintMismatch):
        return ApiError(409, "model_mismatch", str(e))
    if isinstance(e, GalleryError):
        if "another build or update is running" in str(e):
            return ApiError(409, "gallery_busy", str(e))
        return ApiError(503, "gallery_unavailable", str(e), {"Retry-After": "5"})
    return ApiError(422, "invalid_request", str(e))
