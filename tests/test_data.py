from pathlib import Path

import pandas as pd
import pytest

from mcls.data.table import DataError, load_eval_table, load_train_table


def test_sample_table(sample_dir):
    t = load_train_table(sample_dir)
    assert len(t) == 48 * 7 and t["person"].nunique() == 48
    assert (t.groupby("person").size() == 7).all()
    assert all(sorted(m) == [0, 0, 0, 0, 0, 1, 2] for _, m in t.groupby("person")["mask"])
    assert {Path(p).suffix for p in t["path"]} == {".jpg", ".jpeg", ".png"}  # mixed extensions parsed
    assert (t["label"] == 6 * t["mask"] + 3 * t["gender"] + t["age_band"]).all()
    assert set(t["label"]) == set(range(18))


def test_labels_follow_the_folder(sample_dir):
    t = load_train_table(sample_dir)
    row = t[t["stem"] == "incorrect_mask"].iloc[0]
    gender, age = Path(row["path"]).parent.name.split("_")[1], int(Path(row["path"]).parent.name.split("_")[3])
    assert row["mask"] == 1 and row["gender"] == ("male", "female").index(gender) and row["age"] == age


def test_training_threshold_moves_training_targets_only(sample_dir):
    base = load_train_table(sample_dir)
    moved = load_train_table(sample_dir, train_old_age=58)
    assert (moved["label"] == base["label"]).all() and (moved["age_band"] == base["age_band"]).all()
    changed = moved["age_band_train"] != base["age_band_train"]
    assert set(moved.loc[changed, "age"]) <= {58, 59}
    assert (moved.loc[moved["age"].isin([58, 59]), "age_band_train"] == 2).all()


def test_hidden_files_are_ignored(sample_copy):
    person = next((sample_copy / "train" / "images").iterdir())
    (person / "._mask1.jpg").write_bytes(b"\0\0")
    (person / ".DS_Store").write_bytes(b"x")
    assert len(load_train_table(sample_copy)) == 48 * 7


def _rewrite_csv(root, edit):
    csv = root / "train" / "train.csv"
    df = pd.read_csv(csv, dtype=str)
    edit(df).to_csv(csv, index=False)


def test_csv_problems_are_all_listed(sample_copy):
    def edit(df):
        df.loc[0, "gender"] = "unknown"
        df.loc[1, "age"] = "forty"
        df.loc[2, "age"] = "150"
        df.loc[3, "id"] = df.loc[4, "id"]
        return df

    _rewrite_csv(sample_copy, edit)
    with pytest.raises(DataError) as err:
        load_train_table(sample_copy)
    msg = str(err.value)
    assert "train.csv" in msg and len(err.value.problems) == 4
    assert "'unknown'" in msg and "'forty'" in msg and "150" in msg and "appears on rows" in msg


def test_missing_column(sample_copy):
    _rewrite_csv(sample_copy, lambda df: df.drop(columns=["age"]))
    with pytest.raises(DataError, match="missing column"):
        load_train_table(sample_copy)


def test_missing_and_extra_images_and_folders(sample_copy):
    people = sorted((sample_copy / "train" / "images").iterdir())
    next(people[0].glob("mask3.*")).unlink()
    (people[1] / "mask6.jpg").write_bytes(next(people[1].glob("mask1.*")).read_bytes())
    people[2].rename(people[2].with_name("elsewhere"))
    with pytest.raises(DataError) as err:
        load_train_table(sample_copy)
    msg = str(err.value)
    assert "missing image mask3" in msg and "mask6.jpg: extra image" in msg and "folder does not exist" in msg


def test_eval_table_keeps_info_order(sample_dir):
    info = pd.read_csv(sample_dir / "eval" / "info.csv")
    t = load_eval_table(sample_dir)
    assert list(t["ImageID"]) == list(info["ImageID"]) and all(Path(p).is_file() for p in t["path"])


def test_eval_problems(sample_copy):
    info = pd.read_csv(sample_copy / "eval" / "info.csv")
    info.loc[len(info)] = [info["ImageID"][0], 0]
    info.loc[len(info)] = ["nope.jpg", 0]
    info.to_csv(sample_copy / "eval" / "info.csv", index=False)
    with pytest.raises(DataError) as err:
        load_eval_table(sample_copy)
    assert "appears 2 times" in str(err.value) and "nope.jpg does not exist" in str(err.value)


def test_empty_data_dir(tmp_path):
    with pytest.raises(DataError, match="file not found") as err:
        load_train_table(tmp_path)
    assert "train/train.csv" in str(err.value)
