"""The calibration record: the threshold a model verifies with, and the evidence it came from.

A record is a dict stored in the checkpoint (:func:`siamsearch.core.checkpoint.write_calibration`)
or in a JSON file (``calibrate --out FILE.json``). It holds the threshold, the rule and
target, the achieved FAR and TAR at the threshold with exact Clopper-Pearson 95%
intervals on the pair counts, AUC, EER, the numbers of genuine and impostor pairs,
the data digest, the model fingerprint, the date and the siamsearch version. A
record is only ever applied to the model whose fingerprint it carries
(:func:`check_record`). Records are made by :func:`siamsearch.evaluation.calibrate.calibrate`.

**Decision rule everywhere: same identity iff ``distance <= threshold``** (:data:`DECISION_RULE`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..core.errors import SiamsearchError, check_fingerprint
from ..core.distance import DECISION_RULE  # noqa: F401  (re-exported: the record stores it)
from ..core.files import PathLike
from ..core.choices import RULES  # noqa: F401  (defined once there, torch-free)

#: Coverage of the confidence intervals in a record.
CI_LEVEL = 0.95
#: How the intervals are computed (stored in every record).
CI_METHOD = ("Clopper-Pearson exact binomial interval on the pair counts (95%); "
             "treats pairs as independent trials")
#: Marker and version of the record layout.
RECORD_KIND = "siamsearch.calibration"
RECORD_VERSION = 1
#: Below this many held-out identities the record carries a warning: the impostor pairs then only
#: show how these few identities differ, not how new ones will.
FEW_IDENTITIES = 10


class CalibrationWarning(UserWarning):
    """The calibration is usable but weaker than asked (too few impostor pairs, no held-out check...)."""


def binomial_ci(k: int, n: int, level: float = CI_LEVEL) -> tuple[float, float]:
    """Clopper-Pearson (exact) two-sided interval for a rate ``k / n``.

    Args:
        k: successes (e.g. impostor pairs accepted), ``0 <= k <= n``.
        n: trials (e.g. impostor pairs), ``n >= 1``.
        level: coverage, e.g. 0.95.

    Returns:
        ``(low, high)`` in [0, 1]; ``low = 0`` when ``k = 0`` and ``high = 1`` when ``k = n``.
    """
    from scipy.stats import beta

    k, n = int(k), int(n)
    if n < 1 or not 0 <= k <= n:
        raise SiamsearchError(f"a rate needs 0 <= k <= n and n >= 1; got k={k}, n={n}")
    alpha = 1.0 - level
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high

def check_record(record: Optional[dict], fingerprint: str, where: str = "the model") -> dict:
    """Refuse a calibration record made for another model.

    Args:
        record: a calibration record (dict) or ``None``.
        fingerprint: the fingerprint of the model it is to be used with.
        where: how to name the model in the message (its path).

    Returns:
        The record, unchanged.

    Raises:
        SiamsearchError: when there is no record or it has no threshold.
        FingerprintMismatch: when ``record["model_fingerprint"]`` is not ``fingerprint``.
    """
    if not isinstance(record, dict) or record.get("threshold") is None:
        raise SiamsearchError(f"{where} has no usable calibration record; run "
                              f"`siamsearch calibrate --model MODEL.pt --data HELD_OUT_DATA`")
    check_fingerprint(record.get("model_fingerprint"), fingerprint, made="the calibration record was made for",
                      what=where, fix="a threshold only holds for the model it was chosen for. Re-run "
                                      "`siamsearch calibrate` for this model, or pass --threshold explicitly")
    return record


def load_record(path: PathLike) -> dict:
    """Read a calibration record from a JSON file written by ``calibrate --out FILE.json`` or
    from a checkpoint that carries one.

    Raises:
        SiamsearchError: when the file is missing, unreadable or holds no calibration.
    """
    p = Path(path)
    if not p.is_file():
        raise SiamsearchError(f"{p}: no such calibration file; write one with `siamsearch calibrate --out {p}`")
    if p.suffix.lower() == ".json":
        try:
            record = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SiamsearchError(f"{p} is not a readable calibration JSON ({e}); re-run `siamsearch calibrate`") from None
        if not isinstance(record, dict) or record.get("kind") != RECORD_KIND:
            raise SiamsearchError(f"{p} is JSON but not a siamsearch calibration record; re-run `siamsearch calibrate`")
        return record
    from ..core.checkpoint import load_checkpoint

    record = load_checkpoint(p, verify=False).calibration
    if record is None:
        raise SiamsearchError(f"{p} carries no calibration; run `siamsearch calibrate --model {p} --data HELD_OUT_DATA`")
    return record


def describe(record: dict) -> list[tuple[str, str]]:
    """Rows ``(name, value)`` that summarise a record for people (used by the CLI)."""
    rule = record["rule"]
    rule_text = {"far": f"FAR <= {record.get('target_far'):g}" if record.get("target_far") else "FAR",
                 "eer": "equal error rate", "max-accuracy": "max accuracy"}.get(rule, rule)
    lo, hi = record["far_ci95"]
    tlo, thi = record["tar_ci95"]
    d = record.get("data", {})
    return [
        ("threshold", f"{record['threshold']:.4f}  (same iff distance <= threshold; rule: {rule_text})"),
        ("FAR", f"{record['far']:.2e}  95% CI [{lo:.1e}, {hi:.1e}]  "
                f"({record['false_accepts']:,} of {record['n_impostor']:,} impostor pairs accepted)"),
        ("TAR", f"{record['tar']:.4f}  95% CI [{tlo:.4f}, {thi:.4f}]  "
                f"({record['true_accepts']:,} of {record['n_genuine']:,} genuine pairs accepted)"),
        ("AUC / EER", f"{record['auc']:.4f} / {record['eer']:.4f} (EER at d <= {record['eer_threshold']:.4f})"),
        ("data", f"{d.get('held_out_images', '?')} images of {d.get('held_out_identities', '?')} held-out identities "
                 f"({d.get('excluded_training_identities', 0)} training identities left out); "
                 f"digest {str(record.get('data_digest'))[:12]}"),
        ("model", f"{record['model_fingerprint']}  ({record['created']}, siamsearch {record['siamsearch_version']})"),
    ]


def threshold_source_text(record: dict) -> str:
    """One line saying where a calibrated threshold came from (rule, FAR/TAR at it, pair count)."""
    target = f", target FAR {record['target_far']:g}" if record.get("target_far") else ""
    return (f"calibration ({record.get('rule')} rule{target}): FAR {record['far']:.2e} [{record['far_ci95'][0]:.1e}, "
            f"{record['far_ci95'][1]:.1e}], TAR {record['tar']:.4f} on {record['n_genuine']:,} genuine / "
            f"{record['n_impostor']:,} impostor pairs, {record.get('created', '')[:10]}")
