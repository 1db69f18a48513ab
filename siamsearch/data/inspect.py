"""Look at a dataset before training on it.

- :func:`check_dataset` reads every sample exactly as the trainer will (same
  loader, same preprocessing spec) and reports counts, image sizes and modes,
  unreadable files with their reasons, duplicate files (same content hash)
  within and across identities, and a verdict: ready to train, or what to fix.
- :func:`siamsearch.data.preview.preview_pairs` writes one PNG of the pairs
  (or batch-hard triplets) the trainer's samplers draw.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np

from ..core.config import ModelConfig
from ..core.presets import preset_config_fields, preset_values, resolve_preset
from . import ImageDataset, guess_channels_and_size, open_dataset, split_by_identity
from ..core.errors import SiamsearchError, UnreadableImage
from ..core.preprocess import build_transform
from ..core.files import PathLike

DataArg = Union[PathLike, Sequence[PathLike], ImageDataset]

#: PIL modes that hold grey pixels only.
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def open_data(data: DataArg, format: str, split: Optional[str]) -> ImageDataset:
    """``data`` itself when it is an opened dataset, else :func:`open_dataset` of the path(s)."""
    if isinstance(data, ImageDataset):
        return data
    return open_dataset(data, format=format, split=split)


def resolve_config(ds: ImageDataset, model: Optional[PathLike] = None, seed: int = 0) -> tuple[ModelConfig, str]:
    """The preprocessing spec the trainer would use: the checkpoint's config when
    ``model`` is given, else the trainer's default for this data (the preset, channels and
    input size guessed from the images, as ``siamsearch train`` does without ``--preset``).

    Returns:
        ``(config, where)`` with ``where`` = the checkpoint path or ``"default (NAME preset)"``.
    """
    if model is not None:
        from ..core.checkpoint import load_checkpoint

        return load_checkpoint(model).config, os.fspath(model)

    channels, size = guess_channels_and_size(ds, seed)
    name, _ = resolve_preset(None, channels)
    values = preset_values(name, channels, size)
    return ModelConfig.for_channels(values["in_channels"], **preset_config_fields(values)), f"default ({name} preset)"


def geometry_note(config: ModelConfig, sizes: Counter) -> str:
    """What the preprocessing does to the images' geometry: the crop, and what happens to non-square ones."""
    s = config.input_size
    parts = []
    if config.crop is not None:
        what = (f"the centre {config.crop[0]:g} of each side" if len(config.crop) == 1
                else f"the box {', '.join(f'{v:g}' for v in config.crop)} (fractions of width, height)")
        parts.append(f"each image is first cropped to {what}")
    non_square = sum(c for k, c in sizes.items() if len(set(k.split("x"))) == 2)
    if non_square and config.resize == "short_side":
        parts.append(f"{non_square} non-square image{'s' if non_square > 1 else ''}: the short side is resized to "
                     f"{s} px and the long side centre-cropped to {s} px (aspect ratio kept, the ends of the long side lost)")
    elif non_square:
        parts.append(f"{non_square} non-square image{'s' if non_square > 1 else ''}: squashed to {s}x{s} px "
                     "(the aspect ratio changes; new models resize the short side instead)")
    else:
        parts.append(f"all images are square: resized to {s}x{s} px")
    return "; ".join(parts)


# --------------------------------------------------------------------------- check
def _inspect_one(ds: ImageDataset, i: int) -> tuple:
    """(mode, (w, h), sha256 or None, reason or None) for sample i."""
    try:
        img = ds.load(i)
    except UnreadableImage as e:
        return None, None, None, e.reason
    try:
        digest = ds.content_hash(i)
    except UnreadableImage as e:
        return None, None, None, e.reason
    return img.mode, img.size, digest, None


def _stats(counts: np.ndarray) -> dict:
    if len(counts) == 0:
        return {"min": 0, "median": 0.0, "max": 0}
    return {"min": int(counts.min()), "median": float(np.median(counts)), "max": int(counts.max())}


@dataclass
class _Scan:
    """What one pass over the samples found (bounded memory: a hash prefix and counters per sample)."""

    readable: np.ndarray
    modes: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    first_of_mode: dict = field(default_factory=dict)
    unreadable: list = field(default_factory=list)
    n_unreadable: int = 0
    first_by_hash: dict = field(default_factory=dict)  # 16-byte digest -> first sample index
    dup_groups: dict = field(default_factory=lambda: defaultdict(list))  # digest -> later sample indices


def _scan(ds: ImageDataset, workers: int, max_listed: int, progress: bool) -> _Scan:
    """Decode every sample once (``workers`` threads) and tally modes, sizes, failures and hashes."""
    from tqdm.auto import tqdm

    n = len(ds)
    scan = _Scan(readable=np.zeros(n, dtype=bool))

    def results():
        if workers and workers > 0:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for start in range(0, n, 512):
                    yield from zip(range(start, min(n, start + 512)),
                                   pool.map(lambda i: _inspect_one(ds, i), range(start, min(n, start + 512))))
        else:
            for i in range(n):
                yield i, _inspect_one(ds, i)

    bar = tqdm(total=n, desc="checking", unit="img", disable=not progress, leave=False)
    for i, (mode, size, digest, reason) in results():
        bar.update(1)
        if reason is not None:
            scan.n_unreadable += 1
            if len(scan.unreadable) < max_listed:
                scan.unreadable.append({"source": ds.source(i), "identity": ds.identity_names[ds.identities[i]],
                                        "reason": reason})
            continue
        scan.readable[i] = True
        scan.modes[mode] += 1
        scan.sizes[f"{size[0]}x{size[1]}"] += 1
        scan.first_of_mode.setdefault(mode, i)
        key = bytes.fromhex(digest)[:16]
        first = scan.first_by_hash.setdefault(key, i)
        if first != i:
            scan.dup_groups[key].append(i)
    bar.close()
    return scan


def _duplicates(ds: ImageDataset, scan: _Scan, max_listed: int) -> dict:
    """Groups of byte-identical files, split into within one identity and across identities."""
    out = {"within_identity": {"count": 0, "groups": []}, "across_identities": {"count": 0, "groups": []}}
    for key, later in scan.dup_groups.items():
        members = [scan.first_by_hash[key]] + later
        group = {"sha256_prefix": key.hex(),
                 "files": [{"source": ds.source(j), "identity": ds.identity_names[ds.identities[j]]}
                           for j in members]}
        kind = out["across_identities" if len({int(ds.identities[j]) for j in members}) > 1 else "within_identity"]
        kind["count"] += 1
        if len(kind["groups"]) < max_listed:
            kind["groups"].append(group)
    return out


def _preprocessing(ds: ImageDataset, scan: _Scan, model: Optional[PathLike], seed: int,
                   problems: list) -> tuple[ModelConfig, dict]:
    """The spec the trainer would apply, tried once on an image of every mode found."""
    config, source = resolve_config(ds, model, seed) if scan.readable.any() else (ModelConfig(), "default")
    tf = build_transform(config, train=False)
    target = "L" if config.in_channels == 1 else "RGB"
    conversions, out_shape = {}, None
    for mode, i in sorted(scan.first_of_mode.items()):
        if mode != target:
            conversions[mode] = target
        try:
            out_shape = list(tf(ds.load(i)).shape)
        except Exception as e:  # the trainer would crash on this mode
            problems.append({"severity": "error",
                             "message": f"preprocessing fails on {mode} images (e.g. {ds.source(i)}): {e}"})
    return config, {"config": config.to_dict(), "source": source, "output_shape": out_shape,
                    "conversions": conversions, "geometry": geometry_note(config, scan.sizes)}


def _trainability(ids_ok: np.ndarray, per_id: np.ndarray, val_fraction: float, seed: int, add) -> None:
    """Errors for data the trainer cannot train on (too few images, identities or positive pairs)."""
    n_ok, n_ids, n_multi = ids_ok.size, int((per_id > 0).sum()), int((per_id >= 2).sum())
    if n_ok < 4:
        add("error", f"only {n_ok} readable image(s); training needs at least 4")
    if n_ids < 2:
        add("error", f"only {n_ids} identity with readable images; training needs at least 2 "
                     f"(different identities give the negative pairs)")
    if n_multi < 2:
        add("error", f"only {n_multi} identit{'y has' if n_multi == 1 else 'ies have'} 2 or more images; "
                     f"training needs at least 2 such identities for positive pairs")
    elif val_fraction > 0 and n_ids >= 2:
        try:
            tr, _ = split_by_identity(ids_ok, val_fraction, seed)
            if int((np.bincount(ids_ok[tr]) >= 2).sum()) < 2:
                add("error", "after holding out validation identities, fewer than 2 training identities have "
                             "2+ images; add images or lower --val-fraction")
        except SiamsearchError as e:
            add("error", str(e))


def _data_warnings(ds: ImageDataset, scan: _Scan, dups: dict, per_id: np.ndarray, config: ModelConfig,
                   add) -> None:
    """Warnings and notes: unreadable files, empty or single-image identities, duplicates, mixed modes."""
    empty_ids = np.flatnonzero((ds.images_per_identity() > 0) & (per_id == 0))
    singles = np.flatnonzero(per_id == 1)
    n_within, n_across = dups["within_identity"]["count"], dups["across_identities"]["count"]
    if scan.n_unreadable:
        add("warning", f"{scan.n_unreadable} unreadable file(s): training skips them with a warning; "
                       f"fix or remove them")
    if empty_ids.size:
        add("warning", f"{empty_ids.size} identit{'y has' if empty_ids.size == 1 else 'ies have'} no readable "
                       f"image (e.g. {ds.identity_names[empty_ids[0]]})")
    if n_across:
        add("warning", f"{n_across} file content(s) appear under more than one identity: likely labelling "
                       f"errors (identical images would be trained as different identities)")
    if n_within:
        add("info", f"{n_within} file content(s) are repeated within one identity (harmless, but they make "
                    f"zero-distance positive pairs)")
    if singles.size:
        add("info", f"{singles.size} identit{'y has' if singles.size == 1 else 'ies have'} a single image: "
                    f"it gives no positive pair; training uses it only as a negative (triplet batches leave "
                    f"it out; arcface keeps it as a class)")
    n_ok = int(scan.readable.sum())
    grey = sum(c for m, c in scan.modes.items() if m in GREY_MODES)
    if grey and grey < n_ok:
        target = "L" if config.in_channels == 1 else "RGB"
        add("warning", f"mixed grey ({grey}) and colour ({n_ok - grey}) images: all are converted to "
                       f"{target} ({config.in_channels} channel{'s' if config.in_channels > 1 else ''}); "
                       f"check that this is intended (--channels)")


def _verdict(problems: list) -> str:
    errors = [p for p in problems if p["severity"] == "error"]
    warns = [p for p in problems if p["severity"] == "warning"]
    if errors:
        return "NOT READY, training would fail: " + "; ".join(p["message"] for p in errors)
    if warns:
        return "READY TO TRAIN, but check first: " + "; ".join(p["message"].split(": ")[0] for p in warns)
    return "READY TO TRAIN"


def check_dataset(data: DataArg, format: str = "auto", split: Optional[str] = None,
                  model: Optional[PathLike] = None, val_fraction: float = 0.2, seed: int = 0,
                  workers: int = 0, max_listed: int = 50, progress: bool = False) -> dict:
    """Read every sample of a dataset as the trainer will and report what would go wrong.

    Memory stays bounded by the number of samples (one 16-byte hash and a few
    counters each), never by image data; ``workers`` threads decode in parallel.

    Args:
        data: dataset path(s) or an opened :class:`ImageDataset`.
        format, split: as for :func:`siamsearch.data.open_dataset`.
        model: a checkpoint whose preprocessing spec to apply; default: the
            trainer's default config for this data.
        val_fraction, seed: the trainer's identity split, checked for feasibility.
        workers: decoding threads (0: in this thread).
        max_listed: at most this many unreadable files and duplicate groups are
            listed (counts are always complete).
        progress: show a tqdm bar on stderr.

    Returns:
        A JSON-serialisable dict: ``path``, ``format``, ``images``, ``identities``,
        ``images_per_identity`` (min/median/max over readable images),
        ``single_image_identities`` (count, examples), ``modes`` {mode: count},
        ``sizes`` [{size "WxH", count}], ``preprocessing`` (config, source,
        output_shape [C, H, W], conversions), ``unreadable`` (count, files
        [{source, identity, reason}]), ``duplicates`` (within_identity and
        across_identities: count of groups and groups [{sha256, files
        [{source, identity}]}]), ``notes``, ``problems`` [{severity
        "error"|"warning"|"info", message}], ``ready`` (bool: training would
        run) and ``verdict`` (one line).
    """
    ds = open_data(data, format, split)
    scan = _scan(ds, workers, max_listed, progress)
    dups = _duplicates(ds, scan, max_listed)
    ids_ok = ds.identities[scan.readable]
    per_id = np.bincount(ids_ok, minlength=len(ds.identity_names))
    singles = np.flatnonzero(per_id == 1)

    problems: list = []

    def add(severity: str, message: str) -> None:
        problems.append({"severity": severity, "message": message})

    config, preprocessing = _preprocessing(ds, scan, model, seed, problems)
    _trainability(ids_ok, per_id, val_fraction, seed, add)
    _data_warnings(ds, scan, dups, per_id, config, add)
    return {
        "path": ds.root,
        "format": ds.format,
        "images": len(ds),
        "readable_images": int(ids_ok.size),
        "identities": int((per_id > 0).sum()),
        "images_per_identity": _stats(per_id[per_id > 0]),
        "single_image_identities": {"count": int(singles.size),
                                    "examples": [ds.identity_names[k] for k in singles[:10]]},
        "modes": dict(scan.modes.most_common()),
        "sizes": [{"size": s, "count": c} for s, c in scan.sizes.most_common()],
        "preprocessing": preprocessing,
        "unreadable": {"count": scan.n_unreadable, "files": scan.unreadable},
        "duplicates": dups,
        "notes": list(ds.notes),
        "problems": problems,
        "ready": not any(p["severity"] == "error" for p in problems),
        "verdict": _verdict(problems),
    }


def format_report(report: dict, max_rows: int = 10) -> str:
    """The human-readable text of a :func:`check_dataset` report."""
    r = report
    ipi = r["images_per_identity"]
    pre = r["preprocessing"]
    cfg = pre["config"]
    lines = [
        f"dataset     {r['path']}",
        f"format      {r['format']}",
        f"images      {r['images']} ({r['readable_images']} readable)",
        f"identities  {r['identities']}; images per identity min {ipi['min']} / median {ipi['median']:g} / "
        f"max {ipi['max']}; {r['single_image_identities']['count']} with a single image",
        "",
        "image modes:",
    ]
    for mode, count in r["modes"].items():
        lines.append(f"  {mode:<11} {count:>9}")
    lines.append("image sizes (W x H):")
    sizes = r["sizes"]
    for row in sizes[:max_rows]:
        lines.append(f"  {row['size']:<11} {row['count']:>9}")
    if len(sizes) > max_rows:
        lines.append(f"  ... {len(sizes) - max_rows} more sizes ({sum(x['count'] for x in sizes[max_rows:])} images)")
    shape = "x".join(str(v) for v in pre["output_shape"]) if pre["output_shape"] else "?"
    conv = ", ".join(f"{a} -> {b}" for a, b in pre["conversions"].items()) or "none"
    lines += ["", f"preprocessing ({pre['source']} config: {cfg['backbone']}, {cfg['input_size']} px, "
                  f"{cfg['in_channels']} channel{'s' if cfg['in_channels'] > 1 else ''}): every image becomes {shape} (CxHxW); mode conversions: {conv}",
              f"geometry: {pre['geometry']}"]
    un = r["unreadable"]
    if un["count"]:
        lines += ["", f"unreadable files ({un['count']}):"]
        lines += [f"  {f['source']}: {f['reason']}" for f in un["files"][:max_rows]]
        if un["count"] > max_rows:
            lines.append(f"  ... {un['count'] - max_rows} more (see --json)")
    for key, title in (("across_identities", "duplicates across identities (labelling errors?)"),
                       ("within_identity", "duplicates within an identity")):
        d = r["duplicates"][key]
        if d["count"]:
            lines += ["", f"{title} ({d['count']}):"]
            for g in d["groups"][:max_rows]:
                lines.append("  " + "  ==  ".join(f"{f['source']} [{f['identity']}]" for f in g["files"]))
            if d["count"] > max_rows:
                lines.append(f"  ... {d['count'] - max_rows} more groups (see --json)")
    if r["notes"]:
        lines += [""] + [f"note: {n}" for n in r["notes"]]
    if r["problems"]:
        order = {"error": 0, "warning": 1, "info": 2}
        lines += [""] + [f"{p['severity']}: {p['message']}"
                         for p in sorted(r["problems"], key=lambda p: order[p["severity"]])]
    lines += ["", r["verdict"]]
    return "\n".join(lines)
