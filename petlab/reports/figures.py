"""Figures people would rather see than read: learning curves and misclassified examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(histories: dict[str, list[dict]], path: Path, title: str = "") -> None:
    """Loss and accuracy per epoch, train dashed and val solid, one colour per run."""
    plt = pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, rows) in enumerate(histories.items()):
        colour = colours[i % len(colours)]
        epochs = [int(r["epoch"]) for r in rows]
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            ax.plot(epochs, [float(r[f"train_{metric}"]) for r in rows], "--", color=colour, alpha=0.7,
                    marker="o", markersize=3)
            ax.plot(epochs, [float(r[f"val_{metric}"]) for r in rows], "-", color=colour, marker="o",
                    markersize=3, label=label)
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} (train dashed, validation solid)")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_acc.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_misclassified(images: np.ndarray, true: list[str], predicted: list[str], path: Path,
                       title: str = "misclassified validation images") -> None:
    """A grid of HxWx3 uint8 images captioned with their true and predicted labels."""
    plt = pyplot()
    n = len(images)
    cols = min(4, max(n, 1))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, t, p in zip(axes.flat, images, true, predicted):
        ax.imshow(image)
        ax.set_title(f"true: {t}\npredicted: {p}", fontsize=9, color="firebrick")
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
