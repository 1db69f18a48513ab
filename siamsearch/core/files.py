"""File helpers every layer uses: the ``PathLike`` type and the one atomic writer.

Atomic replacement: write to a temporary name in the same folder, fsync, then
rename over the final name, so that a crash never leaves a half-written file
under that name. :func:`atomic_path` is the one implementation (checkpoints,
calibration records, gallery files and manifests all go through it).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from typing import Iterator, Union

from .errors import SiamsearchError

#: A file-system path as accepted everywhere in siamsearch.
PathLike = Union[str, os.PathLike]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def local_path(path: PathLike, what: str) -> PathLike:
    """``path`` itself, after checking that it is not a URL (``s3://``, ``gs://``, ``https://``...).

    siamsearch reads and writes files through the operating system only; a URL given as a
    path would otherwise become a local folder named ``s3:``.

    Raises:
        SiamsearchError: for a URL, saying to mount the storage and give the mounted path.
    """
    if isinstance(path, str) and _URL.match(path):
        raise SiamsearchError(f"{what} {path!r} is a URL; siamsearch reads and writes local or mounted paths "
                              "only (object storage through fsspec is not implemented): mount the bucket or "
                              "shared filesystem (s3fs, gcsfuse, NFS) and give its path; see docs/scale.md")
    return path


def fsync_path(path: PathLike) -> None:
    """Flush a file's bytes to disk (best effort on file systems that refuse)."""
    try:
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    except OSError:
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed over ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was,
    so a crash never leaves a half-written file under the final name. The parent
    folder is created when missing.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(path: PathLike, obj: object, sort_keys: bool = False) -> None:
    """Write ``obj`` as indented UTF-8 JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=sort_keys)
            f.write("\n")
