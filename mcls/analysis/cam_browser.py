"""The interactive side of notebook 04: pick head, class, right/wrong and CAM method, see the overlays."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from mcls.analysis.cam import METHODS, cam_maps, overlay
from mcls.analysis.cam_inspect import _load_as_trained, head_class_names, validation_table
from mcls.analysis.plots import image_grid
from mcls.model.checkpoint import load_checkpoint
from mcls.runs.layout import Run


def cam_grid(run_dir: str | Path, table: pd.DataFrame, head: str, cls: int, correct: bool, method: str = "gradcam",
             n: int = 8, device: str = "cpu"):
    """A grid of up to `n` validation images of true class `cls` for `head`, predicted right or wrong, each with
    the CAM of its predicted class from its own fold's model. Returns the matplotlib figure."""
    rows = table[(table[f"{head}_true"] == cls) & ((table[f"{head}_pred"] == cls) == correct)].head(n)
    run = Run(run_dir)
    names = head_class_names(run.config.age_bounds)[head]
    tiles, captions = [], []
    for fold, part in rows.groupby("fold"):
        model, cfg = load_checkpoint(run.fold(fold).best, device)
        images = _load_as_trained(part["path"], cfg, device)
        maps = cam_maps(model, images, head, part[f"{head}_pred"].tolist(), method)
        tiles += [overlay(img, m) for img, m in zip(images, maps)]
        captions += [f"{p} pred {names[k]}" for p, k in zip(part["person"], part[f"{head}_pred"])]
    title = f"{head} = {names[cls]}, predicted {'right' if correct else 'wrong'} ({len(tiles)} shown)"
    return image_grid(tiles, captions, ncols=4, title=title)


def browser(run_dir: str | Path, data_dir: str | Path | None = None, n: int = 8):
    """Shows the first head's first class as a plain figure, then ipywidgets controls that redraw that figure in
    place. Returns the controls.

    No Output widget captures the grid: executed headless (papermill, nbclient), a cell that draws into one hangs
    now and then with both kernel and client idle (jupyter/nbclient#312, jupyter/nbconvert#2003), and a stalled
    CI run of this notebook was exactly that. A display id updated from the callbacks needs no capture."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    table = validation_table(run_dir, data_dir)
    names = head_class_names(Run(run_dir).config.age_bounds)  # the run's own band edges
    head = widgets.Dropdown(options=list(names), description="head")
    def options(h):
        return [(name, i) for i, name in enumerate(names[h])]

    cls = widgets.Dropdown(options=options("mask"), description="class")
    correct = widgets.ToggleButtons(options=[("wrong", False), ("right", True)], description="predicted")
    method = widgets.Dropdown(options=[m for m in METHODS if m not in ("scorecam", "random")], description="method")

    def grid():
        fig = cam_grid(run_dir, table, head.value, cls.value, correct.value, method.value, n)
        plt.close(fig)  # shown through the display handle only, not again by the inline backend
        return fig

    shown = display(grid(), display_id=True)  # the first grid is drawn at once, not when a control first changes

    def on_head(change):
        cls.options = options(change["new"])

    def redraw(_change):
        shown.update(grid())

    head.observe(on_head, names="value")
    for w in (head, cls, correct, method):
        w.observe(redraw, names="value")
    return widgets.VBox([widgets.HBox([head, cls]), widgets.HBox([correct, method])])
