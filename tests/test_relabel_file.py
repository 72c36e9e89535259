import pandas as pd
import pytest

from mcls.data.table import DataError, load_train_table


def test_latest_decision_wins_and_nothing_else_changes(sample_copy, tmp_path):
    base = load_train_table(sample_copy)
    pid, other = base["person"].unique()[:2]
    old_gender = base.loc[base["person"] == pid, "gender"].iloc[0]
    new_gender = ("male", "female")[1 - old_gender]
    relabels = tmp_path / "relabel.csv"
    pd.DataFrame([
        {"id": pid, "field": "gender", "new": ("male", "female")[old_gender], "reason": "first look"},
        {"id": pid, "field": "gender", "new": new_gender, "reason": "second look"},
        {"id": other, "field": "swap_normal_incorrect", "new": "true", "reason": "files swapped"},
    ]).to_csv(relabels, index=False)
    csv_before = (sample_copy / "train" / "train.csv").read_bytes()
    t = load_train_table(sample_copy, relabel_file=relabels)
    assert (sample_copy / "train" / "train.csv").read_bytes() == csv_before  # originals untouched
    assert (t.loc[t["person"] == pid, "gender"] == 1 - old_gender).all()
    o = t["person"] == other
    assert (t.loc[o & (t["stem"] == "normal"), "mask"] == 1).all()
    assert (t.loc[o & (t["stem"] == "incorrect_mask"), "mask"] == 2).all()
    untouched = ~t["person"].isin([pid, other])
    assert t[untouched].equals(base[untouched])


def test_bad_relabels_are_listed(sample_dir, tmp_path):
    relabels = tmp_path / "relabel.csv"
    pd.DataFrame([{"id": "nobody", "field": "gender", "new": "male"},
                  {"id": "000001", "field": "age", "new": "old"}]).to_csv(relabels, index=False)
    with pytest.raises(DataError, match="relabel.csv"):
        load_train_table(sample_dir, relabel_file=relabels)
    pd.DataFrame([{"id": "x", "field": "race", "new": "y"}]).to_csv(relabels, index=False)
    with pytest.raises(DataError, match="field 'race'"):
        load_train_table(sample_dir, relabel_file=relabels)
