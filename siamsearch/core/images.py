"""Reading image files: one place that decodes, and one list of reasons why not.

Every component that opens user images (datasets, indexer, query, data check)
goes through :func:`read_image`, so a skipped file has the same reason
everywhere.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import SiamsearchError, UnreadableImage

#: File name endings scanned as images (compared lower-case).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

#: Images with more pixels than this are refused as decompression bombs
#: (about 16k x 16k; PIL's own default warns at 89 Mpx and fails at 179 Mpx).
MAX_PIXELS = 16384 * 16384

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


def is_image_file(path: Union[str, os.PathLike]) -> bool:
    """True when the file name ends with one of :data:`IMAGE_EXTENSIONS`."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(root: Union[str, os.PathLike]) -> list[Path]:
    """All image files below ``root``, recursively, sorted, hidden entries skipped.

    Raises:
        SiamsearchError: when ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise SiamsearchError(f"{root} is not a folder; give a folder of images")
    return sorted(iter_images(root))


def iter_images(root: Path) -> Iterator[Path]:
    """Yield image files below ``root`` in directory order (streaming, unsorted).

    Symbolic links to folders are followed (a dataset assembled from links to
    identity folders reads like a copied one). A link that leads back into a
    folder on its own path (a loop) is not followed, with a warning.
    """
    for dirpath, names in walk_image_dirs(root):
        for name in names:
            yield Path(dirpath) / name


def walk_image_dirs(root: Union[str, os.PathLike]) -> Iterator[tuple[str, list]]:
    """:func:`iter_images` one folder at a time, as strings: ``(folder path, [image file names])``.

    Scans of large folders use it: they stat every file, and building a ``Path`` per file, or
    working out a file's folder-level facts (its identity) per file, would cost more than that.
    """
    root = os.fspath(root)
    # For each folder still to visit: the real paths of the folders on its way from root.
    ancestors = {root: frozenset({os.path.realpath(root)})}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        above = ancestors.pop(dirpath, frozenset())
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            full = os.path.join(dirpath, d)
            real = os.path.realpath(full)
            if real in above:
                warnings.warn(f"{full}: symbolic link loop (it leads back to {real}); not followed", stacklevel=3)
                continue
            ancestors[full] = above | {real}
            keep.append(d)
        dirnames[:] = keep
        # the extension test of is_image_file; a name without a dot yields its last character, never a match
        names = [n for n in filenames if not n.startswith(".") and n[n.rfind("."):].lower() in IMAGE_EXTENSIONS]
        if names:
            yield dirpath, names


def sha256_file(path: Union[str, os.PathLike], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _decode(fp, name: str, min_size: Optional[int] = None, mode: Optional[str] = None) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(fp)
        except UnidentifiedImageError:
            raise UnreadableImage(name, "not an image (unknown format)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UnreadableImage(name, "decompression bomb (too many pixels)") from None
        except OSError as e:  # a damaged header fails already when opening
            msg = str(e).lower()
            reason = "truncated" if "truncat" in msg or "broken" in msg else f"corrupt ({e})"
            raise UnreadableImage(name, reason) from None
        except (SyntaxError, ValueError, EOFError) as e:
            raise UnreadableImage(name, f"corrupt ({e})") from None
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise UnreadableImage(name, f"decompression bomb ({w}x{h} pixels > {MAX_PIXELS})")
        if w == 0 or h == 0:
            raise UnreadableImage(name, "empty image (zero width or height)")
        if min_size and img.format == "JPEG" and min(w, h) >= 2 * min_size:
            _draft(img, min_size, mode)
        try:
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UnreadableImage(name, "decompression bomb (too many pixels)") from None
        except OSError as e:
            msg = str(e).lower()
            reason = "truncated" if "truncat" in msg or "broken" in msg else f"corrupt ({e})"
            raise UnreadableImage(name, reason) from None
        except (SyntaxError, ValueError, EOFError) as e:
            raise UnreadableImage(name, f"corrupt ({e})") from None
    if "exif" in img.info or img.format == "TIFF":  # no EXIF block, no orientation to apply (saves ~25 us)
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # a broken EXIF block should not lose the pixels
            pass
    return img


def _draft(img: Image.Image, min_size: int, mode: Optional[str]) -> None:
    """Let the JPEG decoder scale by 1/2, 1/4 or 1/8 in the DCT domain while keeping both sides at least
    ``min_size`` pixels, and decode straight to grey when ``mode == "L"`` (the luma plane only)."""
    try:
        img.draft(mode if mode == "L" and img.mode in ("RGB", "L") else None, (min_size, min_size))
    except (OSError, ValueError):  # a decoder that cannot scale: decode in full
        pass


def read_image(path: Union[str, os.PathLike], min_size: Optional[int] = None, mode: Optional[str] = None) -> Image.Image:
    """Decode an image file, with EXIF orientation applied.

    Args:
        path: the file.
        min_size: when given, a JPEG at least twice this size on its short side is decoded at a reduced
            scale (1/2, 1/4 or 1/8, in the DCT domain: PIL's ``Image.draft``), both sides staying at least
            ``min_size`` pixels: 3-10x faster for photos that are resized down anyway. Other formats are
            decoded in full.
        mode: with ``min_size``: ``"L"`` decodes a colour JPEG straight to grey (its luma plane).

    Returns:
        A loaded PIL image in its original mode (1, L, P, RGB, RGBA, CMYK, I;16, ...).

    Raises:
        UnreadableImage: with a short reason: ``missing``, ``empty file``,
            ``not an image``, ``truncated``, ``corrupt (...)``, ``decompression bomb``.
    """
    name, data = _file_bytes(path)
    return _decode(io.BytesIO(data), name, min_size, mode)


def _file_bytes(path: Union[str, os.PathLike]) -> tuple[str, bytes]:
    """``(name for messages, the file's bytes)``, or :class:`UnreadableImage` (missing, empty, unreadable)."""
    name = str(path)
    try:
        size = os.path.getsize(path)
    except OSError:
        raise UnreadableImage(name, "missing or not readable") from None
    if size == 0:
        raise UnreadableImage(name, "empty file (0 bytes)")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UnreadableImage(name, f"not readable ({e.strerror})") from None
    return name, data


def read_image_bytes(data: bytes, name: str) -> Image.Image:
    """Decode an image from bytes (e.g. a zip member); ``name`` is used in errors."""
    if not data:
        raise UnreadableImage(name, "empty file (0 bytes)")
    return _decode(io.BytesIO(data), name)


def read_image_digest(path: Union[str, os.PathLike], min_size: Optional[int] = None,
                      mode: Optional[str] = None) -> tuple[Image.Image, str]:
    """:func:`read_image` and the hex SHA-256 of the very bytes it decoded, from one read of the file (a
    hash taken in a second read could describe a file that changed in between).

    Raises:
        UnreadableImage: as :func:`read_image`.
    """
    name, data = _file_bytes(path)
    return _decode(io.BytesIO(data), name, min_size, mode), hashlib.sha256(data).hexdigest()


def as_pil(image: ImageLike) -> Image.Image:
    """Accept a path, a PIL image or an array and return a PIL image.

    Arrays are ``[H, W]`` (grey) or ``[H, W, C]`` with C in {1, 3, 4}, uint8
    (0..255) or float (0..1).
    """
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise SiamsearchError(
                f"an image array must be [H, W] or [H, W, 3|4]; got shape {tuple(image.shape)}"
            )
        if arr.dtype != np.uint8:
            arr = np.asarray(arr, dtype=np.float64)
            if arr.size and arr.max() <= 1.0:
                arr = arr * 255.0
            arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr)
    raise SiamsearchError(
        f"cannot use {type(image).__name__} as an image; give a file path, a PIL image or a numpy array"
    )
