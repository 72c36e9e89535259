"""Builds a small sample in the competition layout from a full data folder (how data/sample was made)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from mcls.data.table import load_eval_table, read_persons
from mcls.labels import GENDERS, age_band


def make_sample(src: str | Path, dst: str | Path, persons_per_cell: int = 8, eval_images: int = 21,
                seed: int = 0) -> pd.DataFrame:
    """Copies `persons_per_cell` persons of each gender x age-band cell (non-.jpg persons first, so mixed
    extensions are covered) and the first `eval_images` rows of eval/info.csv. Refuses to overwrite `dst`."""
    src, dst = Path(src), Path(dst)
    if (dst / "train" / "train.csv").exists():
        raise FileExistsError(f"{dst} already holds a sample; remove it first")
    persons = read_persons(src)
    rng = np.random.default_rng(seed)
    persons["cell"] = persons["gender"].map(GENDERS.index) * 3 + age_band(persons["age"])
    persons["ext"] = [next((src / "train" / "images" / p).iterdir()).suffix.lower() for p in persons["path"]]
    picked = []
    for _, group in persons.groupby("cell"):
        order = rng.permutation(len(group))
        group = group.iloc[order]
        group = pd.concat([group[group["ext"] != ".jpg"][:2], group[group["ext"] == ".jpg"]])
        picked.append(group.head(persons_per_cell))
    chosen = pd.concat(picked).sort_values("id")
    for p in chosen["path"]:
        shutil.copytree(src / "train" / "images" / p, dst / "train" / "images" / p)
    chosen[["id", "gender", "race", "age", "path"]].to_csv(dst / "train" / "train.csv", index=False)
    info = load_eval_table(src).head(eval_images)
    (dst / "eval" / "images").mkdir(parents=True, exist_ok=True)
    for i in info["ImageID"]:
        shutil.copy2(src / "eval" / "images" / i, dst / "eval" / "images" / i)
    pd.DataFrame({"ImageID": info["ImageID"], "ans": 0}).to_csv(dst / "eval" / "info.csv", index=False)
    return chosen
