"""Omniglot zips and folders: the ``omniglot`` dataset format.

``omniglot``: ``.../<Alphabet>/characterNN/*.png`` inside zip files and/or
  unpacked folders; several roots at once (a folder holding such zips reads
  every one of them). Each character is one identity named
  ``"Alphabet/characterNN"``; a character found under several roots is one
  identity and its byte-identical files are kept once (the two minimal
  background splits share Greek and Latin).
"""
from __future__ import annotations

import hashlib
import os
import re
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..core.errors import SiamsearchError
from ..core.files import PathLike
from ..core.images import is_image_file, iter_images
from .base import EntryBackend, ImageDataset, as_paths

_CHAR_RE = re.compile(r"^character\d+$")


def zip_has_omniglot(path: Path) -> bool:
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


def dir_has_omniglot(folder: Path, depth: int = 3) -> bool:
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


def omniglot_zips_in(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.glob("*.zip")) if zip_has_omniglot(p)]


def _omniglot_roots(paths: list[Path]) -> list[tuple[str, str]]:
    """Expand user paths into (kind, path) containers: zips and folders to scan."""
    out: list[tuple[str, str]] = []
    for p in paths:
        if p.is_file():
            if not zip_has_omniglot(p):
                raise SiamsearchError(f"{p} holds no Omniglot images (.../<Alphabet>/characterNN/*.png)")
            out.append(("zip", str(p)))
            continue
        found = False
        if dir_has_omniglot(p, depth=6):
            out.append(("dir", str(p)))
            found = True
        for z in omniglot_zips_in(p):
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
    roots = _omniglot_roots(as_paths(paths))
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
