"""Progress bars that read well where they are seen: a terminal, a live notebook, an executed notebook, a log.

- Terminal: a tqdm bar redrawn in place, cleared when its loop ends.
- Jupyter kernel (live, or executed by papermill): one output line updated in place through a display id. A live
  notebook watches it move; an executed one stores the last update, so a finished loop never reads "0%" (tqdm's
  widget bar keeps its first state in a saved notebook). Cleared when the loop ends.
- Anything else (a CI log, `nohup`): no bar; the per-epoch and per-step log lines say what happened.
Loops shorter than `delay` seconds never show a bar.
"""
from __future__ import annotations

import io
import sys

from tqdm.std import tqdm

from mcls.runtime import distributed


def in_kernel() -> bool:
    """True inside a Jupyter kernel (JupyterLab, VS Code, papermill), where stderr is not a terminal either."""
    if "ipykernel" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


class OutputLineBar(tqdm):
    """A tqdm whose bar is one notebook output line, updated in place (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        self._handle = None
        super().__init__(*args, file=io.StringIO(), **kwargs)

    def display(self, msg=None, pos=None):
        from IPython.display import display

        text = {"text/plain": self.format_meter(**self.format_dict) if msg is None else msg}
        if self._handle is None:
            if not text["text/plain"]:
                return True
            self._handle = display(text, raw=True, display_id=True)
        else:
            self._handle.update(text, raw=True)
        return True


def progress(iterable, desc: str = "", total: int | None = None, delay: float = 2.0):
    """`iterable` with a progress bar suited to where it is watched; on other ranks than the first, no bar."""
    if not distributed.is_main():
        return iterable
    if in_kernel():
        return OutputLineBar(iterable, desc=desc, total=total, leave=False, mininterval=0.5, delay=delay)
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, leave=False, mininterval=0.5, delay=delay)
    return iterable
