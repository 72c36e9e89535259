"""The review side of notebook 01: a person's image strip, and keep / accept / set buttons per queued label."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mcls.analysis.plots import image_grid
from mcls.analysis.relabel import person_strip
from mcls.analysis.relabel_decisions import decide
from mcls.data.images import load_resized


def strip_figure(table: pd.DataFrame, person: str, probs: np.ndarray | None = None, age_bounds=(30, 60),
                 title: str = ""):
    """One person's seven images in file order, captioned with the given and the predicted labels."""
    strip = person_strip(table, person, probs, age_bounds)
    captions = []
    for r in strip.itertuples(index=False):
        # one short line each: a 7-tile strip leaves ~30 characters per caption before neighbours overlap
        given = f"{r.stem}\ngiven {r.given_mask}, {r.given_gender}, {r.given_age}"
        pred = f"\npred {r.pred_mask}, {r.pred_gender}, {r.pred_age}" if "pred_mask" in strip else ""
        captions.append(given + pred)
    tiles = [load_resized(p, 128) for p in strip["path"]]
    return image_grid(tiles, captions, ncols=7, title=title or f"person {person}")


def review_widget(queue: pd.DataFrame, table: pd.DataFrame, probs: np.ndarray | None, relabel_path: str | Path,
                  age_bounds=(30, 60), n: int = 10):
    """ipywidgets panel over the first `n` queue rows; each button appends one decision to `relabel_path`."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    panels = []
    for row in queue.head(n).to_dict("records"):
        out = widgets.Output()
        with out:
            fig = strip_figure(table, row["person"], probs, age_bounds,
                               title=f"{row['person']}: {row['field']} given {row['given']}, suggested "
                                     f"{row['suggested']} (score {row['score']:.2f}; {row['reason']})")
            display(fig)
            plt.close(fig)
        value = widgets.Text(placeholder="value for 'set'", layout=widgets.Layout(width="160px"))
        status = widgets.Label()
        buttons = [widgets.Button(description=a) for a in ("keep", "accept", "set")]

        def on_click(button, row=row, value=value, status=status):
            try:
                written = decide(relabel_path, row, button.description, value.value or None)
                status.value = f"recorded: {written['field']} {written['old']} -> {written['new']}"
            except ValueError as err:
                status.value = f"not recorded: {err}"

        for b in buttons:
            b.on_click(on_click)
        panels.append(widgets.VBox([out, widgets.HBox([*buttons, value, status])]))
    return widgets.VBox(panels) if panels else widgets.Label("the queue is empty")
