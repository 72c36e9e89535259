"""Exploratory tables and figures for notebook 00: what is in the data before any model sees it."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from PIL import Image

from mcls.data.images import load_resized
from mcls.data.table import person_images, read_persons
from mcls.labels import GENDERS, MASK_STATES, age_band, age_band_names, class_names


def folder_problems(data_dir: str | Path) -> pd.DataFrame:
    """Persons whose folder has missing, extra or unreadable-type files (without stopping at the first)."""
    persons = read_persons(data_dir)
    rows = []
    for p in persons.itertuples(index=False):
        _, problems = person_images(Path(data_dir) / "train" / "images" / p.path)
        rows += [{"person": p.id, "problem": msg} for msg in problems]
    return pd.DataFrame(rows, columns=["person", "problem"])


def class_counts(table: pd.DataFrame, age_bounds=(30, 60)) -> pd.DataFrame:
    """Images and persons per class (0..17)."""
    names = class_names(age_bounds)
    counts = table.groupby("label").agg(images=("path", "size"), persons=("person", "nunique"))
    counts = counts.reindex(range(18), fill_value=0)
    counts.insert(0, "class", [names[k] for k in counts.index])
    return counts


def gender_age_crosstab(table: pd.DataFrame, age_bounds=(30, 60)) -> pd.DataFrame:
    persons = table.drop_duplicates("person")
    return pd.crosstab(persons["gender"].map(dict(enumerate(GENDERS))),
                       persons["age_band"].map(dict(enumerate(age_band_names(age_bounds)))), margins=True)


def file_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Counts of (extension, width x height, mode) over all images; reads headers only."""
    stats = Counter()
    for path in table["path"]:
        with Image.open(path) as im:
            stats[(Path(path).suffix.lower(), f"{im.width}x{im.height}", im.mode)] += 1
    return pd.DataFrame([(*k, n) for k, n in stats.most_common()], columns=["extension", "size", "mode", "images"])


def age_histogram(table: pd.DataFrame, age_bounds=(30, 60), train_old_age: int | None = None):
    persons = table.drop_duplicates("person")
    fig, ax = plt.subplots(figsize=(8, 3.5))
    sns.histplot(data=persons.assign(gender=persons["gender"].map(dict(enumerate(GENDERS)))), x="age",
                 hue="gender", binwidth=2, multiple="stack", ax=ax)
    for edge in age_bounds:
        ax.axvline(edge, color="k", ls="--", lw=1)
    if train_old_age is not None and train_old_age != age_bounds[1]:
        ax.axvline(train_old_age, color="r", ls=":", lw=1, label=f"training edge {train_old_age}")
        ax.legend()
    ax.set_title("persons by age (dashed: band edges)")
    return fig


def external_beside(table: pd.DataFrame, external: pd.DataFrame, age_bounds=(30, 60), min_age: int = 0):
    """(share of persons per gender x age band in the competition set and the external one, the figure of their
    age distributions by gender): what external faces would add, and where they differ (children, the old).
    `external` is a read_external table; faces under `min_age` are counted apart, as pretraining leaves them out."""
    persons = table.drop_duplicates("person")
    sets = {"competition": persons, "external": external[external["age"] >= min_age]}
    bands = age_band_names(age_bounds)
    rows = []
    for name, df in sets.items():
        cells = pd.crosstab(df["gender"].map(dict(enumerate(GENDERS))).rename("gender"),
                            pd.Series(pd.Categorical.from_codes(age_band(df["age"], age_bounds), bands),
                                      name="age band", index=df.index))
        rows.append(cells.stack().rename(f"{name} {'persons' if name == 'competition' else 'faces'}"))
    shares = pd.concat(rows, axis=1).fillna(0).astype(int)
    shares.loc[("all", f"under {min_age}"), :] = [0, int((external["age"] < min_age).sum())]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5), sharex=True)
    for ax, (name, df) in zip(axes, {"competition": persons, "external": external}.items()):
        sns.histplot(data=df.assign(gender=df["gender"].map(dict(enumerate(GENDERS)))), x="age", hue="gender",
                     hue_order=list(GENDERS), binwidth=2, multiple="stack", ax=ax)
        for edge in age_bounds:
            ax.axvline(edge, color="k", ls="--", lw=1)
        if name == "external" and min_age:
            ax.axvline(min_age, color="r", ls=":", lw=1, label=f"external_min_age {min_age}")
        ax.set_title(f"{name}: {len(df)} {'persons' if name == 'competition' else 'faces'} by age")
    fig.tight_layout()
    return shares.astype(int), fig


def class_grid(table: pd.DataFrame, per_class: int = 4, size: int = 96, age_bounds=(30, 60), seed: int = 0):
    """A grid with one row per class and `per_class` random images."""
    rng = np.random.default_rng(seed)
    names = class_names(age_bounds)
    fig, axes = plt.subplots(18, per_class, figsize=(per_class * 1.3, 18 * 1.3))
    for k in range(18):
        paths = table.loc[table["label"] == k, "path"].to_numpy()
        picks = rng.choice(paths, size=min(per_class, len(paths)), replace=False) if len(paths) else []
        for j in range(per_class):
            ax = axes[k, j]
            ax.axis("off")
            if j < len(picks):
                ax.imshow(load_resized(picks[j], size))
        axes[k, 0].set_title(f"{k}: {names[k]}", fontsize=7, loc="left")
    fig.tight_layout()
    return fig


def rgb_histograms(table: pd.DataFrame, per_state: int = 60, size: int = 64, seed: int = 0):
    """Mean per-channel intensity histograms per mask state (masks change the lower face's colours)."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3), sharey=True)
    for state, ax in enumerate(axes):
        paths = table.loc[table["mask"] == state, "path"].to_numpy()
        picks = rng.choice(paths, size=min(per_state, len(paths)), replace=False)
        pixels = np.stack([load_resized(p, size) for p in picks]).reshape(-1, 3)
        for c, color in enumerate("rgb"):
            ax.hist(pixels[:, c], bins=64, range=(0, 255), histtype="step", color=color, density=True)
        ax.set_title(f"{MASK_STATES[state]} ({len(picks)} images)")
        ax.set_xlabel("pixel intensity (0-255)")
    axes[0].set_ylabel("share of pixels (density)")
    axes[-1].legend(["red", "green", "blue"], fontsize=7)
    return fig


def race_counts(table: pd.DataFrame) -> pd.Series:
    persons = table.drop_duplicates("person")
    return persons["race"].replace("", "(none)").value_counts()
