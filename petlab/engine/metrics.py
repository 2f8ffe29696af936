"""Classification metrics and the confusion-matrix figure, from predictions and targets."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def classification_metrics(targets: np.ndarray, preds: np.ndarray, loss: float, classes: list[str]) -> dict:
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, preds, labels=labels, zero_division=0
    )
    return {
        "accuracy": float((targets == preds).mean()) if len(targets) else float("nan"),
        "loss": float(loss),
        "n": int(len(targets)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(targets, preds, labels=labels).tolist(),
    }


def plot_confusion_matrices(panels: dict[str, dict], classes: list[str], path, title: str = "") -> None:
    """One heatmap per panel ({"val": metrics, "test": metrics}, or one per run), counts annotated."""
    from petlab.reports.figures import pyplot

    plt = pyplot()
    side = max(3.5, 0.55 * len(classes) + 2)
    fig, axes = plt.subplots(1, len(panels), figsize=(side * len(panels), side), squeeze=False)
    for ax, (split, metrics) in zip(axes[0], panels.items()):
        matrix = np.asarray(metrics["confusion_matrix"])
        ax.imshow(matrix, cmap="Blues")
        ax.set_title(f"{split}\naccuracy {metrics['accuracy']:.1%} (n={metrics['n']})", fontsize=10)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        threshold = matrix.max() / 2 if matrix.size else 0
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if count > threshold else "black")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
