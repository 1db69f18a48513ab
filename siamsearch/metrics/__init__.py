"""Metrics: verification (ROC family), identification (retrieval, open set) and one-shot.

Pure numpy / scikit-learn / Faiss; no model or dataset code. Scores are Euclidean
distances (smaller = more alike); the decision rule everywhere is
``distance <= threshold`` -> same.
"""
from .identification import dir_at_fpir, dir_at_fpir_ci, exact_search, gallery_probe, leave_one_out, map_at_r, open_set_metrics, precision_at_1, r_precision, cmc_recall_at_k
from .knn import as_vectors, exact_knn, knn_recall_at_k
from .oneshot import OneShotRun, load_oneshot_runs, oneshot_accuracy, oneshot_metrics, oneshot_per_run
from .verification import DEFAULT_FARS, Roc, best_accuracy, bootstrap_ci, cv_accuracy, det_curve, eer, far_supported, min_impostor_pairs, roc_auc, roc_curve, tar_at_far, threshold_for_far, verification_metrics

__all__ = [
    "DEFAULT_FARS",
    "OneShotRun",
    "Roc",
    "best_accuracy",
    "bootstrap_ci",
    "cv_accuracy",
    "det_curve",
    "dir_at_fpir",
    "dir_at_fpir_ci",
    "eer",
    "exact_search",
    "far_supported",
    "gallery_probe",
    "leave_one_out",
    "load_oneshot_runs",
    "map_at_r",
    "min_impostor_pairs",
    "oneshot_accuracy",
    "oneshot_metrics",
    "oneshot_per_run",
    "open_set_metrics",
    "precision_at_1",
    "r_precision",
    "cmc_recall_at_k",
    "knn_recall_at_k",
    "exact_knn",
    "as_vectors",
    "roc_auc",
    "roc_curve",
    "tar_at_far",
    "threshold_for_far",
    "verification_metrics",
]
