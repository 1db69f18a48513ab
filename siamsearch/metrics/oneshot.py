"""N-way one-shot classification on the Omniglot run format (Lake et al. 2015).

The official benchmark (``all_runs.zip``) has 20 runs. Each run folder holds

* ``training/classNN.png``: one reference drawing for each of N characters,
* ``test/itemNN.png``: N query drawings,
* ``class_labels.txt``: one line per query, ``runNN/test/itemKK.png runNN/training/classJJ.png``
  naming the query's correct reference.

A query is classified as the reference nearest to it in embedding space (Euclidean
distance); accuracy is the share of queries whose nearest reference is the correct one.
The loader reads a zip file or an unpacked folder, with the run folders at the top or one
level down.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
from PIL import Image

from ..core.distance import distance_matrix
from ..core.errors import SiamsearchError
from ..core.images import read_image, read_image_bytes
from .knn import as_vectors

#: ``embed_fn(list of PIL images) -> [n, d]`` float embeddings.
EmbedFn = Callable[[list], np.ndarray]

LABELS_FILE = "class_labels.txt"


@dataclass(frozen=True)
class OneShotRun:
    """One N-way run.

    Attributes:
        name: the run folder's name (``run01``).
        references: N reference images (one per class), in file-name order.
        queries: query images, in file-name order of ``class_labels.txt``.
        answers: ``[len(queries)]`` int64, index into ``references`` of each query's class.
        reference_names / query_names: file names inside the run (``training/class01.png``).
    """

    name: str
    references: tuple
    queries: tuple
    answers: np.ndarray
    reference_names: tuple
    query_names: tuple

    @property
    def ways(self) -> int:
        """Number of classes (N)."""
        return len(self.references)


def _tail(path: str) -> str:
    """``run01/training/class08.png`` -> ``training/class08.png`` (the name inside its run)."""
    parts = path.replace("\\", "/").strip("/").split("/")
    if len(parts) < 2:
        raise SiamsearchError(f"cannot read the image name {path!r} in {LABELS_FILE}; expected folder/file.png")
    return "/".join(parts[-2:])


def _parse_labels(text: str, where: str) -> list[tuple[str, str]]:
    pairs = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise SiamsearchError(
                f"{where} line {line_no}: expected 'test/itemNN.png training/classNN.png', got {line.strip()!r}"
            )
        pairs.append((_tail(fields[0]), _tail(fields[1])))
    if not pairs:
        raise SiamsearchError(f"{where} is empty; it must list each test item with its training class")
    return pairs


def _build_run(name: str, pairs: list[tuple[str, str]], reference_names: list[str], load) -> OneShotRun:
    ref_index = {n: i for i, n in enumerate(reference_names)}
    answers = []
    for query, ref in pairs:
        if ref not in ref_index:
            raise SiamsearchError(f"run {name}: {LABELS_FILE} names {ref}, which is not among its training images")
        answers.append(ref_index[ref])
    return OneShotRun(
        name=name,
        references=tuple(load(n) for n in reference_names),
        queries=tuple(load(q) for q, _ in pairs),
        answers=np.asarray(answers, dtype=np.int64),
        reference_names=tuple(reference_names),
        query_names=tuple(q for q, _ in pairs),
    )


def _load_zip(path: Path) -> list[OneShotRun]:
    runs = []
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        label_files = sorted(n for n in names if n.split("/")[-1] == LABELS_FILE)
        for lf in label_files:
            prefix = lf[: -len(LABELS_FILE)]  # "run01/" or "all_runs/run01/"
            run_name = prefix.strip("/").split("/")[-1] if prefix.strip("/") else path.stem
            refs = sorted(n[len(prefix):] for n in names if n.startswith(prefix + "training/") and not n.endswith("/"))

            def load(inner: str, prefix=prefix) -> Image.Image:
                member = prefix + inner
                try:
                    data = z.read(member)
                except KeyError:
                    raise SiamsearchError(f"{path}: {member} is listed in {LABELS_FILE} but missing") from None
                return read_image_bytes(data, f"{path}:{member}")

            pairs = _parse_labels(z.read(lf).decode("utf-8"), f"{path}:{lf}")
            runs.append(_build_run(run_name, pairs, refs, load))
    return runs


def _load_folder(path: Path) -> list[OneShotRun]:
    label_files = sorted(path.glob(LABELS_FILE)) + sorted(path.glob(f"*/{LABELS_FILE}")) + sorted(
        path.glob(f"*/*/{LABELS_FILE}")
    )
    runs = []
    for lf in label_files:
        run_dir = lf.parent
        refs = sorted(
            f"training/{p.name}" for p in (run_dir / "training").iterdir() if p.is_file() and not p.name.startswith(".")
        ) if (run_dir / "training").is_dir() else []
        pairs = _parse_labels(lf.read_text(encoding="utf-8"), str(lf))
        runs.append(_build_run(run_dir.name, pairs, refs, lambda inner, d=run_dir: read_image(d / inner)))
    return runs


def load_oneshot_runs(path: Union[str, os.PathLike]) -> list[OneShotRun]:
    """Read every one-shot run under ``path`` (``all_runs.zip`` or its unpacked folder), sorted by name.

    Raises:
        SiamsearchError: when the path is missing or holds no ``class_labels.txt``.
    """
    p = Path(path)
    if not p.exists():
        raise SiamsearchError(f"{p} does not exist; give the Omniglot all_runs.zip or its unpacked folder")
    if p.is_file():
        if not zipfile.is_zipfile(p):
            raise SiamsearchError(f"{p} is not a zip file; give all_runs.zip or its unpacked folder")
        runs = _load_zip(p)
    else:
        runs = _load_folder(p)
    if not runs:
        raise SiamsearchError(
            f"no one-shot runs found in {p}: expected runNN/{LABELS_FILE}, runNN/training/*.png, runNN/test/*.png"
        )
    return sorted(runs, key=lambda r: r.name)


def run_predictions(run: OneShotRun, embed_fn: EmbedFn) -> tuple[np.ndarray, np.ndarray]:
    """Classify a run's queries.

    Returns:
        ``(predicted [Q] int64 reference index, distances [Q, N] float32)``.

    Raises:
        SiamsearchError: when ``embed_fn`` returns a wrong shape, NaN or infinity.
    """
    raw = np.asarray(embed_fn(list(run.references) + list(run.queries)), dtype=np.float32)
    n = len(run.references)
    if raw.ndim != 2 or raw.shape[0] != n + len(run.queries):
        raise SiamsearchError(
            f"embed_fn returned shape {raw.shape} for {n + len(run.queries)} images; it must return [n, d]"
        )
    emb = as_vectors(raw, name=f"one-shot {run.name} embeddings")  # refuses NaN / inf like the other metrics
    dist = distance_matrix(emb[n:], emb[:n])
    return dist.argmin(axis=1).astype(np.int64), dist


def oneshot_per_run(runs: Sequence[OneShotRun], embed_fn: EmbedFn) -> np.ndarray:
    """Accuracy of each run, ``[len(runs)]`` in [0, 1]."""
    if not runs:
        raise SiamsearchError("no one-shot runs to evaluate")
    return np.asarray([float(np.mean(run_predictions(r, embed_fn)[0] == r.answers)) for r in runs])


def oneshot_accuracy(runs: Sequence[OneShotRun], embed_fn: EmbedFn) -> float:
    """Share of all queries (over all runs) whose nearest reference is the correct one, in [0, 1]."""
    if not runs:
        raise SiamsearchError("no one-shot runs to evaluate")
    correct = total = 0
    for r in runs:
        pred, _ = run_predictions(r, embed_fn)
        correct += int(np.sum(pred == r.answers))
        total += len(r.answers)
    return correct / total


def oneshot_metrics(runs: Sequence[OneShotRun], embed_fn: EmbedFn) -> dict:
    """Accuracy, per-run accuracies and the mistakes, for reports.

    Returns:
        ``{"accuracy", "n_runs", "n_queries", "ways", "per_run": {name: accuracy},
        "per_run_std", "mistakes": [{"run", "query", "predicted", "answer", "distance_predicted",
        "distance_answer"}]}``.
    """
    if not runs:
        raise SiamsearchError("no one-shot runs to evaluate")
    per_run, mistakes = {}, []
    correct = total = 0
    for r in runs:
        pred, dist = run_predictions(r, embed_fn)
        ok = pred == r.answers
        per_run[r.name] = float(ok.mean())
        correct += int(ok.sum())
        total += ok.size
        for q in np.flatnonzero(~ok):
            mistakes.append(
                {
                    "run": r.name,
                    "query": r.query_names[q],
                    "predicted": r.reference_names[pred[q]],
                    "answer": r.reference_names[r.answers[q]],
                    "distance_predicted": float(dist[q, pred[q]]),
                    "distance_answer": float(dist[q, r.answers[q]]),
                }
            )
    return {
        "accuracy": correct / total,
        "n_runs": len(runs),
        "n_queries": total,
        "ways": sorted({r.ways for r in runs}),
        "per_run": per_run,
        "per_run_std": float(np.std(list(per_run.values()))),
        "mistakes": mistakes,
    }
