"""Result figures, saved as PNG so a headless run leaves the same evidence as an interactive one."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

if not matplotlib.get_backend().lower().startswith(("module://matplotlib_inline", "nbagg", "widget", "ipympl")):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from mcls.io import atomic_path
from mcls.labels import class_names


def save(fig, path: str | Path) -> Path:
    """Writes `fig` as a PNG and closes it: a saved figure is finished, and one left open would be drawn a second
    time by a notebook's inline backend (and hold its memory in a long loop)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def confusion_matrix_figure(cm: np.ndarray, age_bounds=(30, 60), title: str = "validation confusion matrix"):
    fig, ax = plt.subplots(figsize=(11, 9))
    names = class_names(age_bounds)
    sns.heatmap(cm, annot=True, fmt="d", cmap="Blues", cbar=False, xticklabels=names, yticklabels=names, ax=ax,
                annot_kws={"size": 7})
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    ax.tick_params(labelsize=7)
    return fig


def learning_curves_figure(history: pd.DataFrame):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(history["epoch"], history["train_loss"], marker="o", label="train loss")
    if "val_loss" in history:
        axes[0].plot(history["epoch"], history["val_loss"], marker="o", label="validation loss")
    axes[0].set_xlabel("epoch")
    axes[0].legend()
    for col in ("f1", "f1_mask", "f1_gender", "f1_age", "f1_old"):
        if col in history:
            axes[1].plot(history["epoch"], history[col], marker="o", label=col)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("validation macro F1")
    axes[1].set_ylim(0, 1.02)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def fold_scores_figure(per_fold: pd.DataFrame):
    """Bars of macro F1 (18-class and per head) for each validation fold."""
    cols = [c for c in ("f1", "f1_mask", "f1_gender", "f1_age", "f1_old") if c in per_fold]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    per_fold[cols].astype(float).plot.bar(ax=ax)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("fold")
    ax.set_ylabel("validation macro F1")
    ax.legend(fontsize=8, ncol=len(cols))
    return fig


def class_distribution_figure(counts, title: str, age_bounds=(30, 60)):
    """Images per class (a sequence of 18 counts in class order), each bar named mask / gender / age band."""
    counts = np.asarray(counts)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.bar(np.arange(len(counts)), counts)
    ax.set_xticks(np.arange(len(counts)), [f"{k} {n}" for k, n in enumerate(class_names(age_bounds))], rotation=60,
                  ha="right", fontsize=7)
    ax.set_xlabel("class (mask / gender / age band)")
    ax.set_ylabel("images")
    ax.set_title(title)
    return fig


def cut_histogram(values, bins, cut: float, cut_label: str, xlabel: str, ylabel: str):
    """A histogram on a log count scale with one dashed cut line."""
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.hist(values, bins=bins)
    ax.axvline(cut, color="r", ls="--", label=cut_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{ylabel} (log scale)")
    ax.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")  # 1, 10, 100, not 10^k
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend()
    return fig


def confidence_histogram(confidences, cut: float):
    """Best face confidence per image (log counts), with the cut under which an image counts as faceless."""
    return cut_histogram(pd.Series(confidences).dropna(), 50, cut, f"confidence cut ({cut})",
                         "best face confidence per image", "images")


def image_grid(tiles: list, captions: list, ncols: int, title: str = ""):
    """A matplotlib figure of image tiles (None leaves a cell blank), each captioned above; a one-line figure that
    says so when there is nothing to show."""
    if all(t is None for t in tiles):
        fig, ax = plt.subplots(figsize=(1.9 * ncols, 0.9))
        ax.axis("off")
        ax.text(0.5, 0.3, "none to show", ha="center", va="center", fontsize=9)
        fig.suptitle(title, fontsize=9)
        return fig
    nrows = max(1, math.ceil(len(tiles) / ncols))
    lines = max((str(c).count("\n") + 1 for c in captions if c), default=1)
    caption_room = 0.13 * lines  # inches above each tile for its caption
    height = (1.9 + caption_room) * nrows + 0.4
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.9 * ncols, height), squeeze=False)
    # fixed margins: tight_layout costs more than the whole CAM pass on small grids
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - (0.4 + caption_room) / height, wspace=0.05,
                        hspace=caption_room / 1.9 + 0.05)
    for ax in axes.flat:
        ax.axis("off")
    for ax, tile, caption in zip(axes.flat, tiles, captions):
        if tile is not None:
            ax.imshow(tile)
            ax.set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def leak_pairs_figure(pairs: pd.DataFrame, n: int = 12):
    """The leak guard's matched pairs, closest first: each external photo beside the competition photo it matched,
    captioned with the descriptor distance and the photo-hash bits apart."""
    from mcls.data.images import BadImageError, load_resized

    def tile(path):
        try:
            return load_resized(path, 128)
        except BadImageError:
            return None

    shown = pairs.head(n)
    tiles, captions = [], []
    for r in shown.itertuples():
        tiles += [tile(r.external), tile(r.competition)]
        captions += [f"{Path(r.external).name[:26]}\n{r.match}: d {r.distance:.2f}, {r.hash_bits} bits",
                     f"{Path(r.competition).parent.name[:26]}\n{Path(r.competition).name[:26]}"]
    return image_grid(tiles, captions, ncols=4,
                      title=f"leak guard: {len(pairs)} external faces matched a competition photo "
                            f"({len(shown)} closest shown)")


def nearest_distance_figure(nearest: np.ndarray, threshold: float):
    """Each external face's descriptor distance to its nearest competition face, with the leak guard's threshold:
    copies of a competition photo sit near 0, other photos of the same person below the threshold, strangers
    above it."""
    finite = nearest[np.isfinite(nearest)]
    return cut_histogram(finite, np.linspace(0, max(1.0, float(finite.max(initial=0))), 60), threshold,
                         f"threshold {threshold:g}",
                         "distance to the nearest competition face (dlib descriptors, unit length)", "external faces")
