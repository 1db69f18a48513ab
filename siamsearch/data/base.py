"""ImageDataset: every dataset format yields ``(image, identity: int)``.

A dataset is a *view*: a storage backend (files, zip members or in-memory
arrays) plus the positions of the samples it shows, their identity ids and the
identity names. :meth:`ImageDataset.subset` and :meth:`ImageDataset.with_transform`
make new views over the same storage without copying images.

Unreadable images never crash an epoch: ``dataset[i]`` returns ``None`` after a
warning naming the file (once per file and process), and
:func:`collate_skip_none` drops those samples from a DataLoader batch.
"""
from __future__ import annotations

import hashlib
import os
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torch.utils.data.dataloader import default_collate

from ..core.errors import SiamsearchError, UnreadableImage
from ..core.files import PathLike
from ..core.images import read_image, read_image_bytes, sha256_file


#: The dataset layouts the loaders read, as error messages list them.
ACCEPTED_LAYOUTS = (
    "siamsearch reads these dataset layouts (--format):\n"
    "  folders   DIR/<identity>/<image files>: one sub-folder of images per identity\n"
    "  idx       DIR holding MNIST/Fashion-MNIST IDX files: train-images-idx3-ubyte[.gz] and\n"
    "            train-labels-idx1-ubyte[.gz] (t10k-* for the test split)\n"
    "  omniglot  Omniglot zip files or folders: .../<Alphabet>/characterNN/*.png (several allowed)\n"
    "  celeba    DIR with img_align_celeba/ and identity_CelebA.txt (+ list_eval_partition.txt)"
)


def as_paths(path: Union[PathLike, Sequence[PathLike]]) -> list[Path]:
    if isinstance(path, (str, os.PathLike)):
        paths = [Path(path)]
    else:
        paths = [Path(p) for p in path]
    if not paths:
        raise SiamsearchError("no dataset path given")
    for p in paths:
        if not p.exists():
            raise SiamsearchError(f"{p} does not exist; give a dataset folder or file.\n{ACCEPTED_LAYOUTS}")
    return paths


class UnreadableImageWarning(UserWarning):
    """Issued (once per file and process) when a dataset skips an unreadable image."""


_warned: set = set()
_warned_lock = threading.Lock()


def _warn_unreadable(err: UnreadableImage) -> None:
    with _warned_lock:
        if err.path in _warned:
            return
        _warned.add(err.path)
    warnings.warn(f"skipping unreadable image {err.path}: {err.reason}", UnreadableImageWarning, stacklevel=3)


# --------------------------------------------------------------------------- backends
class _Backend:
    """Storage of raw samples addressed by position ``j`` (not by dataset index)."""

    def load(self, j: int) -> Image.Image:  # pragma: no cover - interface
        raise NotImplementedError

    def source(self, j: int) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def key(self, j: int) -> str:
        """The source relative to the dataset root (what :meth:`ImageDataset.digest` hashes)."""
        raise NotImplementedError  # pragma: no cover - interface

    def read_bytes(self, j: int) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def content_hash(self, j: int) -> str:
        return hashlib.sha256(self.read_bytes(j)).hexdigest()


class EntryBackend(_Backend):
    """Image files in folders and/or members of zip archives.

    Args:
        containers: folders or zip files; ``kinds[c]`` is ``"dir"`` or ``"zip"``.
        container_of: ``[n]`` int, the container of each entry.
        names: ``[n]`` path of each entry relative to its folder, or its zip member name.

    Zip files are opened lazily, once per process (never pickled), so the
    backend works inside DataLoader worker processes.
    """

    def __init__(self, containers: Sequence[str], kinds: Sequence[str], container_of: np.ndarray,
                 names: Sequence[str]):
        self.containers = [str(c) for c in containers]
        self.kinds = list(kinds)
        self.container_of = np.asarray(container_of, dtype=np.int32)
        self.names = list(names)
        self._zips: dict = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_zips"] = {}
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _zip(self, c: int) -> zipfile.ZipFile:
        if self._pid != os.getpid():  # forked into a worker: do not share file handles
            self._zips, self._pid = {}, os.getpid()
        z = self._zips.get(c)
        if z is None:
            with self._lock:
                z = self._zips.get(c)
                if z is None:
                    try:
                        z = zipfile.ZipFile(self.containers[c])
                    except (OSError, zipfile.BadZipFile) as e:
                        raise SiamsearchError(f"cannot open archive {self.containers[c]}: {e}") from None
                    self._zips[c] = z
        return z

    def _is_zip(self, j: int) -> bool:
        return self.kinds[self.container_of[j]] == "zip"

    def source(self, j: int) -> str:
        c = int(self.container_of[j])
        if self.kinds[c] == "zip":
            return f"{self.containers[c]}::{self.names[j]}"
        return os.path.join(self.containers[c], self.names[j])

    def key(self, j: int) -> str:
        c = int(self.container_of[j])
        if self.kinds[c] == "zip":
            return f"{os.path.basename(self.containers[c])}::{self.names[j]}"
        return self.names[j].replace(os.sep, "/")

    def read_bytes(self, j: int) -> bytes:
        if not self._is_zip(j):
            with open(self.source(j), "rb") as f:
                return f.read()
        try:
            return self._zip(int(self.container_of[j])).read(self.names[j])
        except (KeyError, zipfile.BadZipFile, OSError, EOFError) as e:
            raise UnreadableImage(self.source(j), f"corrupt archive member ({e})") from None

    def load(self, j: int) -> Image.Image:
        if not self._is_zip(j):
            return read_image(self.source(j))
        return read_image_bytes(self.read_bytes(j), self.source(j))

    def content_hash(self, j: int) -> str:
        if not self._is_zip(j):
            return sha256_file(self.source(j))
        return super().content_hash(j)


class ArrayBackend(_Backend):
    """Grey images held in memory: ``images [n, H, W]`` uint8 (IDX files, arrays).

    ``files[f]`` names the file entry ``j`` came from (``file_of[j]``) and
    ``offset_of[j]`` its record number there; ``folder`` is where the files lie.
    """

    def __init__(self, images: np.ndarray, folder: str, files: Sequence[str], file_of: np.ndarray,
                 offset_of: np.ndarray):
        self.images = images
        self.folder = str(folder)
        self.files = list(files)
        self.file_of = np.asarray(file_of, dtype=np.int32)
        self.offset_of = np.asarray(offset_of, dtype=np.int64)

    def source(self, j: int) -> str:
        return f"{os.path.join(self.folder, self.files[self.file_of[j]])}#{int(self.offset_of[j])}"

    def key(self, j: int) -> str:
        return f"{self.files[self.file_of[j]]}#{int(self.offset_of[j])}"

    def read_bytes(self, j: int) -> bytes:
        return np.ascontiguousarray(self.images[j]).tobytes()

    def load(self, j: int) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(self.images[j]), "L")


# --------------------------------------------------------------------------- dataset
class ImageDataset(Dataset):
    """A labelled image collection: ``dataset[i] -> (image, identity)``.

    Attributes:
        identities: ``[N]`` int64 identity id of each sample, contiguous ids
            ``0..K-1`` (after ``subset(..., reindex=False)`` a subset of them).
        identity_names: ``list[str]`` of length ``K``; ``identity_names[id]``.
        format: the loader that made it: ``"folders"``, ``"idx"``,
            ``"omniglot"``, ``"celeba"`` or ``"arrays"``.
        transform: ``None`` (items are PIL images) or a callable applied to
            each PIL image (set it with :meth:`with_transform`).
        root: the path(s) the dataset was opened from (for messages).
        notes: what the loader did beyond reading (duplicates merged, files
            ignored or missing), one sentence each.
    """

    def __init__(self, backend: _Backend, positions: np.ndarray, identities: np.ndarray,
                 identity_names: Sequence[str], format: str, root: str = "",
                 transform: Optional[Callable[[Image.Image], Any]] = None):
        positions = np.asarray(positions, dtype=np.int64)
        identities = np.asarray(identities, dtype=np.int64)
        if positions.shape != identities.shape or positions.ndim != 1:
            raise ValueError("positions and identities must be 1-D arrays of the same length")
        self._backend = backend
        self._positions = positions
        self.identities = identities
        self.identity_names = list(identity_names)
        self.format = format
        self.root = root
        self.transform = transform
        self.notes: list[str] = []

    # ---- constructors for in-memory data and explicit file lists
    @classmethod
    def from_arrays(cls, images: np.ndarray, identities: Sequence[int],
                    identity_names: Optional[Sequence[str]] = None, name: str = "arrays") -> "ImageDataset":
        """Wrap grey images ``[N, H, W]`` (uint8) and their labels (any ints) as a dataset.

        Labels are mapped to contiguous ids in sorted order; ``identity_names``
        defaults to ``str(label)``. Sources read ``"{name}#{i}"``.
        """
        images = np.asarray(images)
        if images.ndim != 3:
            raise SiamsearchError(f"images must be [N, H, W] grey arrays; got shape {images.shape}")
        if images.dtype != np.uint8:
            raise SiamsearchError(f"images must be uint8 (0..255); got {images.dtype}")
        labels = np.asarray(identities)
        if labels.shape != (len(images),):
            raise SiamsearchError(f"need one identity per image: {len(images)} images, labels shape {labels.shape}")
        uniq, ids = np.unique(labels, return_inverse=True)
        names = [str(u) for u in uniq] if identity_names is None else list(identity_names)
        if len(names) != len(uniq):
            raise SiamsearchError(f"identity_names has {len(names)} entries for {len(uniq)} distinct identities")
        n = len(images)
        backend = ArrayBackend(images, "", [name], np.zeros(n, np.int32), np.arange(n))
        return cls(backend, np.arange(n), ids, names, "arrays", root=name)

    # ---- basic access
    def __len__(self) -> int:
        return len(self._positions)

    @property
    def num_identities(self) -> int:
        """``K = len(identity_names)`` (ids may be unused after a non-reindexed subset)."""
        return len(self.identity_names)

    def images_per_identity(self) -> np.ndarray:
        """``[K]`` int64: how many samples of this view carry each id."""
        return np.bincount(self.identities, minlength=self.num_identities).astype(np.int64)

    def _check(self, i: int) -> int:
        n = len(self._positions)
        i = int(i)
        if i < -n or i >= n:
            raise IndexError(f"index {i} out of range for a dataset of {n} images")
        return int(self._positions[i])

    def load(self, i: int) -> Image.Image:
        """Decode sample ``i`` as a PIL image in its stored mode (IDX data: mode ``'L'``).

        Raises:
            UnreadableImage: with the reason from :func:`siamsearch.core.images.read_image`.
        """
        return self._backend.load(self._check(i))

    def source(self, i: int) -> str:
        """Where sample ``i`` comes from: a file path, ``"archive.zip::member"`` or ``"file#record"``."""
        return self._backend.source(self._check(i))

    def sources(self) -> list[str]:
        """:meth:`source` for every sample."""
        return [self._backend.source(int(j)) for j in self._positions]

    def content_hash(self, i: int) -> str:
        """SHA-256 hex of sample ``i``'s stored bytes (file bytes; pixel bytes for arrays).

        Raises:
            UnreadableImage: when the bytes cannot be read.
        """
        j = self._check(i)
        try:
            return self._backend.content_hash(j)
        except OSError as e:
            raise UnreadableImage(self._backend.source(j), f"missing or not readable ({e.strerror})") from None

    def identity(self, i: int) -> int:
        return int(self.identities[i])

    def __getitem__(self, i: int):
        """``(transform(image) or PIL image, identity: int)``, or ``None`` when unreadable.

        An unreadable image is reported once per file with an
        :class:`UnreadableImageWarning`; use :func:`collate_skip_none` in the
        DataLoader to drop it from the batch.
        """
        try:
            img = self.load(i)
        except UnreadableImage as e:
            _warn_unreadable(e)
            return None
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.identities[i])

    # ---- views
    def _view(self, positions: np.ndarray, identities: np.ndarray, names: Sequence[str],
              transform: Optional[Callable]) -> "ImageDataset":
        view = ImageDataset.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view._positions, view.identities, view.identity_names = positions, identities, list(names)
        view.transform = transform
        view.notes = list(self.notes)
        return view

    def with_transform(self, transform: Optional[Callable[[Image.Image], Any]]) -> "ImageDataset":
        """A view of the same samples whose items pass through ``transform`` (``None``: PIL images)."""
        return self._view(self._positions, self.identities, self.identity_names, transform)

    def subset(self, indices: Union[Sequence[int], np.ndarray], reindex: bool = True) -> "ImageDataset":
        """A view holding samples ``indices`` (in that order) of this dataset.

        Args:
            indices: ``[M]`` sample indices of this dataset (ints, or a bool mask of length N).
            reindex: ``True`` (default): ids are renumbered ``0..K'-1`` over the
                identities present, in the order of their old ids, and
                ``identity_names`` shrinks to those ``K'`` names (what a
                classification head needs). ``False``: ids and names are kept as
                they are (ids then need not be contiguous).
        """
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise SiamsearchError(f"a boolean mask must have length {len(self)}; got {idx.shape}")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise SiamsearchError(f"subset indices must lie in 0..{len(self) - 1}")
        ids = self.identities[idx]
        names = self.identity_names
        if reindex:
            used, ids = np.unique(ids, return_inverse=True)
            ids = ids.astype(np.int64).reshape(-1)
            names = [self.identity_names[u] for u in used]
        return self._view(self._positions[idx], ids, names, self.transform)

    # ---- bookkeeping
    def digest(self) -> str:
        """SHA-256 hex of the sample list: format, and each sample's source (relative to the
        dataset root, so moving the data keeps the digest) with its identity name, in order.

        The same files opened the same way give the same digest; any change to which
        samples are present, their order or their labels changes it. Pixel content is
        not hashed (use :meth:`content_hash` for that).
        """
        h = hashlib.sha256(f"siamsearch-dataset-v1\n{self.format}\n".encode())
        names = self.identity_names
        for j, ident in zip(self._positions, self.identities):
            h.update(f"{self._backend.key(int(j))}\t{names[int(ident)]}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def __repr__(self) -> str:
        return (f"ImageDataset(format={self.format!r}, root={self.root!r}, images={len(self)}, "
                f"identities={len(np.unique(self.identities))})")


def collate_skip_none(batch: list) -> Any:
    """DataLoader ``collate_fn`` that drops ``None`` items (unreadable images) then
    applies torch's default collation. Returns ``None`` when every item was dropped;
    the training loop must skip such a batch."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return default_collate(batch)


def guess_channels_and_size(ds: ImageDataset, seed: int) -> tuple[int, int]:
    """Look at up to 16 images: grey everywhere -> 1 channel; their median size -> input size."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(ds), size=min(16, len(ds)), replace=False)
    colour, sides = False, []
    for i in idx:
        try:
            im = ds.load(int(i))
        except SiamsearchError:
            continue
        if im.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
            if im.mode == "P":
                im = im.convert("RGB")
            if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
                arr = np.asarray(im.convert("RGB"), dtype=np.int16)
                colour |= bool(np.abs(arr - arr.mean(axis=2, keepdims=True)).max() > 8)
            else:
                colour = True
        sides.append(max(im.size))
    side = float(np.median(sides)) if sides else 64.0
    return (3 if colour else 1), (32 if side <= 32 else 64)
