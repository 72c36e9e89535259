"""Where a notebook leaves its evidence: PNG figures and a metrics.json under <run_dir>/<notebook>/."""
from __future__ import annotations

import json
from pathlib import Path

from mcls.analysis.plots import save
from mcls.io import write_json


class NotebookOutputs:
    """Figures and key numbers of one notebook, so a headless run leaves what an interactive one shows."""

    def __init__(self, run_dir: str | Path, notebook: str):
        self.dir = Path(run_dir) / notebook
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.json"

    def figure(self, fig, name: str):
        """Saves `fig` as <name>.png and returns it, so the notebook still displays it."""
        save(fig, self.dir / f"{name}.png")
        return fig

    def metrics(self, **values) -> dict:
        """Merges `values` into metrics.json (written atomically) and returns the whole dict."""
        current = json.loads(self.metrics_path.read_text()) if self.metrics_path.exists() else {}
        current.update(values)
        write_json(self.metrics_path, current)
        return current


def use_project_root() -> Path:
    """Notebooks opened from notebooks/ in Jupyter work from the project root, as they do under `mcls pipeline`."""
    import os

    here = Path.cwd()
    if here.name == "notebooks" and (here.parent / "mcls").is_dir():
        os.chdir(here.parent)
    return Path.cwd()
