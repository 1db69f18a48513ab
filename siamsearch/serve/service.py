"""The service without HTTP: the model, the galleries, the limits, and one function per API answer.

:class:`Service` is what the FastAPI app (:mod:`siamsearch.serve.app`) calls; the
functions here take decoded inputs and return the JSON-ready dicts the API sends,
with the same keys as the CLI's ``--json`` outputs (``verify --json``, ``query --json``).
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any, Optional

from .._version import __version__
from ..core.errors import SiamsearchError
from ..query.identification import Neighbor, predict
from ..query.verification import resolve_threshold, verify
from .config import ApiKeys, ServeConfig
from .galleries import GalleryHandle, image_id
from .metrics import Metrics
from .pool import InferencePool
from .ratelimit import RateLimiter
from .uploads import Upload

#: Keys of a calibration record shown in ``/api/v1/info``.
CALIBRATION_SUMMARY = ("rule", "target_far", "threshold", "far", "far_ci95", "tar", "tar_ci95", "n_genuine",
                       "n_impostor", "auc", "eer", "created", "model_fingerprint")


def _set_torch_threads(n: int) -> None:
    """Run in each inference thread as it starts: torch's intra-op thread count is per calling thread."""
    import torch

    torch.set_num_threads(n)


class Service:
    """Everything one server process holds (built once at startup).

    Raises (at construction):
        SiamsearchError: unreadable model or key file; FingerprintMismatch: a gallery built by another
            model (both fingerprints named); GalleryError: a damaged gallery.
    """

    def __init__(self, config: ServeConfig, model: Any = None):
        self.config = config.check()
        if model is None:
            from ..core.embedder import load_model

            model = load_model(config.model, device=config.device)
        self.model = model
        self.keys: Optional[ApiKeys] = ApiKeys.load(config.api_keys) if config.api_keys else None
        self.metrics = Metrics()
        self.galleries: dict[str, GalleryHandle] = {}
        for folder in config.indexes:
            h = GalleryHandle(folder, model)
            self.galleries[h.name] = h
            self.metrics.gallery_images.labels(h.name).set(len(h.current()))
        self.limiter = RateLimiter(config.rate_limit) if config.rate_limit > 0 else None
        self.pool = InferencePool(config.inference_threads, config.queue, on_reject=self.metrics.busy.inc,
                                  initializer=partial(_set_torch_threads, self.config.torch_threads))

    # ---- description

    def calibration_summary(self) -> Optional[dict]:
        rec = self.model.calibration
        if not rec:
            return None
        out = {k: rec.get(k) for k in CALIBRATION_SUMMARY if k in rec}
        out["decision_rule"] = "distance <= threshold -> same"
        return out

    def info(self) -> dict:
        """Model (fingerprint, config, embedding size), calibration summary, galleries and limits."""
        m = self.model
        return {
            "siamsearch_version": __version__,
            "model": {"fingerprint": m.fingerprint, "path": os.path.basename(m.path or ""), "embedding_dim": m.dim,
                      "precision": getattr(m, "precision", "fp32"),
                      "config": m.config.to_dict() if hasattr(m.config, "to_dict") else None},
            "calibration": self.calibration_summary(),
            "galleries": [h.summary() for h in self.galleries.values()],
            "limits": {"max_upload_mb": self.config.max_upload_mb, "max_pixels": self.config.max_pixels,
                       "k_max": 100, "inference_threads": self.config.inference_threads,
                       "queue": self.config.queue, "rate_limit_per_s": self.config.rate_limit or None},
            "auth": "api-keys" if self.keys is not None else "none (loopback only)",
        }

    def gallery(self, name: str) -> GalleryHandle:
        """The served gallery called ``name``.

        Raises:
            ApiError: 400 for a name that tries path traversal, 404 for an unknown gallery.
        """
        from .errors import ApiError

        if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
            raise ApiError(400, "bad_gallery_name", f"{name!r} is not a gallery name; names are folder names")
        h = self.galleries.get(name)
        if h is None:
            raise ApiError(404, "gallery_not_found", f"no gallery {name!r} is served here; served: "
                                                     f"{', '.join(sorted(self.galleries)) or 'none'}")
        return h

    # ---- answers (run on the inference pool)

    def verify(self, a: Upload, b: Upload, threshold: Optional[float]) -> dict:
        """``verify --json`` for two decoded uploads: distance, threshold, is_same, threshold_source, calibration."""
        with self.metrics.timed("embed"):
            result = verify(self.model, a.image, b.image, threshold=threshold)
        return result.to_dict()

    def search(self, name: str, query: Upload, k: int, open_set: bool, threshold: Optional[float]) -> dict:
        """Neighbours of one query image in gallery ``name`` and the prediction (``"unknown"`` in open set
        when the nearest is farther than the threshold)."""
        h = self.gallery(name)
        source = None
        if open_set or threshold is not None:
            threshold, source, _ = resolve_threshold(self.model, threshold)
            open_set = True
        with self.metrics.timed("embed"):
            emb = self.model.embed(query.image)
        g = h.current()
        with self.metrics.timed("search"):
            res = g.search(emb, k=k)
        root = str(g.source_dir)
        nbrs, out = [], []
        for r in range(res.k):
            rel = Path(os.path.relpath(res.paths[0][r], root)).as_posix()
            nbrs.append(Neighbor(rank=r + 1, path=rel, label=res.labels[0][r], distance=float(res.distances[0, r])))
            out.append({"rank": r + 1, "id": image_id(rel), "label": res.labels[0][r],
                        "distance": float(res.distances[0, r]), "path": rel})
        return {"gallery": h.name, "query": query.name, "k": int(k), "prediction": predict(nbrs, threshold if open_set else None),
                "open_set": bool(open_set), "threshold": threshold, "threshold_source": source, "neighbors": out}

    def enrol(self, name: str, identity: str, uploads: list) -> dict:
        h = self.gallery(name)
        with self.metrics.timed("write"):
            images = h.enrol(identity, uploads)
        self.metrics.gallery_images.labels(h.name).set(len(h.current()))
        return {"gallery": h.name, "identity": identity, "images": images, "ids": [i["id"] for i in images]}

    def remove(self, name: str, ident: Optional[str] = None, identity: Optional[str] = None) -> dict:
        h = self.gallery(name)
        with self.metrics.timed("write"):
            out = h.remove_image(ident) if identity is None else h.remove_identity(identity)
        self.metrics.gallery_images.labels(h.name).set(len(h.current()))
        return dict(out, gallery=h.name)


def check_threshold(threshold: Optional[float]) -> Optional[float]:
    """A form threshold: a distance in [0, 2] or ``None``."""
    if threshold is not None and not (0.0 <= threshold <= 2.0):
        raise SiamsearchError(f"threshold is a Euclidean distance in [0, 2]; got {threshold}")
    return threshold
