"""External face-age data (mcls.data.external): UTKFace names and path,age,gender CSVs, every problem at once."""
import numpy as np
import pytest
from PIL import Image

from mcls.data.external import parse_utk_name, read_external
from mcls.data.table import DataError


def _photo(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(path)
    return path


def test_utkface_names_parse_into_age_gender_and_race():
    assert parse_utk_name("61_1_3_20170109142408075.jpg.chip.jpg") == {"age": 61, "gender": 1, "race": "Indian"}
    assert parse_utk_name("9_0_0_20170110220033115.jpg") == {"age": 9, "gender": 0, "race": "White"}
    for bad in ("61_2_3_2017.jpg", "61_1_3.jpg", "a_1_3_2017.jpg", "61_1_7_2017.jpg", "photo.jpg"):
        assert parse_utk_name(bad) is None, bad


def test_a_folder_of_utkface_names_reads_and_its_bad_names_are_all_listed(tmp_path):
    for name in ("25_0_1_20170116.jpg", "70_1_2_20170117.jpg", "sub/33_1_0_20170118.png"):
        _photo(tmp_path / "ok" / name)
    table = read_external(tmp_path / "ok")
    assert sorted(table["age"]) == [25, 33, 70] and set(table["gender"]) == {0, 1}
    assert all(p.startswith(str(tmp_path)) for p in table["path"])

    bad = tmp_path / "bad"
    _photo(bad / "25_0_1_20170116.jpg")
    _photo(bad / "holiday.jpg")
    _photo(bad / "25_3_1_20170116.jpg")
    (bad / "notes.txt").write_text("not an image, not listed")
    with pytest.raises(DataError) as err:
        read_external(bad)
    text = str(err.value)
    assert str(bad) in text and "2 problem(s)" in text and "holiday.jpg" in text and "25_3_1_20170116.jpg" in text


def test_a_csv_reads_relative_paths_and_names_every_bad_row(tmp_path):
    _photo(tmp_path / "img" / "a.jpg")
    _photo(tmp_path / "img" / "b.jpg")
    csv = tmp_path / "faces.csv"
    csv.write_text("path,age,gender\nimg/a.jpg,64,female\nimg/b.jpg,20,0\n")
    table = read_external(csv)
    assert table["age"].tolist() == [64, 20] and table["gender"].tolist() == [1, 0]

    csv.write_text("path,age,gender\nimg/a.jpg,old,female\nimg/missing.jpg,30,male\nimg/b.jpg,30,other\n")
    with pytest.raises(DataError) as err:
        read_external(csv)
    text = str(err.value)
    assert "3 problem(s)" in text and "row 2" in text and "'old'" in text and "row 3" in text
    assert "file not found" in text and "'other'" in text
    csv.write_text("file,years\nimg/a.jpg,3\n")
    with pytest.raises(DataError, match="missing column"):
        read_external(csv)


def test_ages_out_of_range_an_empty_set_and_a_wrong_path_are_refused(tmp_path):
    _photo(tmp_path / "old" / "130_0_0_20170101.jpg")
    with pytest.raises(DataError, match="age 130 is outside"):
        read_external(tmp_path / "old")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no photos found"):
        read_external(tmp_path / "empty")
    with pytest.raises(DataError, match="neither a folder of images nor a CSV"):
        read_external(tmp_path / "nowhere")
