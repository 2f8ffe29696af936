"""Figures people would rather see than read: learning curves, confusion matrices, the photos behind the errors."""

from __future__ import annotations

import textwrap
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


def plot_photo_grid(images: np.ndarray, captions: list[str], path: Path, title: str, cols: int = 4,
                    wrong: list[bool] | None = None) -> None:
    """A grid of HxWx3 uint8 photos with a caption each (red where the prediction is wrong)."""
    plt = pyplot()
    n = len(images)
    cols = min(cols, max(n, 1))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image, caption) in enumerate(zip(axes.flat, images, captions)):
        ax.imshow(image)
        ax.set_title(caption, fontsize=8, color="firebrick" if wrong is None or wrong[i] else "darkgreen")
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "nothing to show", ha="center", va="center")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (3.5 * rows)))  # room for the title above the captions
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion_matrices(panels: dict[str, dict], classes: list[str], path, title: str = "") -> None:
    """One heatmap per panel ({"val": metrics, "test": metrics}, or one per run).

    Up to 25 classes: counts written in the cells. Beyond that (120 breeds), cells are coloured by
    the share of the true class's images (row-normalised, so rare and common classes read alike),
    labels shrink to fit and every tick is kept, and the most-confused pairs are listed under the panel.
    """
    plt = pyplot()
    n = len(classes)
    large = n > 25
    side = max(3.5, 0.55 * n + 2) if not large else min(40.0, 0.16 * n + 4)
    fig, axes = plt.subplots(1, len(panels), figsize=(side * len(panels), side + (1.5 if large else 0)),
                             squeeze=False)
    font = 9 if not large else min(9.0, max(5.0, 600 / n))  # about half a row pitch at any class count
    for ax, (split, metrics) in zip(axes[0], panels.items()):
        matrix = np.asarray(metrics["confusion_matrix"])
        if large:
            rows = matrix.sum(1, keepdims=True)
            shown = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
            image = ax.imshow(shown, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, label="share of the true class")
        else:
            ax.imshow(matrix, cmap="Blues")
        ax.set_title(f"{split}\naccuracy {metrics['accuracy']:.1%} (n={metrics['n']})", fontsize=10)
        ax.set_xticks(range(n), classes, rotation=90 if large else 45, ha="center" if large else "right",
                      fontsize=font)
        ax.set_yticks(range(n), classes, fontsize=font)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if large:
            pairs = metrics.get("most_confused") or []
            if pairs:
                text = "most confused: " + "; ".join(f"{p['true']} -> {p['predicted']} ({p['count']})"
                                                     for p in pairs[:6])
                ax.set_xlabel("predicted\n\n" + "\n".join(textwrap.wrap(text, int(side * 12))), fontsize=9)
            continue
        threshold = matrix.max() / 2 if matrix.size else 0
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if count > threshold else "black")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cross_validation(cv: dict, path: Path) -> None:
    """Out-of-fold accuracy after each epoch, one line per candidate learning rate; the choice marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for lr in cv["lrs"]:
        rows = [r for r in cv["table"] if r["lr"] == lr]
        ax.plot([r["epoch"] for r in rows], [r["accuracy"] for r in rows], marker="o", markersize=3, label=f"lr {lr:g}")
    chosen = cv["chosen"]
    ax.plot([chosen["epochs"]], [chosen["accuracy"]], "k*", markersize=14,
            label=f"chosen: lr {chosen['lr']:g}, {chosen['epochs']} epochs ({chosen['accuracy']:.1%})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("out-of-fold accuracy")
    ax.set_title(f"{cv['folds']}-fold cross-validation on train")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lr_find(lrs: list[float], losses: list[float], smoothed: list[float], suggestion: float,
                 configured: float, path: Path, title: str = "") -> None:
    """The learning-rate range test: loss against a log learning rate, with the suggestion marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(lrs, losses, color="0.75", linewidth=1, label="loss per step")
    ax.plot(lrs, smoothed, color="C0", linewidth=2, label="smoothed loss")
    ax.axvline(suggestion, color="C2", linestyle="--", label=f"suggested lr {suggestion:.2e} (steepest descent)")
    ax.axvline(configured, color="C3", linestyle=":", label=f"the recipe's lr {configured:.2e}")
    ax.set_xscale("log")
    low, high = min(smoothed), max(smoothed[: max(1, len(smoothed) // 2)])
    ax.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.5 * (high - low + 1e-9))
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(title or "learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(panels: dict[str, dict], path: Path, title: str = "") -> None:
    """Reliability diagrams, one panel per split or run: accuracy against mean confidence per confidence
    bin, before and after temperature scaling (a calibrated model lies on the diagonal).
    panels: name -> calibration.reliability_panel(...)."""
    plt = pyplot()
    from matplotlib.colors import to_rgb

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
    for ax, (name, panel) in zip(axes[0], panels.items()):
        width = panel["before"]["edges"][1]
        centres = panel["before"]["edges"][:-1] + width / 2
        for key, colour, offset in (("before", "C3", -width / 4), ("after", "C0", width / 4)):
            bins = panel[key]
            # faint bars hold few photos: a tall bar over three photos weighs little in the ECE
            share = bins["count"] / max(int(bins["count"].sum()), 1)
            ax.bar(centres + offset, np.nan_to_num(bins["accuracy"]), width / 2,
                   color=[(*to_rgb(colour), 0.15 + 0.85 * np.sqrt(x)) for x in share],
                   label=f"{key} (ECE {panel[f'ece_{key}']:.3f})" if key == "before" else
                   f"after T = {panel['temperature']:.2f} (ECE {panel['ece_after']:.3f})")
        ax.plot([0, 1], [0, 1], color="0.3", linestyle="--", linewidth=1, label="perfectly calibrated")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence of the top prediction")
        ax.set_ylabel("accuracy in the bin")
        ax.set_title(f"{name} ({int(panel['before']['count'].sum())} photos)", fontsize=10)
        ax.grid(alpha=0.3)
        legend = ax.legend(fontsize=8, loc="upper left", title="bar opacity: share of photos", title_fontsize=7)
        for handle, colour in zip(legend.legend_handles[1:], ("C3", "C0")):
            handle.set_facecolor(colour)
    fig.suptitle(title or "reliability diagram")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
