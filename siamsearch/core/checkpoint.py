"""Self-describing checkpoints, loaded without unpickling code.

A checkpoint is a ``torch.save`` of a plain dict holding only tensors, numbers
and JSON strings, so ``torch.load(weights_only=True)`` reads it:

===================  ========================================================
key                  content
===================  ========================================================
``format``           ``"siamsearch.checkpoint"``
``format_version``   ``1``
``config``           :class:`ModelConfig` as JSON (architecture + preprocessing spec)
``state_dict``       the :class:`EmbeddingNet` weights
``card``             training card JSON: data digest, loss, hyperparameters,
                     seed, history, best epoch, library versions, identities
``fingerprint``      16 hex chars: SHA-256 of config JSON and weights
``calibration``      JSON of the calibration record, or ``""``
``head_state``       loss-head tensors (ArcFace class weights); not needed to embed
``resume``           optimizer state and epoch, for ``--resume`` (last-epoch files only)
===================  ========================================================
"""
from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from .config import ModelConfig
from .errors import CheckpointError, SiamsearchError, check_fingerprint
from .files import PathLike, atomic_path

FORMAT = "siamsearch.checkpoint"
FORMAT_VERSION = 1

def compute_fingerprint(config: ModelConfig, state_dict: dict[str, torch.Tensor]) -> str:
    """16 hex chars identifying a model: SHA-256 over the config JSON and every weight tensor."""
    h = hashlib.sha256(config.to_json().encode())
    for key in sorted(state_dict):
        t = state_dict[key].detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint (see the module docstring for the on-disk keys)."""

    config: ModelConfig
    state_dict: dict
    card: dict
    fingerprint: str
    calibration: Optional[dict] = None
    head_state: dict = field(default_factory=dict)
    resume: Optional[dict] = None


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path`` (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(
    path: PathLike,
    config: ModelConfig,
    state_dict: dict,
    card: dict,
    *,
    head_state: Optional[dict] = None,
    calibration: Optional[dict] = None,
    resume: Optional[dict] = None,
) -> str:
    """Write a checkpoint atomically; returns its fingerprint."""
    state = {k: v.detach().to("cpu").clone() for k, v in state_dict.items()}
    fp = compute_fingerprint(config, state)
    obj = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_json(),
        "state_dict": state,
        "card": json.dumps(card, sort_keys=True),
        "fingerprint": fp,
        "calibration": json.dumps(calibration, sort_keys=True) if calibration else "",
        "head_state": {k: v.detach().to("cpu") for k, v in (head_state or {}).items()},
    }
    if resume is not None:
        obj["resume"] = resume
    atomic_torch_save(obj, path)
    return fp


def _not_a_checkpoint(path: PathLike, why: str = "") -> CheckpointError:
    """The one message for any file that is not a readable siamsearch checkpoint."""
    detail = f" ({why})" if why else ""
    return CheckpointError(
        f"{path} is not a siamsearch checkpoint{detail}: it is corrupt, incomplete, or another kind of file. "
        "Give the MODEL.pt written by `siamsearch train` (check the order of the arguments), or copy it again")


#: Keys every checkpoint holds, and the type each must have.
_REQUIRED = {"config": str, "state_dict": dict, "card": str, "fingerprint": str}


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, with every failure turned into a :class:`CheckpointError`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower() and "weights_only" in str(e).lower():
            raise CheckpointError(
                f"{path} carries pickled Python code, which siamsearch refuses to execute "
                f"(weights-only loading). Only load checkpoints written by siamsearch."
            ) from None
        raise _not_a_checkpoint(path) from None
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception:  # noqa: BLE001 - torch raises almost anything on foreign bytes; its words do not help
        raise _not_a_checkpoint(path) from None


def _read(path: PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise SiamsearchError(f"{path}: no such checkpoint; train one with `siamsearch train --data DIR --out {path}`")
    if path.is_dir():
        raise SiamsearchError(f"{path} is a folder; give the checkpoint file (MODEL.pt)")
    obj = _torch_load(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a siamsearch checkpoint (a torch file without the '{FORMAT}' marker); "
            "give the MODEL.pt written by `siamsearch train`, or load backbone weights with `--weights`"
        )
    version = obj.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise _not_a_checkpoint(path, "format_version is not a number")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer siamsearch (format {version}); upgrade siamsearch")
    for key, kind in _REQUIRED.items():
        if not isinstance(obj.get(key), kind):
            raise _not_a_checkpoint(path, f"'{key}' is missing or not a {kind.__name__}")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj["state_dict"].items()):
        raise _not_a_checkpoint(path, "'state_dict' holds something other than named tensors")
    if not isinstance(obj.get("calibration", ""), str):
        raise _not_a_checkpoint(path, "'calibration' is not text")
    return obj


def _parse(path: PathLike, obj: dict) -> tuple[ModelConfig, dict, Optional[dict]]:
    """Config, card and calibration record of a checkpoint dict, or a :class:`CheckpointError`."""
    try:
        config = ModelConfig.from_json(obj["config"])
        card = json.loads(obj["card"])
        calibration = json.loads(obj["calibration"]) if obj.get("calibration") else None
    except SiamsearchError as e:  # e.g. unknown config fields: written by a newer siamsearch
        raise CheckpointError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - any malformed field means the file is damaged
        raise CheckpointError(f"{path} is damaged ({type(e).__name__}: {e}); re-train it or copy it again") from None
    if not isinstance(card, dict) or not (calibration is None or isinstance(calibration, dict)):
        raise _not_a_checkpoint(path, "its card or calibration is not a record")
    return config, card, calibration


def load_checkpoint(path: PathLike, verify: bool = True) -> Checkpoint:
    """Read a checkpoint with ``weights_only=True``.

    Any file that is not a complete siamsearch checkpoint (random bytes, a truncated copy, a
    CSV, a zip, another program's torch file) raises :class:`CheckpointError` and never
    another exception type.

    Raises:
        CheckpointError: pickled code, corrupt file, foreign file, or weights
            that no longer match the stored fingerprint.
    """
    obj = _read(path)
    config, card, calibration = _parse(path, obj)
    state, fp = obj["state_dict"], obj["fingerprint"]
    if verify:
        try:
            actual = compute_fingerprint(config, state)
        except Exception as e:  # noqa: BLE001 - tensors that cannot be hashed are damaged ones
            raise CheckpointError(f"{path} is damaged ({type(e).__name__}); re-train it or copy it again") from None
        if actual != fp:
            raise CheckpointError(
                f"{path} is damaged: its weights do not match its fingerprint {fp}; re-train or copy it again")
    head = obj.get("head_state", {})
    resume = obj.get("resume")
    return Checkpoint(
        config=config, state_dict=state, card=card, fingerprint=fp, calibration=calibration,
        head_state=head if isinstance(head, dict) else {}, resume=resume if isinstance(resume, dict) else None,
    )


def write_calibration(path: PathLike, record: Optional[dict]) -> None:
    """Store (or clear, with ``None``) the calibration record inside a checkpoint, atomically.

    Raises:
        FingerprintMismatch: when ``record["model_fingerprint"]`` is not this checkpoint's.
    """
    obj = _read(path)
    if record is not None and record.get("model_fingerprint") is not None:
        check_fingerprint(record["model_fingerprint"], obj["fingerprint"], made="the calibration was made for",
                          what=str(path), fix="calibrate this model with `siamsearch calibrate`")
    obj["calibration"] = json.dumps(record, sort_keys=True) if record else ""
    atomic_torch_save(obj, path)
