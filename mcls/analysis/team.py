"""A team's files, looked at: the eval images on which two submissions disagree, with both answers."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from mcls.analysis.plots import image_grid
from mcls.data.images import load_resized
from mcls.infer.vote import answers_file, disagreements
from mcls.labels import class_names


def disagreement_strip(a: str | Path, b: str | Path, info: pd.DataFrame, n: int = 16):
    """A grid of up to `n` eval images that A and B answer differently, each captioned with both answers (the
    competition's class names)."""
    d = disagreements(a, b, info)
    ans_a, ans_b = d["a"], d["b"]
    names = class_names((30, 60))
    rows = d["rows"][:n]
    tiles = [load_resized(info["path"].iloc[i], 128) for i in rows]
    captions = [f"A {names[ans_a[i]]}\nB {names[ans_b[i]]}" for i in rows]
    title = (f"{d['n']} of {d['of']} eval images answered differently (first {len(rows)} shown); "
             f"A = {Path(answers_file(a)).name}, B = {Path(answers_file(b)).parent.name}/{Path(answers_file(b)).name}")
    return image_grid(tiles, captions, ncols=8, title=title)
