"""What a notebook leaves and shows: PNG figures and a metrics.json under <run_dir>/<notebook>/, each figure shown
once in the notebook, live in Jupyter and in a notebook executed headless alike."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from mcls.analysis.plots import save
from mcls.io import write_json


def setup_notebook() -> Path:
    """The first call of every notebook: works from the project root (as `mcls pipeline` does), draws figures
    inline even when the kernel inherited MPLBACKEND=Agg (papermill under `make`), and shows the package's log
    lines (one per epoch, one per step) as cell output."""
    here = Path.cwd()
    if here.name == "notebooks" and (here.parent / "mcls").is_dir():
        os.chdir(here.parent)
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")
    import pandas as pd

    pd.set_option("display.max_colwidth", 120)  # the relabel queue's reasons are read whole
    logger = logging.getLogger("mcls")
    if not any(getattr(h, "mcls_notebook", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.mcls_notebook = True
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return Path.cwd()


def show_png(path: str | Path) -> None:
    """Displays a saved PNG as the notebook output (nothing outside a notebook)."""
    from IPython import get_ipython

    if get_ipython() is not None:
        from IPython.display import Image, display

        display(Image(filename=str(path)))


class NotebookOutputs:
    """Figures and key numbers of one notebook, so a headless run leaves what an interactive one shows."""

    def __init__(self, run_dir: str | Path, notebook: str):
        self.dir = Path(run_dir) / notebook
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.json"

    def figure(self, fig, name: str) -> None:
        """Saves `fig` as <name>.png, closes it and shows the saved file: the notebook displays exactly the figure
        that was kept, once (an open figure would be drawn again by the inline backend at the end of the cell)."""
        show_png(save(fig, self.dir / f"{name}.png"))

    def forget(self, figure: str, *keys: str) -> None:
        """Removes what an earlier execution saved for a section this one skips (its figure, its metrics keys), so
        the folder holds this execution's evidence only."""
        (self.dir / f"{figure}.png").unlink(missing_ok=True)
        if keys and self.metrics_path.exists():
            current = json.loads(self.metrics_path.read_text())
            if any(k in current for k in keys):
                write_json(self.metrics_path, {k: v for k, v in current.items() if k not in keys})

    def metrics(self, **values) -> None:
        """Merges `values` into metrics.json (written atomically); says where, not the whole dict again."""
        current = json.loads(self.metrics_path.read_text()) if self.metrics_path.exists() else {}
        current.update(values)
        write_json(self.metrics_path, current)
        print(f"{len(values)} values saved to {self.metrics_path}")
