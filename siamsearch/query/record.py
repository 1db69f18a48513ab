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
#: How the intervals of records without identities per pair are computed (each record stores its own
#: ``ci_method``; :mod:`siamsearch.evaluation.calibrate` uses the bootstrap over identities when pairs share them).
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
        return validate_record(record, p)
    from ..core.checkpoint import load_checkpoint

    record = load_checkpoint(p, verify=False).calibration
    if record is None:
        raise SiamsearchError(f"{p} carries no calibration; run `siamsearch calibrate --model {p} --data HELD_OUT_DATA`")
    return validate_record(record, p)


#: Fields a record must hold to be applied (the others are evidence, shown when present).
REQUIRED_FIELDS = ("threshold", "model_fingerprint")


def validate_record(record: dict, where: object = "the calibration") -> dict:
    """Check that a record has its fields and a threshold in [0, 2]; returns it unchanged.

    Raises:
        SiamsearchError: a missing field or an impossible value (a damaged or hand-edited record).
    """
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    thr = record.get("threshold")
    ok_thr = isinstance(thr, (int, float)) and not isinstance(thr, bool) and 0.0 <= float(thr) <= 2.0
    if missing or not ok_thr:
        why = f"it lacks {', '.join(missing)}" if missing else f"its threshold {thr!r} is not a distance in [0, 2]"
        raise SiamsearchError(f"{where} is not a usable calibration record ({why}); re-run `siamsearch calibrate`")
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
        *([("pairs", f"{record['n_genuine']:,} genuine / {record['n_impostor']:,} impostor, "
                     f"{'all' if record.get('all_pairs') else 'a seeded draw'} of the {record['possible_genuine']:,} / "
                     f"{record['possible_impostor']:,} distinct pairs these images allow")]
          if "possible_genuine" in record else []),
        ("intervals", str(record.get("ci_method", CI_METHOD))),
        ("AUC / EER", f"{record['auc']:.4f} / {record['eer']:.4f} (EER at d <= {record['eer_threshold']:.4f})"),
        ("data", f"{d.get('held_out_images', '?')} images of {d.get('held_out_identities', '?')} held-out identities "
                 f"({d.get('excluded_training_identities', 0)} training identities left out); "
                 f"digest {str(record.get('data_digest'))[:12]}"),
        ("model", f"{record['model_fingerprint']}  ({record['created']}, siamsearch {record['siamsearch_version']})"),
    ]


def threshold_source_text(record: dict) -> str:
    """One line saying where a calibrated threshold came from (rule, FAR/TAR at it, pair count)."""
    if not all(k in record for k in ("far", "far_ci95", "tar", "n_genuine", "n_impostor")):
        return f"calibration record of {str(record.get('created', 'unknown date'))[:10]} (no evidence stored)"
    target = f", target FAR {record['target_far']:g}" if record.get("target_far") else ""
    return (f"calibration ({record.get('rule')} rule{target}): FAR {record['far']:.2e} [{record['far_ci95'][0]:.1e}, "
            f"{record['far_ci95'][1]:.1e}], TAR {record['tar']:.4f} on {record['n_genuine']:,} genuine / "
            f"{record['n_impostor']:,} impostor pairs, {record.get('created', '')[:10]}")


#: Earlier records kept inside a record (``previous_records``, newest first) when it replaces them.
HISTORY_KEPT = 5


def is_supported(record: dict) -> bool:
    """Whether a record's threshold rests on enough evidence: its FAR target is measurable from its
    impostor pairs (``target_supported`` is not False) and it saw :data:`FEW_IDENTITIES` or more
    held-out identities (records without these fields count as supported)."""
    n_ids = (record.get("data") or {}).get("held_out_identities")
    return record.get("target_supported") is not False and (n_ids is None or int(n_ids) >= FEW_IDENTITIES)


def with_history(new: dict, old: Optional[dict]) -> dict:
    """``new`` with ``old`` (and ``old``'s own history) in ``previous_records``, newest first, at most
    :data:`HISTORY_KEPT`; each kept record without its own history."""
    if old is None:
        return new
    older = [old] + list(old.get("previous_records") or [])
    kept = [{k: v for k, v in r.items() if k != "previous_records"} for r in older[:HISTORY_KEPT]]
    return {**new, "previous_records": kept}


def compare_lines(old: dict, new: dict, heads: tuple[str, str] = ("before", "now")) -> list[str]:
    """:func:`compare` as aligned text lines (a header, then one line per figure), each indented by two
    spaces; every column is as wide as its longest cell plus two spaces, so long values (data paths) never
    run into the next column."""
    rows = [("", *heads)] + compare(old, new)
    w0 = max(len(r[0]) for r in rows) + 2
    w1 = max(len(r[1]) for r in rows) + 2
    return [f"  {name:<{w0}}{a:<{w1}}{b}".rstrip() for name, a, b in rows]


def compare(old: dict, new: dict) -> list[tuple[str, str, str]]:
    """Rows ``(figure, old value, new value)`` for showing a replaced calibration beside its successor."""
    def cell(r: dict, key: str, fmt: str) -> str:
        v = r.get(key)
        return "?" if v is None else format(v, fmt)

    def data(r: dict, key: str) -> str:
        v = (r.get("data") or {}).get(key)
        return "?" if v is None else f"{v:,}"

    return [
        ("created", str(old.get("created", "?")), str(new.get("created", "?"))),
        ("rule", f"{old.get('rule')} {old.get('target_far') or ''}".strip(), f"{new.get('rule')} {new.get('target_far') or ''}".strip()),
        ("threshold", cell(old, "threshold", ".4f"), cell(new, "threshold", ".4f")),
        ("FAR", cell(old, "far", ".2e"), cell(new, "far", ".2e")),
        ("TAR", cell(old, "tar", ".4f"), cell(new, "tar", ".4f")),
        ("genuine / impostor pairs", f"{cell(old, 'n_genuine', ',')} / {cell(old, 'n_impostor', ',')}",
         f"{cell(new, 'n_genuine', ',')} / {cell(new, 'n_impostor', ',')}"),
        ("held-out identities", data(old, "held_out_identities"), data(new, "held_out_identities")),
        ("supported", "yes" if is_supported(old) else "no", "yes" if is_supported(new) else "no"),
        ("data", str((old.get("data") or {}).get("path", "?")), str((new.get("data") or {}).get("path", "?"))),
    ]
