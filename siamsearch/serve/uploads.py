"""Uploaded images: size and pixel limits checked from the header, before anything is decoded.

Every image that reaches the model or the gallery through the service passes
:func:`decode_upload`, which reads the image header only, refuses more than
``max_pixels`` pixels (a decompression bomb declares a huge size in a small
file) and then decodes with :func:`siamsearch.core.images.read_image_bytes`, the
library's one decoder, so a bad file has the same reason here as in
``index build``.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

from ..core.errors import UnreadableImage
from ..core.images import IMAGE_EXTENSIONS, read_image_bytes
from .errors import ApiError, unreadable_status

#: File extension for each PIL format an enrolled image keeps its bytes in.
FORMAT_EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif", "WEBP": ".webp",
                     "PPM": ".ppm"}


@dataclass(frozen=True)
class Upload:
    """A decoded upload: the PIL ``image``, the original ``data`` bytes, the ``format`` (PIL's name)
    and the ``extension`` the bytes are stored under when enrolled."""

    name: str
    data: bytes
    image: Image.Image
    format: str
    extension: str


def decode_upload(data: bytes, name: str, max_pixels: int) -> Upload:
    """Check and decode one uploaded image.

    Args:
        data: the uploaded bytes. name: the field or file name (for messages).
        max_pixels: width x height above which the image is refused without decoding.

    Raises:
        ApiError: 413 (too many pixels / decompression bomb), 415 (not an image) or
            422 (empty, truncated or damaged).
    """
    if not data:
        raise ApiError(422, "unreadable_image", f"{name}: empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as head:  # reads the header only
                w, h = head.size
                fmt = head.format or ""
        except Image.DecompressionBombError:
            raise ApiError(413, "image_too_large", f"{name}: decompression bomb (too many pixels)") from None
        except Exception:  # unknown or damaged header: let the decoder name the reason
            w = h = 0
            fmt = ""
    if w * h > max_pixels:
        raise ApiError(413, "image_too_large", f"{name}: {w}x{h} = {w * h:,} pixels is over this server's limit "
                                               f"of {max_pixels:,} (--max-pixels); send a smaller image")
    try:
        image = read_image_bytes(data, name)
    except UnreadableImage as e:
        status, code = unreadable_status(e.reason)
        raise ApiError(status, code, str(e)) from None
    ext = FORMAT_EXTENSIONS.get(fmt, "")
    if ext not in IMAGE_EXTENSIONS:
        ext = ""  # a format the gallery scan would not pick up: stored re-encoded as PNG
    return Upload(name=name, data=data, image=image, format=fmt, extension=ext)


def stored_bytes(upload: Upload) -> tuple[bytes, str]:
    """The bytes and extension to store an enrolled image under: the upload as sent, or PNG when its
    format is not one the gallery scan reads."""
    if upload.extension:
        return upload.data, upload.extension
    buf = io.BytesIO()
    upload.image.save(buf, format="PNG")
    return buf.getvalue(), ".png"
