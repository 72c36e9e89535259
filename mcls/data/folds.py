"""Person-grouped, stratified K-fold: no person is ever on both sides of a split."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from mcls.data.table import as_given
from mcls.errors import UserError


def assign_folds(table: pd.DataFrame, n_folds: int = 5, seed: int = 42) -> pd.Series:
    """Fold number per image row, grouped by `person` and stratified on gender x age band as the data gives them:
    relabel decisions never move a person to another fold, so runs with and without them split alike."""
    persons = as_given(table.drop_duplicates("person"))
    if n_folds > len(persons):
        raise UserError(f"n_folds={n_folds} is more than the {len(persons)} persons in the data: each fold needs "
                        "its own persons; use fewer folds (5 is usual)")
    cell = persons["gender"] * 3 + persons["age_band"]
    small = cell.value_counts()
    small = small[small < n_folds]
    if len(small):
        warnings.warn(f"gender x age cells {small.to_dict()} have fewer persons than n_folds={n_folds}; "
                      "some folds will miss them", stacklevel=2)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of_person = {}
    for k, (_, val_idx) in enumerate(splitter.split(persons, cell, groups=persons["person"])):
        for pid in persons["person"].iloc[val_idx]:
            fold_of_person[pid] = k
    return table["person"].map(fold_of_person).astype(int).rename("fold")


def split(table: pd.DataFrame, fold: int, n_folds: int = 5, seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation) tables for one fold."""
    folds = assign_folds(table, n_folds, seed)
    return table[folds != fold].reset_index(drop=True), table[folds == fold].reset_index(drop=True)


def fold_summary(table: pd.DataFrame, folds: pd.Series) -> pd.DataFrame:
    """Persons per fold and gender x age cell: the table to look at before trusting a split."""
    persons = table.assign(fold=folds).drop_duplicates("person")
    cell = np.array(["male", "female"])[persons["gender"]] + " " + persons["age_band"].astype(str)
    return pd.crosstab(persons["fold"], cell, margins=True)
