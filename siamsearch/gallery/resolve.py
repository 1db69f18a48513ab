"""Which model a gallery is built or searched with, and the one check that it is the gallery's model."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..core.errors import SiamsearchError, check_fingerprint


def is_embedder(obj: Any) -> bool:
    """True for a loaded :class:`~siamsearch.core.embedder.Embedder` (or anything shaped like one)."""
    return hasattr(obj, "fingerprint") and hasattr(obj, "embed_files")


def load_embedder(model: Any, device: str, precision: Optional[str] = None):
    """``model`` itself when it is an Embedder, else the checkpoint at path ``model`` loaded on ``device`` in
    ``precision`` (``None``: the process default)."""
    if is_embedder(model):
        return model
    if model is None:
        raise SiamsearchError("a model is needed: give the checkpoint with --model MODEL.pt")
    from ..core.embedder import load_model

    return load_model(model, device=device, precision=precision)


def embedding_precision(embedder: Any) -> str:
    """The precision ``embedder`` embeds in (``fp32``, ``bf16`` or ``fp16``), as galleries and journals record
    it; ``fp32`` for an object that does not say."""
    return str(getattr(embedder, "precision", "fp32"))


def check_gallery_model(folder: Path, attrs: dict, fingerprint: str, what: str, fix: str) -> None:
    """Raise :class:`FingerprintMismatch` unless ``fingerprint`` is the model that built the gallery.

    Args:
        attrs: the gallery's attributes (``model_fingerprint``).
        what: names the offered model in the message (e.g. "the given model").
        fix: what the user should do, ending the message.
    """
    check_fingerprint(str(attrs["model_fingerprint"]), fingerprint, made=f"{folder} was built with", what=what,
                      fix=fix)


def rebuild_command(folder: Path, attrs: dict) -> str:
    """The command line that rebuilds the gallery at ``folder`` with another model."""
    return f"`siamsearch index build {attrs['source_dir']} --model MODEL.pt --out {folder} --overwrite`"


def recorded_model(folder: Path, attrs: dict, device: str, precision: Optional[str] = None):
    """The Embedder of the checkpoint recorded in a gallery, checked against its fingerprint, in ``precision``
    (``None``: the process default)."""
    path = str(attrs.get("model_path", ""))
    if not path or not Path(path).is_file():
        raise SiamsearchError(f"the model that built {folder} ({path or 'no path recorded'}) is not "
                              "available; pass it with --model (Gallery.open(path, model=...))")
    embedder = load_embedder(path, device, precision)
    check_gallery_model(folder, attrs, embedder.fingerprint, f"{path} now",
                        "pass the original checkpoint with --model, or rebuild with --overwrite")
    return embedder


def update_precision(attrs: dict) -> Optional[str]:
    """The precision an update embeds in: the gallery's recorded one while the process default is ``auto``
    (so that new rows match the old ones, and the record stays true), else the process default (an explicit
    ``--precision``)."""
    from ..core.choices import PRECISIONS
    from ..core.inference import default_precision

    recorded = str(attrs.get("embedding_precision", "fp32"))
    return recorded if default_precision() == "auto" and recorded in PRECISIONS else None
