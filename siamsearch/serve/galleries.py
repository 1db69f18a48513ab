"""A served gallery: consistent snapshots for readers, serialised writers, crash-safe enrol and remove.

Readers take :meth:`GalleryHandle.current`, an opened :class:`~siamsearch.gallery.Gallery`
that never changes under them; a write publishes a new ``gallery.h5`` (atomically,
through :func:`siamsearch.gallery.gallery.update_gallery`, the code of ``index update``)
and the next reader opens it. Other processes' writes are seen the same way: each
read compares ``gallery.h5``'s inode and mtime with the snapshot's.

Enrol and remove change the gallery's *image folder* and then run ``index update``:

1. enrol writes the uploads to a hidden staging folder inside the image folder
   (hidden folders are not scanned);
2. a journal (``.serve-journal.json`` in the gallery folder) records the moves
   (enrol) or deletions (remove): from here on the change will complete;
3. files are moved into ``IMAGE_DIR/IDENTITY/`` or deleted;
4. ``update_gallery`` embeds and publishes; the journal is removed.

A process killed before step 2 leaves only staging files, removed at the next
start (the enrolment is absent); killed after it, the next start replays the
journal and updates (the enrolment is complete). Writers hold a thread lock and
an ``flock`` on ``.serve-write.lock``, so worker processes take turns.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..core.errors import GalleryError
from ..core.files import fsync_path, write_json_atomic
from ..gallery import Gallery
from ..gallery.gallery import update_gallery
from .config import gallery_name
from .errors import ApiError
from .uploads import Upload, stored_bytes

JOURNAL_NAME = ".serve-journal.json"
WRITE_LOCK_NAME = ".serve-write.lock"
STAGING_NAME = ".siamsearch-staging"
#: Longest identity name accepted (characters).
MAX_IDENTITY = 128
#: Fault injection for the crash tests: SIGKILL this process at the named step of an enrolment.
CRASH_ENV = "SIAMSEARCH_SERVE_CRASH_AT"


def check_identity(identity: str) -> str:
    """An identity is one folder name: no ``/``, ``\\``, NUL or control characters, not ``.``/``..``,
    not hidden (a leading ``.`` would hide it from the scan), at most 128 characters.

    Raises:
        ApiError: 400 ``bad_identity``.
    """
    ident = (identity or "").strip()
    bad = (not ident or ident in (".", "..") or ident.startswith(".") or len(ident) > MAX_IDENTITY
           or any(c in ident for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in ident))
    if bad:
        raise ApiError(400, "bad_identity", f"identity {identity!r} is not usable as a folder name: give 1-"
                                            f"{MAX_IDENTITY} characters without '/', '\\', control characters "
                                            "or a leading '.'")
    return ident


def image_id(relpath: str) -> str:
    """The API id of a gallery image: 16 hex characters of a hash of its path in the image folder.

    Stable across updates, compaction, restarts and worker processes (gallery row ids are not: a
    compaction renumbers rows), and equal for the same file in a fresh build of the folder.
    """
    return hashlib.blake2b(relpath.encode("utf-8"), digest_size=8).hexdigest()


def _crash_point(step: str) -> None:
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


class _WriteLock:
    """Thread lock plus a blocking ``flock`` on the gallery folder's write-lock file (across processes)."""

    def __init__(self, folder: Path):
        self.path = folder / WRITE_LOCK_NAME
        self.thread_lock = threading.Lock()

    def __enter__(self) -> "_WriteLock":
        self.thread_lock.acquire()
        try:
            self.f = open(self.path, "a+")
            fcntl.flock(self.f.fileno(), fcntl.LOCK_EX)
        except BaseException:
            self.thread_lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            fcntl.flock(self.f.fileno(), fcntl.LOCK_UN)
            self.f.close()
        finally:
            self.thread_lock.release()


class GalleryHandle:
    """One served gallery (see the module docstring).

    Args:
        folder: the gallery folder (``index/NAME``); its API name is the folder's name.
        model: the server's :class:`~siamsearch.core.embedder.Embedder`; it must be the gallery's model.

    Raises:
        FingerprintMismatch: the gallery was built by another model (both fingerprints named).
        GalleryError: the folder is not a readable gallery.
    """

    def __init__(self, folder: os.PathLike | str, model: Any):
        self.folder = Path(folder)
        self.name = gallery_name(folder)
        self.model = model
        Gallery.open(self.folder, model=model).close()  # refuse a foreign or damaged gallery before anything
        self._swap = threading.Lock()
        self._write = _WriteLock(self.folder)
        self._gallery: Optional[Gallery] = None
        self._stamp: Optional[tuple] = None
        self._positions: "weakref.WeakKeyDictionary[Gallery, dict]" = weakref.WeakKeyDictionary()
        self.recover()

    # ---- readers

    def _stamp_now(self) -> Optional[tuple]:
        try:
            st = os.stat(self.folder / "gallery.h5")
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload(self) -> None:
        """Open the published gallery as the new snapshot (retried briefly: another process may be
        between renaming faiss.index and gallery.h5)."""
        for attempt in range(20):
            stamp = self._stamp_now()
            try:
                g = Gallery.open(self.folder, model=self.model)
            except GalleryError:
                if attempt == 19:
                    raise
                time.sleep(0.05)
                continue
            self._gallery, self._stamp = g, stamp
            return

    def current(self) -> Gallery:
        """The latest published gallery, opened; it stays valid and unchanged for as long as it is held."""
        stamp = self._stamp_now()
        if self._gallery is None or (stamp is not None and stamp != self._stamp):
            with self._swap:
                if self._gallery is None or self._stamp_now() != self._stamp:
                    try:
                        self._reload()
                    except GalleryError:
                        if self._gallery is None:
                            raise
        return self._gallery  # type: ignore[return-value]

    def summary(self) -> dict:
        """``name``, ``size``, ``identities``, ``index`` (Faiss factory), ``dim``, ``label_mode``."""
        g = self.current()
        labels = g.labels
        n_ids = int(len(np.unique(labels[labels >= 0]))) if len(labels) else 0
        return {"name": self.name, "size": len(g), "identities": n_ids, "index": g.index.factory, "dim": g.dim,
                "label_mode": g.attrs.get("label_mode")}

    def identities(self, offset: int = 0, limit: int = 50) -> dict:
        """Identities sorted by name with their image counts and live image ids (one page)."""
        g = self.current()
        names, labels = g.label_names, g.labels
        groups: dict = {}
        for lab, rel in zip(labels.tolist(), g.relpaths):
            if lab >= 0:
                groups.setdefault(names[lab], []).append(image_id(rel))
        keys = sorted(groups)
        page = keys[offset:offset + limit]
        return {"gallery": self.name, "total": len(keys), "offset": offset, "limit": limit,
                "identities": [{"identity": k, "images": len(groups[k]), "image_ids": groups[k]} for k in page]}

    def position(self, g: Gallery, ident: str) -> Optional[int]:
        """Position (in ``g``'s live arrays) of the image with API id ``ident``, or ``None``."""
        table = self._positions.get(g)
        if table is None:
            table = {image_id(r): j for j, r in enumerate(g.relpaths)}
            self._positions[g] = table
        return table.get(ident)

    def image_path(self, ident: str) -> tuple[Path, str]:
        """The stored file of a live image id (see :func:`image_id`) and its path relative to the image folder.

        Raises:
            ApiError: 404 when the id is not a live image of this gallery.
        """
        g = self.current()
        pos = self.position(g, ident)
        if pos is None:
            raise ApiError(404, "image_not_found", f"gallery {self.name!r} has no image with id {ident!r}")
        rel = g.relpaths[pos]
        root = g.source_dir.resolve()
        path = (root / rel).resolve()
        if root not in path.parents:
            raise ApiError(404, "image_not_found", f"image {ident} lies outside the gallery's folder")
        return path, rel

    def image_bytes(self, ident: str) -> tuple[bytes, str]:
        """The stored file's bytes and its media type (404 also when it was removed while being read)."""
        import mimetypes

        path, rel = self.image_path(ident)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ApiError(404, "image_not_found", f"image {ident} ({rel}) was removed") from None
        return data, mimetypes.guess_type(path.name)[0] or "application/octet-stream"

    def embedding_map(self, limit: int = 2000, seed: int = 0) -> dict:
        """A 2-D PCA projection of (up to ``limit``, seeded sample of) the gallery's embeddings."""
        g = self.current()
        n = len(g)
        take = np.arange(n) if n <= limit else np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
        emb = g.embeddings[take].astype(np.float64)
        xy = np.zeros((len(take), 2))
        explained = [0.0, 0.0]
        if len(take) >= 2:
            centred = emb - emb.mean(axis=0)
            _, s, vt = np.linalg.svd(centred, full_matrices=False)
            comps = vt[:2]
            xy[:, :comps.shape[0]] = centred @ comps.T
            var = s ** 2
            explained = [float(v / var.sum()) if var.sum() > 0 else 0.0 for v in var[:2]] + [0.0] * (2 - len(var[:2]))
        names, labels = g.label_names, g.labels[take]
        return {"gallery": self.name, "method": "pca", "explained_variance": explained, "total": n,
                "points": [{"id": image_id(g.relpaths[t]), "x": float(x), "y": float(y),
                            "label": names[lab] if lab >= 0 else None}
                           for t, (x, y), lab in zip(take.tolist(), xy.tolist(), labels.tolist())]}

    # ---- writers

    def enrol(self, identity: str, uploads: Sequence[Upload]) -> list[dict]:
        """Store ``uploads`` under ``IMAGE_DIR/identity/`` and update the gallery; returns the new images
        (``id``, ``path`` relative to the image folder, ``identity``), searchable on return.

        Raises:
            ApiError: 400 bad identity, 409 gallery without identities or busy with another update.
        """
        identity = check_identity(identity)
        with self._write:
            g = self.current()
            if g.attrs.get("label_mode") != "from-folder":
                raise ApiError(409, "no_identities", f"gallery {self.name!r} was built with --labels none, so it has "
                                                     "no identities to enrol into; rebuild it from identity folders")
            source = g.source_dir
            staging = source / STAGING_NAME / uuid.uuid4().hex
            staging.mkdir(parents=True)
            moves = []
            for up in uploads:
                data, ext = stored_bytes(up)
                name = f"{uuid.uuid4().hex[:16]}{ext}"
                tmp = staging / name
                tmp.write_bytes(data)
                fsync_path(tmp)
                moves.append([str(tmp), str(source / identity / name)])
            _crash_point("staged")
            journal = {"op": "enrol", "moves": moves, "deletes": [], "staging": str(staging)}
            self._run(journal)
        g = self.current()
        out = []
        for _, final in moves:
            rel = Path(final).relative_to(source).as_posix()
            if self.position(g, image_id(rel)) is not None:
                out.append({"id": image_id(rel), "path": rel, "identity": identity})
        return out

    def remove_image(self, ident: str) -> dict:
        """Delete one image's file and update the gallery. Raises ApiError 404 for an unknown id."""
        with self._write:
            path, rel = self.image_path(ident)
            self._run({"op": "remove", "moves": [], "deletes": [str(path)]})
        return {"removed": [{"id": ident, "path": rel}]}

    def remove_identity(self, identity: str) -> dict:
        """Delete every image of ``identity`` and update the gallery. Raises ApiError 404 when it has none."""
        identity = check_identity(identity)
        with self._write:
            g = self.current()
            names = g.label_names
            code = names.index(identity) if identity in names else -2
            hit = np.flatnonzero(g.labels == code)
            if not len(hit):
                raise ApiError(404, "identity_not_found", f"gallery {self.name!r} has no identity {identity!r}")
            root = g.source_dir
            removed = [{"id": image_id(g.relpaths[j]), "path": g.relpaths[j]} for j in hit.tolist()]
            self._run({"op": "remove", "moves": [], "deletes": [str(root / r["path"]) for r in removed]})
        return {"removed": removed}

    def _run(self, journal: dict) -> None:
        """Journal, apply and publish one change (the caller holds the write lock)."""
        write_json_atomic(self.folder / JOURNAL_NAME, journal)
        _crash_point("journal")
        try:
            _apply(journal)
            _crash_point("moved")
            # an explicit removal may take most of a small gallery: the mass-removal guard is for folders
            # that vanish, not for deletions asked for by name
            update_gallery(self.folder, model=self.model, workers=0, progress=False,
                           allow_mass_removal=journal.get("op") == "remove")
        except BaseException:
            _undo(journal)
            (self.folder / JOURNAL_NAME).unlink(missing_ok=True)
            self._reload()
            raise
        _crash_point("committed")
        (self.folder / JOURNAL_NAME).unlink(missing_ok=True)
        _drop_staging(journal)
        self._reload()

    def recover(self) -> Optional[str]:
        """Finish a change a killed process left journaled, and drop unjournaled staging files.

        Returns:
            ``"replayed"`` when a journal was finished, ``"cleaned"`` when only staging files were
            removed, else ``None``.
        """
        with self._write:
            done = None
            path = self.folder / JOURNAL_NAME
            if path.exists():
                try:
                    journal = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    journal = None
                if journal is not None:
                    _apply(journal)
                    update_gallery(self.folder, model=self.model, workers=0, progress=False,
                                   allow_mass_removal=journal.get("op") == "remove")
                    done = "replayed"
                path.unlink(missing_ok=True)
            g = Gallery.open(self.folder, model=self.model)
            try:
                staging = g.source_dir / STAGING_NAME
            finally:
                g.close()
            if staging.is_dir():
                shutil.rmtree(staging, ignore_errors=True)
                done = done or "cleaned"
            self._reload()
            return done


def _apply(journal: dict) -> None:
    """Do a journal's moves and deletions; each step is skipped when it is already done (replay-safe)."""
    for staged, final in journal.get("moves", []):
        if os.path.exists(staged):
            Path(final).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
    for p in journal.get("deletes", []):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def _undo(journal: dict) -> None:
    """Take back an enrolment whose update failed in this process (deleted files cannot come back: the
    failed update left the published gallery as it was, and the next update drops their rows)."""
    for _, final in journal.get("moves", []):
        try:
            os.unlink(final)
        except FileNotFoundError:
            pass
        try:
            os.rmdir(os.path.dirname(final))  # a new identity's folder, when it is now empty
        except OSError:
            pass
    _drop_staging(journal)


def _drop_staging(journal: dict) -> None:
    staging = journal.get("staging")
    if staging:
        shutil.rmtree(staging, ignore_errors=True)
        try:
            os.rmdir(os.path.dirname(staging))  # the hidden staging root, when no other enrolment uses it
        except OSError:
            pass
