from pathlib import Path

import pytest

from mcls.data.folds import assign_folds, split
from mcls.data.table import load_train_table

UTK = Path(__file__).resolve().parents[2] / "shared" / "data" / "utkmask"


def check_folds(table, n_folds):
    folds = assign_folds(table, n_folds, seed=7)
    # no person in two folds
    assert (table.assign(fold=folds).groupby("person")["fold"].nunique() == 1).all()
    persons = table.assign(fold=folds).drop_duplicates("person")
    cells = persons.groupby("fold").apply(lambda d: set(zip(d["gender"], d["age_band"])), include_groups=False)
    assert len(cells) == n_folds and all(c == {(g, a) for g in range(2) for a in range(3)} for c in cells)
    # unique persons per fold add up: nothing drawn twice, nothing lost
    assert persons.groupby("fold").size().sum() == table["person"].nunique()
    return folds


def test_sample_folds(sample_dir):
    check_folds(load_train_table(sample_dir), 4)


@pytest.mark.skipif(not UTK.exists(), reason="../shared/data/utkmask not present")
def test_full_stand_in_folds():
    check_folds(load_train_table(UTK), 5)


def test_split_is_seeded_and_disjoint(sample_dir):
    t = load_train_table(sample_dir)
    tr, va = split(t, 1, 4, seed=3)
    assert not set(tr["person"]) & set(va["person"]) and len(tr) + len(va) == len(t)
    assert assign_folds(t, 4, 3).equals(assign_folds(t, 4, 3))
