"""Tiny generated datasets in every layout siamsearch reads (used by the data tests)."""
from __future__ import annotations

import gzip
import io
import struct
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image


def png_bytes(seed: int, size: int = 12, mode: str = "L") -> bytes:
    """A small random PNG whose bytes differ per seed."""
    rng = np.random.default_rng(seed)
    if mode == "RGB":
        arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    else:
        arr = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_folders(root: Path, counts: dict, size: int = 12, mode: str = "L", ext: str = ".png",
                 seed: int = 0) -> Path:
    """``root/<identity>/img_k<ext>`` with ``counts[identity]`` distinct images each."""
    root.mkdir(parents=True, exist_ok=True)
    s = seed
    for ident, n in counts.items():
        d = root / ident
        d.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            s += 1
            data = png_bytes(s, size, mode)
            if ext.lower() in (".png",):
                (d / f"img_{k}{ext}").write_bytes(data)
            else:
                img = Image.open(io.BytesIO(data))
                img.save(d / f"img_{k}{ext}", format="JPEG" if ext.lower() in (".jpg", ".jpeg") else None)
    return root


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    """Write a uint8 array as an IDX file (gzip when ``gz``)."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_idx(folder: Path, n_train: int = 40, n_test: int = 20, gz: bool = True, classes: int = 10,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-named IDX files; returns (x_train, y_train, x_test, y_test)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sfx = ".gz" if gz else ""
    out = []
    for part, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % classes).astype(np.uint8)
        rng.shuffle(y)
        write_idx(folder / f"{part}-images-idx3-ubyte{sfx}", x, gz)
        write_idx(folder / f"{part}-labels-idx1-ubyte{sfx}", y, gz)
        out += [x, y]
    return tuple(out)


def omniglot_members(alphabets: dict, prefix: str, seed: int, drawings: int = 3) -> dict:
    """``{member name: png bytes}`` for ``alphabets = {name: n_characters}``; the bytes of a
    drawing depend only on (alphabet, character, drawing) and ``seed``."""
    out = {}
    for a_i, (alpha, n_chars) in enumerate(sorted(alphabets.items())):
        for c in range(1, n_chars + 1):
            for d in range(1, drawings + 1):
                s = seed * 1_000_000 + sum(map(ord, alpha)) * 1000 + c * 10 + d
                out[f"{prefix}{alpha}/character{c:02d}/{c:04d}_{d:02d}.png"] = png_bytes(s, 10, "1")
    return out


def make_zip(path: Path, members: dict, with_dirs: bool = True) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        if with_dirs:
            dirs = sorted({n.rsplit("/", i)[0] + "/" for n in members for i in (1, 2) if n.count("/") >= i})
            for d in dirs:
                z.writestr(d, b"")
        for name, data in members.items():
            z.writestr(name, data)
    return path


def make_celeba(folder: Path, labels: Sequence[int], partition: Optional[Sequence[int]] = None,
                missing: Sequence[int] = (), nested: bool = False) -> Path:
    """CelebA layout with ``len(labels)`` jpgs; files at ``missing`` positions are not written."""
    img_dir = folder / ("Img" if nested else "") / "img_align_celeba"
    img_dir.mkdir(parents=True, exist_ok=True)
    anno = folder / ("Anno" if nested else "")
    anno.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, lab in enumerate(labels):
        name = f"{i + 1:06d}.jpg"
        lines.append(f"{name} {lab}")
        if i not in missing:
            Image.open(io.BytesIO(png_bytes(i, 16, "RGB"))).save(img_dir / name, format="JPEG")
    (anno / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    if partition is not None:
        ev = folder / ("Eval" if nested else "")
        ev.mkdir(parents=True, exist_ok=True)
        (ev / "list_eval_partition.txt").write_text(
            "".join(f"{i + 1:06d}.jpg {p}\n" for i, p in enumerate(partition)))
    return folder
