"""Identification through a gallery's deployed index against exact search (``evaluate --index``)."""
from __future__ import annotations

import os

import numpy as np

from ..core.errors import SiamsearchError
from ..core.files import PathLike
from ..metrics import identification as ident


def gallery_search_fn(gallery) -> ident.SearchFn:
    """A :data:`~siamsearch.metrics.identification.SearchFn` through a gallery's deployed Faiss index,
    with ids mapped from the gallery's row ids to positions in ``gallery.embeddings``."""
    row_ids = np.asarray(gallery.ids, dtype=np.int64)
    emb = gallery.embeddings

    def exact_vectors(ids: np.ndarray) -> np.ndarray:  # for re-ranking lossy codes (PQ, SQ)
        return emb[np.searchsorted(row_ids, ids)]

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, ids = gallery.index.search(queries, k, vectors=exact_vectors)
        pos = np.searchsorted(row_ids, ids)
        pos = np.where((ids >= 0) & (pos < row_ids.size), pos, -1)
        return dist, pos

    return search


def _two_pass(emb: np.ndarray, labels: np.ndarray, search: ident.SearchFn, progress: bool) -> dict:
    """Identification through ``search`` the way it is used: rank figures (P@1, recall@k, CMC) from
    searches of k = 21 neighbours, as a query would ask; MAP@R and R-precision need R neighbours per
    query and come from a second pass with k = R + 1 (an approximate index may search wider for it)."""
    ranks, _ = ident.leave_one_out(emb, labels, search=search, max_r=1, progress=progress)
    full, _ = ident.leave_one_out(emb, labels, search=search, progress=progress)
    full.update({k: ranks[k] for k in ("precision_at_1", "recall_at_k", "cmc")})
    full["k_for_rank_figures"] = len(ranks["cmc"]) + 1
    return full


def index_comparison(index_path: PathLike, model, progress: bool, warnings: list) -> dict:
    """Leave-one-out identification on a gallery: exact search vs its deployed index."""
    from ..gallery import Gallery

    with Gallery.open(index_path, model=model) as g:
        labels = np.asarray(g.labels, dtype=np.int64)
        labelled = labels >= 0
        if labelled.sum() < 2:
            raise SiamsearchError(
                f"{index_path} has no identity labels, so identification cannot be scored; build it from "
                "identity folders with `siamsearch index build DIR --labels from-folder`"
            )
        if not labelled.all():
            warnings.append(f"{int((~labelled).sum())} unlabelled gallery images take part as distractors only")
            # each unlabelled image becomes its own singleton identity: never relevant, never scored
            labels = np.where(labelled, labels, -1 - np.arange(labels.size))
        emb = g.embeddings
        exact = _two_pass(emb, labels, ident.exact_search(emb), progress)
        deployed = _two_pass(emb, labels, gallery_search_fn(g), progress)
        index_meta = dict(g.index.meta)
    diff = {
        "precision_at_1": deployed["precision_at_1"] - exact["precision_at_1"],
        "map_at_r": deployed["map_at_r"] - exact["map_at_r"],
        "r_precision": deployed["r_precision"] - exact["r_precision"],
        "recall_at_k": {k: deployed["recall_at_k"][k] - exact["recall_at_k"][k] for k in exact["recall_at_k"]},
    }
    return {"index": os.fspath(index_path), "index_type": index_meta.get("factory"), "index_meta": index_meta,
            "n_items": int(labels.size), "exact": exact, "deployed": deployed, "difference": diff}
