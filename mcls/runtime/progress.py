"""Progress bars that suit a terminal, Jupyter and a log alike."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

from mcls.runtime import distributed


def progress(iterable, **kwargs):
    """tqdm that redraws rarely when nobody watches a terminal (CI logs, papermill), so logs stay short."""
    interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
    return tqdm(iterable, mininterval=0.5 if interactive else 30, leave=False, disable=not distributed.is_main(),
                **kwargs)
