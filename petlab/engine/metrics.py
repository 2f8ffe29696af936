"""Classification metrics from class probabilities and targets: what a 2-class and a 120-class user need."""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from petlab.calibration import mean_nll, nll  # noqa: F401 - the engine's names for them

TOP_K = 5
MOST_CONFUSED = 10
HEADLINE = ("accuracy", f"top{TOP_K}_accuracy", "balanced_accuracy", "loss")  # what logs and summaries show


def top_k_accuracy(targets: np.ndarray, probs: np.ndarray, k: int = TOP_K) -> float:
    """Share of images whose true class is among the k most probable (k capped at the class count)."""
    if not len(targets):
        return float("nan")
    k = min(k, probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    return float((top == targets[:, None]).any(axis=1).mean())


def accuracy_interval(correct: int, n: int) -> list[float] | None:
    """The accuracy's 95% Wilson interval: how far a figure from n photos (a sample of a test set, or a
    small one) may be from the accuracy on all the photos it stands for."""
    if not n:
        return None
    ci = binomtest(int(correct), int(n)).proportion_ci(0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def most_confused(matrix: np.ndarray, classes: list[str], n: int = MOST_CONFUSED) -> list[dict]:
    """The n largest off-diagonal cells of a confusion matrix: true -> predicted, count."""
    off = np.asarray(matrix).copy()
    np.fill_diagonal(off, 0)
    cells = [(int(off[i, j]), i, j) for i, j in zip(*np.nonzero(off))]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"true": classes[i], "predicted": classes[j], "count": count} for count, i, j in cells[:n]]


def classification_metrics(targets: np.ndarray, probs: np.ndarray, loss: float, classes: list[str]) -> dict:
    """probs: (N, classes) probabilities (or any scores ranked the same way)."""
    labels = list(range(len(classes)))
    preds = probs.argmax(1) if len(targets) else np.zeros(0, np.int64)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, preds, labels=labels, zero_division=0
    )
    matrix = confusion_matrix(targets, preds, labels=labels)
    present = support > 0
    return {
        "accuracy": float((targets == preds).mean()) if len(targets) else float("nan"),
        "accuracy_ci95": accuracy_interval((targets == preds).sum(), len(targets)),
        f"top{TOP_K}_accuracy": top_k_accuracy(targets, probs),
        # the mean of the per-class accuracies, over the classes this split has images of
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "loss": float(loss),
        "n": int(len(targets)),
        "per_class": {
            name: {"accuracy": float(r) if s else None, "precision": float(p), "recall": float(r), "f1": float(f),
                   "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "most_confused": most_confused(matrix, classes),
        "confusion_matrix": matrix.tolist(),
    }
