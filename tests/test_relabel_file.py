import pandas as pd
import pytest

from mcls.data.table import DataError, as_given, load_train_table


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
    assert t.loc[untouched, base.columns].equals(base[untouched])
    assert as_given(t)[base.columns].equals(base)  # the data's own labels stay beside the decided ones


def test_validation_scores_the_given_labels_and_training_the_decided_ones(tiny_cfg, tmp_path):
    from mcls.data.folds import assign_folds
    from mcls.train.run import train

    base = load_train_table(tiny_cfg.data_dir)
    folds = assign_folds(base, tiny_cfg.n_folds, tiny_cfg.seed)
    val_person = base.loc[folds == 0, "person"].iloc[0]
    train_person = base.loc[folds != 0, "person"].iloc[0]
    relabels = tmp_path / "relabel.csv"
    pd.DataFrame([{"id": p, "field": "age", "new": "99", "reason": "test"}
                  for p in (val_person, train_person)]).to_csv(relabels, index=False)
    cfg = tiny_cfg.updated({"relabel_file": str(relabels)})
    train(cfg)
    decided = load_train_table(cfg.data_dir, relabel_file=relabels)
    assert assign_folds(decided, cfg.n_folds, cfg.seed).equals(folds)  # decisions move nobody to another fold
    pred = pd.read_csv(f"{cfg.run_dir}/fold0/val_predictions.csv", dtype={"person": str})
    scored = pred.loc[pred["person"] == val_person, "label"]
    assert len(scored) and (scored.to_numpy() == base.loc[base["person"] == val_person, "label"].to_numpy()).all()
    assert (decided.loc[decided["person"] == train_person, "age_band"] == 2).all()  # what training learnt from


def test_bad_relabels_are_listed(sample_dir, tmp_path):
    relabels = tmp_path / "relabel.csv"
    pd.DataFrame([{"id": "nobody", "field": "gender", "new": "male"},
                  {"id": "000001", "field": "age", "new": "old"}]).to_csv(relabels, index=False)
    with pytest.raises(DataError, match="relabel.csv"):
        load_train_table(sample_dir, relabel_file=relabels)
    pd.DataFrame([{"id": "x", "field": "race", "new": "y"}]).to_csv(relabels, index=False)
    with pytest.raises(DataError, match="field 'race'"):
        load_train_table(sample_dir, relabel_file=relabels)
