"""Per-class accuracy from the stored predictions and labels: what the mining pass writes to
eval/per_class_accuracy when it finishes (mining/loop.py) and what `Run.class_accuracy` reads
back for a partial run (results/summaries.py), one computation for both."""
from __future__ import annotations

import numpy as np

from sketchmine.store import schema


def class_counts(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class: images predicted correctly, and mined images with a label (pred -1:
    unreadable or not mined yet; pred -2: a NaN output, never correct; label -1: unknown)."""
    valid = (pred != schema.NO_PREDICTION) & (labels >= 0)
    count = np.bincount(labels[valid], minlength=num_classes)[:num_classes]
    correct = np.bincount(labels[valid & (pred == labels)], minlength=num_classes)[:num_classes]
    return correct.astype(np.int64), count.astype(np.int64)


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(accuracy (K,) float64, NaN for a class without images; correct (K,) int64; count (K,)
    int64) of predictions `pred` (N,) against `labels` (N,), as `class_counts` counts them."""
    correct, count = class_counts(pred, labels, num_classes)
    return np.where(count > 0, correct / np.maximum(count, 1), np.nan), correct, count
