"""Look at a dataset before training on it.

- :func:`check_dataset` reads every sample exactly as the trainer will (same
  loader, same preprocessing spec) and reports counts, image sizes and modes,
  unreadable files with their reasons, duplicate files (same content hash)
  within and across identities, and a verdict: ready to train, or what to fix.
- :func:`preview_pairs` writes one PNG of the pairs (or batch-hard triplets)
  the trainer's samplers draw, after train or eval preprocessing.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..core.config import ModelConfig
from . import ImageDataset, MPerClassBatchSampler, guess_channels_and_size, open_dataset, sample_pairs, split_by_identity
from ..core.distance import distance_matrix, is_same_matrix
from ..core.errors import SiamsearchError, UnreadableImage
from ..core.preprocess import build_transform, denormalize, seed_augmentation
from ..core.files import PathLike

DataArg = Union[PathLike, Sequence[PathLike], ImageDataset]

#: PIL modes that hold grey pixels only.
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _open(data: DataArg, format: str, split: Optional[str]) -> ImageDataset:
    if isinstance(data, ImageDataset):
        return data
    return open_dataset(data, format=format, split=split)


def resolve_config(ds: ImageDataset, model: Optional[PathLike] = None, seed: int = 0) -> tuple[ModelConfig, str]:
    """The preprocessing spec the trainer would use: the checkpoint's config when
    ``model`` is given, else the trainer's default for this data (channels and
    input size guessed from the images, as ``siamsearch train`` does).

    Returns:
        ``(config, where)`` with ``where`` = the checkpoint path or ``"default"``.
    """
    if model is not None:
        from ..core.checkpoint import load_checkpoint

        return load_checkpoint(model).config, os.fspath(model)

    channels, size = guess_channels_and_size(ds, seed)
    return ModelConfig.for_channels(channels, input_size=size), "default"


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
    from tqdm.auto import tqdm

    ds = _open(data, format, split)
    n = len(ds)
    names = ds.identity_names
    modes: Counter = Counter()
    sizes: Counter = Counter()
    first_of_mode: dict = {}
    readable = np.zeros(n, dtype=bool)
    unreadable: list = []
    n_unreadable = 0
    first_by_hash: dict = {}  # 16-byte digest -> first sample index
    dup_groups: dict = defaultdict(list)  # digest -> later sample indices

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
            n_unreadable += 1
            if len(unreadable) < max_listed:
                unreadable.append({"source": ds.source(i), "identity": names[ds.identities[i]], "reason": reason})
            continue
        readable[i] = True
        modes[mode] += 1
        sizes[f"{size[0]}x{size[1]}"] += 1
        first_of_mode.setdefault(mode, i)
        key = bytes.fromhex(digest)[:16]
        first = first_by_hash.setdefault(key, i)
        if first != i:
            dup_groups[key].append(i)
    bar.close()

    # ---- duplicates
    within, across = [], []
    n_within = n_across = 0
    for key, later in dup_groups.items():
        members = [first_by_hash[key]] + later
        group = {"sha256_prefix": key.hex(),
                 "files": [{"source": ds.source(j), "identity": names[ds.identities[j]]} for j in members]}
        if len({int(ds.identities[j]) for j in members}) > 1:
            n_across += 1
            if len(across) < max_listed:
                across.append(group)
        else:
            n_within += 1
            if len(within) < max_listed:
                within.append(group)
    del first_by_hash

    # ---- identities over readable images
    ids_ok = ds.identities[readable]
    per_id = np.bincount(ids_ok, minlength=len(names))
    present = per_id[per_id > 0]
    singles = np.flatnonzero(per_id == 1)
    empty_ids = np.flatnonzero((ds.images_per_identity() > 0) & (per_id == 0))

    # ---- preprocessing
    problems: list = []
    config, config_source = resolve_config(ds, model, seed) if readable.any() else (ModelConfig(), "default")
    tf = build_transform(config, train=False)
    target = "L" if config.in_channels == 1 else "RGB"
    conversions, out_shape = {}, None
    for mode, i in sorted(first_of_mode.items()):
        if mode != target:
            conversions[mode] = target
        try:
            out_shape = list(tf(ds.load(i)).shape)
        except Exception as e:  # the trainer would crash on this mode
            problems.append({"severity": "error",
                             "message": f"preprocessing fails on {mode} images (e.g. {ds.source(i)}): {e}"})

    # ---- verdict
    def add(severity: str, message: str) -> None:
        problems.append({"severity": severity, "message": message})

    n_ok = int(readable.sum())
    n_ids = int((per_id > 0).sum())
    n_multi = int((per_id >= 2).sum())
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
    if n_unreadable:
        add("warning", f"{n_unreadable} unreadable file(s): training skips them with a warning; "
                       f"fix or remove them")
    if empty_ids.size:
        add("warning", f"{empty_ids.size} identit{'y has' if empty_ids.size == 1 else 'ies have'} no readable "
                       f"image (e.g. {names[empty_ids[0]]})")
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
    grey = sum(c for m, c in modes.items() if m in GREY_MODES)
    if grey and grey < n_ok:
        add("warning", f"mixed grey ({grey}) and colour ({n_ok - grey}) images: all are converted to "
                       f"{target} ({config.in_channels} channel{'s' if config.in_channels > 1 else ''}); "
                       f"check that this is intended (--channels)")
    errors = [p for p in problems if p["severity"] == "error"]
    warns = [p for p in problems if p["severity"] == "warning"]
    if errors:
        verdict = "NOT READY, training would fail: " + "; ".join(p["message"] for p in errors)
    elif warns:
        verdict = "READY TO TRAIN, but check first: " + "; ".join(p["message"].split(": ")[0] for p in warns)
    else:
        verdict = "READY TO TRAIN"
    size_rows = [{"size": s, "count": c} for s, c in sizes.most_common()]
    return {
        "path": ds.root,
        "format": ds.format,
        "images": n,
        "readable_images": n_ok,
        "identities": n_ids,
        "images_per_identity": _stats(present),
        "single_image_identities": {"count": int(singles.size),
                                    "examples": [names[k] for k in singles[:10]]},
        "modes": dict(modes.most_common()),
        "sizes": size_rows,
        "preprocessing": {"config": config.to_dict(), "source": config_source,
                          "output_shape": out_shape, "conversions": conversions},
        "unreadable": {"count": n_unreadable, "files": unreadable},
        "duplicates": {"within_identity": {"count": n_within, "groups": within},
                       "across_identities": {"count": n_across, "groups": across}},
        "notes": list(ds.notes),
        "problems": problems,
        "ready": not errors,
        "verdict": verdict,
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
                  f"{cfg['in_channels']} channel{'s' if cfg['in_channels'] > 1 else ''}): every image becomes {shape} (CxHxW); mode conversions: {conv}"]
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


# --------------------------------------------------------------------------- preview
def _to_display(x: torch.Tensor, config: ModelConfig) -> np.ndarray:
    img = denormalize(x, config).permute(1, 2, 0).numpy()
    return img[:, :, 0] if img.shape[2] == 1 else img


def _batch_hard(emb: torch.Tensor, ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every sample of a batch: its hardest positive and negative (indices, distances)."""
    d = distance_matrix(emb)
    same = is_same_matrix(ids)
    eye = torch.eye(len(ids), dtype=torch.bool)
    pos = torch.where(same & ~eye, d, torch.full_like(d, -1.0)).max(1)
    neg = torch.where(~same, d, torch.full_like(d, float("inf"))).min(1)
    return pos.indices.numpy(), neg.indices.numpy(), pos.values.numpy(), neg.values.numpy()


def preview_pairs(data: DataArg, out: PathLike = "preview.png", format: str = "auto", split: Optional[str] = None,
                  n_pairs: int = 16, augment: bool = True, seed: int = 0, model: Optional[PathLike] = None,
                  triplets: bool = False, m_per_class: int = 4) -> Path:
    """Write a PNG grid of what the trainer sees.

    Pairs (default): ``n_pairs`` seeded pairs from :func:`siamsearch.data.sample_pairs`
    (half genuine, half impostor, the trainer's pair sampler) over the whole
    dataset, each image after the train pipeline (with augmentation when
    ``augment``) or the eval pipeline (``augment=False``), captioned with both
    identity names and ``is_same`` (green frame: same, red: different).

    Triplets (``triplets=True``): one M-per-class batch (``m_per_class`` images
    of each of up to ``n_pairs`` identities, the trainer's batch sampler); for
    the first image of each identity, its batch-hard positive (farthest same
    identity) and negative (closest other identity). Distances are the model's
    embeddings when ``model`` is given, else the raw preprocessed pixels
    (L2-normalised), so the preview shows which images are hard before training.

    Args:
        data: dataset path(s) or an :class:`ImageDataset`.
        out: PNG file to write.
        model: checkpoint whose preprocessing (and, for triplets, embeddings) to use;
            default: the trainer's default config for this data.
        seed: seeds the samplers and the augmentation.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if n_pairs < 1:
        raise SiamsearchError(f"the number of pairs must be at least 1, got {n_pairs}")
    ds = _open(data, format, split)
    config, source = resolve_config(ds, model, seed)
    tf = build_transform(config, train=augment, augment=augment)
    seed_augmentation(seed)
    names = ds.identity_names
    stage = "train preprocessing + augmentation" if augment else "eval preprocessing"

    def prepared(i: int) -> Optional[torch.Tensor]:
        try:
            return tf(ds.load(int(i)))
        except UnreadableImage:
            return None

    panels = []  # (list of images, caption, colour)
    if not triplets:
        a, b, same = sample_pairs(ds.identities, max(2 * n_pairs, 8), seed=seed)
        for i, j, s in zip(a, b, same):
            xa, xb = prepared(i), prepared(j)
            if xa is None or xb is None:
                continue
            caption = f"{names[ds.identities[i]]}\n{names[ds.identities[j]]}\nis_same={bool(s)}"
            panels.append(([xa, xb], caption, "tab:green" if s else "tab:red"))
            if len(panels) == n_pairs:
                break
        title = (f"{len(panels)} seeded pairs (seed {seed}), {stage}\n"
                 f"green frame: is_same=True, red frame: is_same=False")
    else:
        per_batch = max(2, min(n_pairs, int((ds.images_per_identity() >= 2).sum())))
        sampler = MPerClassBatchSampler(ds.identities, m=m_per_class, batch_size=per_batch * m_per_class, seed=seed)
        batch = [i for i in next(iter(sampler))]
        xs = [prepared(i) for i in batch]
        keep = [k for k, x in enumerate(xs) if x is not None]
        batch = [batch[k] for k in keep]
        x = torch.stack([xs[k] for k in keep])
        ids = torch.as_tensor(ds.identities[batch])
        if model is not None:
            from ..core.embedder import load_model

            emb = torch.from_numpy(load_model(model, device="cpu").embed_tensor(x))
            by = f"model {Path(model).name}"
        else:
            emb = torch.nn.functional.normalize(x.flatten(1), dim=1)
            by = "raw pixels"
        hp, hn, dp, dn = _batch_hard(emb, ids)
        seen = set()
        for k in range(len(batch)):
            ident = int(ids[k])
            if ident in seen or dp[k] < 0 or not np.isfinite(dn[k]):
                continue
            seen.add(ident)
            caption = (f"anchor {names[ident]}\npositive d={dp[k]:.3f} (is_same=True)\n"
                       f"negative {names[int(ids[hn[k]])]} d={dn[k]:.3f} (is_same=False)")
            panels.append(([x[k], x[hp[k]], x[hn[k]]], caption, "tab:blue" if dp[k] < dn[k] else "tab:orange"))
        title = (f"batch-hard triplets (anchor, hardest positive, hardest negative) from one "
                 f"{m_per_class}-per-class batch (seed {seed}), distances by {by}, {stage}\n"
                 f"blue frame: positive closer than negative, orange: the triplet is violated")
    if not panels:
        raise SiamsearchError("no readable pair to show; run `siamsearch data check` on this dataset")

    per_row = 4 if not triplets else 3
    rows = (len(panels) + per_row - 1) // per_row
    width = 2 if not triplets else 3
    fig, axes = plt.subplots(rows, per_row, figsize=(per_row * width * 1.4, rows * 2.2 + 0.8), squeeze=False)
    cmap = "gray" if config.in_channels == 1 else None
    for ax in axes.flat:
        ax.axis("off")
    for ax, (imgs, caption, colour) in zip(axes.flat, panels):
        arrs = [_to_display(t, config) for t in imgs]
        gap = np.full((arrs[0].shape[0], max(1, arrs[0].shape[1] // 16)) + arrs[0].shape[2:], 0.5)
        joined = arrs[0]
        for arr in arrs[1:]:
            joined = np.concatenate([joined, gap, arr], axis=1)
        ax.imshow(joined, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3)
        ax.set_title(caption, fontsize=7, color=colour, linespacing=1.1)
    fig.suptitle(f"{title}\n{ds.format}: {len(ds)} images, config: {source}, "
                 f"{config.in_channels}x{config.input_size}x{config.input_size}", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
