"""Loaders for the dataset layouts the trainer reads, and format auto-detection.

Layouts (``format`` names):

- ``folders``: ``ROOT/<identity>/<image files>``; one sub-folder per identity,
  images may sit in deeper sub-folders of it; extensions compared
  case-insensitively (:data:`siamsearch.core.images.IMAGE_EXTENSIONS`). Image files
  directly in ``ROOT`` belong to no identity and are ignored with a warning.
- ``idx``: a folder with the MNIST / Fashion-MNIST IDX files under their
  original names (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-...``; gzip or raw; ``.idx3-ubyte`` spelling accepted). ``split`` is
  ``"train"`` (default), ``"test"`` or ``"all"``. Identity names are the class
  names: Fashion-MNIST's when the format is given as ``"fashion-mnist"`` or the
  folder path contains "fashion", digits ``"0"``..``"9"`` otherwise (force
  with ``format="mnist"``).
- ``omniglot``: ``.../<Alphabet>/characterNN/*.png`` inside zip files and/or
  unpacked folders; several roots at once (a folder holding such zips reads
  every one of them). Each character is one identity named
  ``"Alphabet/characterNN"``; a character found under several roots is one
  identity and its byte-identical files are kept once (the two minimal
  background splits share Greek and Latin).
- ``celeba``: a folder with ``img_align_celeba/`` and ``identity_CelebA.txt``
  (optionally ``list_eval_partition.txt``; the ``Img/``, ``Anno/``, ``Eval/``
  sub-folders of the original release are searched too). Identities come
  from the identity file (names are CelebA's identity numbers). ``split`` is
  ``"train"``, ``"valid"``, ``"test"`` or ``"all"``; the default is
  ``"train"`` when the partition file exists, else ``"all"``.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import struct
import warnings
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..core.errors import SiamsearchError
from ..core.images import is_image_file, iter_images, list_images
from .base import ArrayBackend, EntryBackend, ImageDataset
from ..core.choices import FORMATS  # noqa: F401  (defined once there, torch-free)
from ..core.files import PathLike

#: Fashion-MNIST class names, index = label.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

ACCEPTED_LAYOUTS = (
    "siamsearch reads these dataset layouts (--format):\n"
    "  folders   DIR/<identity>/<image files>: one sub-folder of images per identity\n"
    "  idx       DIR holding MNIST/Fashion-MNIST IDX files: train-images-idx3-ubyte[.gz] and\n"
    "            train-labels-idx1-ubyte[.gz] (t10k-* for the test split)\n"
    "  omniglot  Omniglot zip files or folders: .../<Alphabet>/characterNN/*.png (several allowed)\n"
    "  celeba    DIR with img_align_celeba/ and identity_CelebA.txt (+ list_eval_partition.txt)"
)

_IDX_RE = re.compile(r"^(train|t10k)-(images|labels)[-.]idx([13])-ubyte(\.gz)?$", re.IGNORECASE)
_CHAR_RE = re.compile(r"^character\d+$")


# --------------------------------------------------------------------------- detection
def _as_paths(path: Union[PathLike, Sequence[PathLike]]) -> list[Path]:
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


def _idx_files(folder: Path) -> dict:
    """{(split 'train'|'t10k', kind 'images'|'labels'): path} for IDX files in ``folder``."""
    found: dict = {}
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return found
    for name in names:
        m = _IDX_RE.match(name)
        if m:
            found.setdefault((m.group(1).lower(), m.group(2).lower()), folder / name)
    return found


def _celeba_files(folder: Path) -> Optional[dict]:
    """Paths of CelebA's parts under ``folder`` or ``None`` when it is not CelebA."""
    def first(*cands: Path) -> Optional[Path]:
        return next((c for c in cands if c.exists()), None)

    ident = first(folder / "identity_CelebA.txt", folder / "Anno" / "identity_CelebA.txt")
    imgs = first(folder / "img_align_celeba", folder / "Img" / "img_align_celeba")
    if ident is None or imgs is None or not imgs.is_dir():
        return None
    if (imgs / "img_align_celeba").is_dir():  # some mirrors nest the folder twice
        imgs = imgs / "img_align_celeba"
    part = first(folder / "list_eval_partition.txt", folder / "Eval" / "list_eval_partition.txt",
                 folder / "list_eval_partition.csv")
    return {"identity": ident, "images": imgs, "partition": part}


def _zip_has_omniglot(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(_omniglot_key(n) is not None for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _omniglot_key(member: str) -> Optional[str]:
    parts = member.replace("\\", "/").split("/")
    if len(parts) >= 3 and _CHAR_RE.match(parts[-2]) and is_image_file(parts[-1]) \
            and not parts[-1].startswith("."):
        return f"{parts[-3]}/{parts[-2]}"
    return None


def _dir_has_omniglot(folder: Path, depth: int = 3) -> bool:
    """A ``characterNN`` folder holding images within ``depth`` levels below ``folder``."""
    level = [folder]
    for _ in range(depth):
        nxt = []
        for d in level:
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                if e.is_dir() and not e.name.startswith("."):
                    if _CHAR_RE.match(e.name) and d != folder and any(
                            is_image_file(f) for f in os.listdir(e.path)):
                        return True
                    nxt.append(Path(e.path))
        level = nxt
    return False


def _omniglot_zips_in(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.glob("*.zip")) if _zip_has_omniglot(p)]


def _has_identity_folders(folder: Path) -> bool:
    for e in sorted(os.scandir(folder), key=lambda e: e.name):
        if e.is_dir() and not e.name.startswith("."):
            if next(iter_images(Path(e.path)), None) is not None:
                return True
    return False


def detect_format(path: Union[PathLike, Sequence[PathLike]]) -> str:
    """Which layout ``path`` (or a list of Omniglot roots) holds.

    Returns:
        ``"idx"``, ``"celeba"``, ``"omniglot"`` or ``"folders"`` (checked in that order).

    Raises:
        SiamsearchError: when nothing matches; the message lists the accepted layouts.
    """
    paths = _as_paths(path)
    if len(paths) > 1:
        kinds = {p: detect_format(p) for p in paths}
        if set(kinds.values()) == {"omniglot"}:
            return "omniglot"
        raise SiamsearchError(
            "several dataset paths are only supported for Omniglot roots; got "
            + ", ".join(f"{p} ({k})" for p, k in kinds.items()) + ". Give one path.")
    p = paths[0]
    if p.is_file():
        if p.suffix.lower() == ".zip":
            if _zip_has_omniglot(p):
                return "omniglot"
            raise SiamsearchError(f"{p} is a zip file without the Omniglot layout "
                                  f"(.../<Alphabet>/characterNN/*.png); unpack it and give the folder.\n"
                                  f"{ACCEPTED_LAYOUTS}")
        if _IDX_RE.match(p.name):
            raise SiamsearchError(f"{p} is one IDX file; give the folder that holds the images and labels "
                                  f"files ({p.parent})")
        raise SiamsearchError(f"{p} is a file, not a dataset.\n{ACCEPTED_LAYOUTS}")
    idx = _idx_files(p)
    if any(kind == "images" for _, kind in idx):
        return "idx"
    if _celeba_files(p) is not None:
        return "celeba"
    if _dir_has_omniglot(p) or _omniglot_zips_in(p):
        return "omniglot"
    if _has_identity_folders(p):
        return "folders"
    raise SiamsearchError(f"{p}: no dataset found (no identity sub-folders with images, no IDX, "
                          f"Omniglot or CelebA files).\n{ACCEPTED_LAYOUTS}")


# --------------------------------------------------------------------------- folders
def open_folders(root: PathLike) -> ImageDataset:
    """Identity folders ``ROOT/<identity>/<images>``; ids follow the sorted folder names."""
    root = Path(root)
    files = list_images(root)
    rels, idents, loose = [], [], 0
    for f in files:
        rel = f.relative_to(root)
        if len(rel.parts) < 2:
            loose += 1
            continue
        rels.append(str(rel))
        idents.append(rel.parts[0])
    if loose:
        loose_note = (f"{root}: {loose} image file(s) lie directly in the dataset folder and belong to no "
                      f"identity; they are ignored (put each identity's images in its own sub-folder)")
        warnings.warn(loose_note)
    if not rels:
        raise SiamsearchError(f"{root}: no images in identity sub-folders.\n{ACCEPTED_LAYOUTS}")
    names, ids = np.unique(np.asarray(idents, dtype=str), return_inverse=True)
    backend = EntryBackend([str(root)], ["dir"], np.zeros(len(rels), np.int32), rels)
    ds = ImageDataset(backend, np.arange(len(rels)), ids.reshape(-1), [str(n) for n in names],
                      "folders", root=str(root))
    if loose:
        ds.notes.append(loose_note)
    return ds


# --------------------------------------------------------------------------- IDX
def read_idx(path: PathLike) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzip or raw) into an array of its stated shape."""
    path = Path(path)
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise SiamsearchError(f"{path}: cannot read IDX file ({e}); download it again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise SiamsearchError(f"{path}: not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise SiamsearchError(f"{path}: IDX element type 0x{data[2]:02x} is not supported (only unsigned bytes)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise SiamsearchError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    count = int(np.prod(dims)) if dims else 0
    if len(data) - 4 - 4 * ndim < count:
        raise SiamsearchError(f"{path}: truncated IDX file ({len(data) - 4 - 4 * ndim} of {count} bytes); "
                              f"download it again")
    return np.frombuffer(data, np.uint8, count=count, offset=4 + 4 * ndim).reshape(dims)


def open_idx(folder: PathLike, split: Optional[str] = None,
             class_names: Optional[Sequence[str]] = None) -> ImageDataset:
    """MNIST / Fashion-MNIST IDX files in ``folder``.

    Args:
        split: ``"train"`` (default, the 60,000 training images), ``"test"``
            (``t10k``) or ``"all"`` (train then test).
        class_names: names for labels 0..; default: Fashion-MNIST names when the
            folder path contains "fashion", else the digits.
    """
    folder = Path(folder)
    split = (split or "train").lower()
    wanted = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}.get(split)
    if wanted is None:
        raise SiamsearchError(f"unknown split {split!r} for IDX data; use train, test or all")
    files = _idx_files(folder)
    images, labels, names, file_of, offsets = [], [], [], [], []
    for part in wanted:
        img_p, lab_p = files.get((part, "images")), files.get((part, "labels"))
        if img_p is None or lab_p is None:
            have = sorted({s for s, _ in files}) or ["none"]
            raise SiamsearchError(
                f"{folder}: the {part} IDX pair ({part}-images-idx3-ubyte[.gz] and {part}-labels-idx1-ubyte[.gz]) "
                f"is missing (found splits: {', '.join('test' if h == 't10k' else h for h in have)}); "
                f"choose another split")
        x, y = read_idx(img_p), read_idx(lab_p)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise SiamsearchError(f"{folder}: {img_p.name} {x.shape} and {lab_p.name} {y.shape} do not match "
                                  f"(need [N, H, W] images and [N] labels)")
        if images and x.shape[1:] != images[0].shape[1:]:
            raise SiamsearchError(f"{folder}: train and test images differ in size")
        file_of.append(np.full(len(x), len(names), np.int32))
        offsets.append(np.arange(len(x)))
        images.append(x)
        labels.append(y)
        names.append(img_p.name)
    x = images[0] if len(images) == 1 else np.concatenate(images)
    y = np.concatenate(labels).astype(np.int64)
    if class_names is None:
        fashion = "fashion" in str(folder.resolve()).lower()
        class_names = FASHION_MNIST_CLASSES if fashion else [str(d) for d in range(10)]
    used, ids = np.unique(y, return_inverse=True)
    ident_names = [class_names[u] if u < len(class_names) else str(u) for u in used]
    backend = ArrayBackend(x, str(folder), names, np.concatenate(file_of), np.concatenate(offsets))
    return ImageDataset(backend, np.arange(len(x)), ids.reshape(-1), ident_names, "idx", root=str(folder))


# --------------------------------------------------------------------------- Omniglot
def _omniglot_roots(paths: list[Path]) -> list[tuple[str, str]]:
    """Expand user paths into (kind, path) containers: zips and folders to scan."""
    out: list[tuple[str, str]] = []
    for p in paths:
        if p.is_file():
            if not _zip_has_omniglot(p):
                raise SiamsearchError(f"{p} holds no Omniglot images (.../<Alphabet>/characterNN/*.png)")
            out.append(("zip", str(p)))
            continue
        found = False
        if _dir_has_omniglot(p, depth=6):
            out.append(("dir", str(p)))
            found = True
        for z in _omniglot_zips_in(p):
            out.append(("zip", str(z)))
            found = True
        if not found:
            raise SiamsearchError(f"{p} holds no Omniglot images (.../<Alphabet>/characterNN/*.png or zips of them)")
    return list(dict.fromkeys(out))


def open_omniglot(paths: Union[PathLike, Sequence[PathLike]]) -> ImageDataset:
    """Omniglot characters from zips and/or folders; one identity per ``Alphabet/characterNN``.

    A character found in several roots becomes one identity; files with identical
    bytes within a character are kept once (first root given wins).
    """
    roots = _omniglot_roots(_as_paths(paths))
    # per character key: list of (container index, name, size)
    chars: dict = defaultdict(list)
    for c, (kind, root) in enumerate(roots):
        if kind == "zip":
            with zipfile.ZipFile(root) as z:
                for info in z.infolist():
                    if info.is_dir():
                        continue
                    key = _omniglot_key(info.filename)
                    if key is not None:
                        chars[key].append((c, info.filename, info.file_size))
        else:
            base = Path(root)
            for f in sorted(iter_images(base)):
                rel = f.relative_to(base).as_posix()
                key = _omniglot_key(rel)
                if key is not None:
                    chars[key].append((c, str(f.relative_to(base)), f.stat().st_size))
    opened: dict = {}

    def content(c: int, name: str) -> str:
        kind, root = roots[c]
        try:
            if kind == "zip":
                if c not in opened:
                    opened[c] = zipfile.ZipFile(root)
                data = opened[c].read(name)
            else:
                data = (Path(root) / name).read_bytes()
        except (OSError, KeyError, zipfile.BadZipFile, EOFError):
            return f"unreadable:{c}:{name}"  # kept; the loader reports it when read
        return hashlib.sha256(data).hexdigest()

    container_of, names, idents, ident_names = [], [], [], []
    duplicates = 0
    try:
        for key in sorted(chars):
            entries = sorted(chars[key], key=lambda e: (e[0], e[1]))
            by_size: dict = defaultdict(list)
            for e in entries:
                by_size[e[2]].append(e)
            drop = set()
            for group in by_size.values():
                if len(group) > 1:  # same size: compare content, keep the first of each
                    seen = set()
                    for c, name, _ in group:
                        h = content(c, name)
                        if h in seen:
                            drop.add((c, name))
                        seen.add(h)
            duplicates += len(drop)
            ident = len(ident_names)
            ident_names.append(key)
            for c, name, _ in entries:
                if (c, name) not in drop:
                    container_of.append(c)
                    names.append(name)
                    idents.append(ident)
    finally:
        for z in opened.values():
            z.close()
    if not names:
        raise SiamsearchError(f"no Omniglot images found in {', '.join(r for _, r in roots)}")
    backend = EntryBackend([r for _, r in roots], [k for k, _ in roots], np.asarray(container_of, np.int32), names)
    ds = ImageDataset(backend, np.arange(len(names)), np.asarray(idents), ident_names, "omniglot",
                      root=os.pathsep.join(r for _, r in roots))
    if duplicates:
        ds.notes.append(f"{duplicates} byte-identical duplicate file(s) of the same character were kept once "
                        f"(characters present under several roots are merged)")
    return ds


# --------------------------------------------------------------------------- CelebA
def _read_two_columns(path: Path, what: str) -> list[tuple[str, int]]:
    rows = []
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.replace(",", " ").split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                if lineno == 1:  # header (e.g. the csv variant)
                    continue
                raise SiamsearchError(f"{path}:{lineno}: expected 'IMAGE {what}', got {line.strip()!r}")
            rows.append((parts[0], int(parts[1])))
    return rows


_CELEBA_SPLITS = {"train": 0, "valid": 1, "val": 1, "test": 2}


def open_celeba(folder: PathLike, split: Optional[str] = None) -> ImageDataset:
    """CelebA aligned faces with identities from ``identity_CelebA.txt``.

    Args:
        split: ``"train"``, ``"valid"`` (or ``"val"``), ``"test"`` (from
            ``list_eval_partition.txt``) or ``"all"``; default ``"train"`` when the
            partition file exists, else ``"all"``.

    Images listed in the identity file but absent from ``img_align_celeba/`` are
    dropped with one warning giving their count.
    """
    folder = Path(folder)
    parts = _celeba_files(folder)
    if parts is None:
        raise SiamsearchError(f"{folder} is not a CelebA folder (needs img_align_celeba/ and identity_CelebA.txt)")
    rows = _read_two_columns(parts["identity"], "IDENTITY")
    if split is None:
        split = "train" if parts["partition"] is not None else "all"
    split = split.lower()
    if split != "all":
        if split not in _CELEBA_SPLITS:
            raise SiamsearchError(f"unknown CelebA split {split!r}; use train, valid, test or all")
        if parts["partition"] is None:
            raise SiamsearchError(f"{folder}: split {split!r} needs list_eval_partition.txt; "
                                  f"add it or use split='all'")
        part = dict(_read_two_columns(parts["partition"], "PARTITION"))
        want = _CELEBA_SPLITS[split]
        rows = [r for r in rows if part.get(r[0]) == want]
    present = set(os.listdir(parts["images"]))
    missing = [name for name, _ in rows if name not in present]
    notes = []
    if missing:
        notes.append(f"{folder}: {len(missing)} image(s) listed in {parts['identity'].name} are missing from "
                     f"{parts['images']} (e.g. {missing[0]}); they are skipped")
        warnings.warn(notes[-1])
        rows = [r for r in rows if r[0] in present]
    if not rows:
        raise SiamsearchError(f"{folder}: no CelebA images for split {split!r}")
    rows.sort()
    labels = np.asarray([r[1] for r in rows], np.int64)
    used, ids = np.unique(labels, return_inverse=True)
    backend = EntryBackend([str(parts["images"])], ["dir"], np.zeros(len(rows), np.int32), [r[0] for r in rows])
    ds = ImageDataset(backend, np.arange(len(rows)), ids.reshape(-1), [str(u) for u in used], "celeba",
                      root=str(folder))
    ds.notes.extend(notes)
    return ds


# --------------------------------------------------------------------------- entry point
def open_dataset(path: Union[PathLike, Sequence[PathLike]], format: str = "auto",
                 split: Optional[str] = None) -> ImageDataset:
    """Open a dataset in any supported layout (see the module docstring).

    Args:
        path: a dataset folder or file; for Omniglot also a list of zips/folders.
        format: one of :data:`FORMATS`; ``"auto"`` uses :func:`detect_format`.
            ``"mnist"`` and ``"fashion-mnist"`` read IDX files with digit or
            Fashion-MNIST class names.
        split: IDX: ``"train"`` (default) | ``"test"`` | ``"all"``; CelebA:
            ``"train"`` (default when partitioned) | ``"valid"`` | ``"test"`` |
            ``"all"``. Folders and Omniglot have no split (``None`` or ``"all"``);
            make train/validation splits with :func:`siamsearch.data.split_by_identity`.

    Returns:
        An :class:`ImageDataset` yielding ``(PIL image, identity)`` until given a transform.
    """
    fmt = (format or "auto").lower()
    if fmt not in FORMATS:
        raise SiamsearchError(f"unknown dataset format {format!r}; choose one of {', '.join(FORMATS)}")
    paths = _as_paths(path)
    if fmt == "auto":
        fmt = detect_format(paths)
    if fmt != "omniglot" and len(paths) > 1:
        raise SiamsearchError(f"several paths are only supported for Omniglot; give one {fmt} folder")
    if fmt in ("folders", "omniglot") and split not in (None, "all"):
        raise SiamsearchError(f"{fmt} data has no predefined split (got split={split!r}); "
                              f"use split_by_identity for class-disjoint train/validation sets")
    p = paths[0]
    if fmt == "folders":
        return open_folders(p)
    if fmt == "omniglot":
        return open_omniglot(paths)
    if fmt == "celeba":
        return open_celeba(p, split)
    names = {"mnist": [str(d) for d in range(10)], "fashion-mnist": FASHION_MNIST_CLASSES}.get(fmt)
    return open_idx(p, split, class_names=names)
