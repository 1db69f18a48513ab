"""siamsearch: image embeddings for verification and gallery search.

Python API::

    import siamsearch
    result = siamsearch.train(data="faces/", out="model.pt", epochs=10)
    model = siamsearch.load_model("model.pt")
    emb = model.embed(["a.jpg", "b.jpg"])          # [2, d] float32, L2-normalised
    d = model.distance("a.jpg", "b.jpg")           # Euclidean, in [0, 2]
    r = siamsearch.verify(model, "a.jpg", "b.jpg")  # same / different by the calibrated threshold

Names are imported lazily, so ``import siamsearch`` stays fast for the CLI.

Layers (imports only point down; ``tests/test_architecture.py`` checks it)::

    core (0) < data, metrics (1) < training, gallery (2) < query (3) < evaluation (4) < demo, serve (5) < cli (6) < __main__ (7)

A module may import modules of its own folder and of lower layers only (``data``
and ``metrics`` never import each other, nor ``training`` and ``gallery``, nor
``demo`` and ``serve``; the CLI starts ``demo`` and ``serve``, which never import
it). ``siamsearch._version`` and ``siamsearch.core.errors`` may be imported by
anyone.
"""
from ._version import __version__
from .core.errors import SiamsearchError
from .core.lazy import lazy_attributes

_LAZY = {
    "ModelConfig": "core.config",
    "Embedder": "core.embedder",
    "load_model": "core.embedder",
    "TrainResult": "training.trainer",
    "train": "training.trainer",
    "Gallery": "gallery",
    "verify": "query.verification",
    "identify": "query.identification",
    "calibrate": "evaluation.calibrate",
    "evaluate": "evaluation.evaluate",
}

__all__ = ["__version__", "SiamsearchError", *_LAZY]


__getattr__ = lazy_attributes(__name__, _LAZY)
