"""External face-age data: photos with an age and a gender but no mask state, read into one table (path, age,
gender, race) from a `path,age,gender` CSV or straight from UTKFace-style file names, with every problem reported
at once before any long work starts.

UTKFace names a file `<age>_<gender>_<race>_<date&time>.jpg`, gender 0 male / 1 female (the kit's own order) and race
0-4 White, Black, Asian, Indian, Others.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from mcls.data.table import MAX_AGE, MIN_AGE, DataError
from mcls.labels import GENDERS, IMAGE_EXTENSIONS

UTK_NAME = re.compile(r"^(?P<age>\d{1,3})_(?P<gender>[01])_(?P<race>[0-4])_\d+")
UTK_RACES = ("White", "Black", "Asian", "Indian", "Others")
COLUMNS = ("path", "age", "gender", "race")


def read_external(source: str | Path) -> pd.DataFrame:
    """One row per external photo: path (absolute), age (int), gender (0 male / 1 female), race ("" if unknown).

    `source` is a CSV with columns path, age, gender (race optional; paths relative to the CSV's folder, gender
    male / female or 0 / 1), or a folder whose images are named as UTKFace names them. Raises one DataError that
    names the file or folder and lists every unparseable name, missing file and age out of range.
    """
    source = Path(source)
    if source.is_dir():
        table, problems = _from_names(source)
    elif source.is_file():
        table, problems = _from_csv(source)
    else:
        raise DataError(source, ["external_data is neither a folder of images nor a CSV file; give a folder of "
                                 "UTKFace-named photos (<age>_<gender>_<race>_*.jpg) or a path,age,gender CSV"])
    if not problems:
        out_of_range = table[(table["age"] < MIN_AGE) | (table["age"] > MAX_AGE)]
        problems += [f"{Path(p).name}: age {a} is outside {MIN_AGE}-{MAX_AGE}"
                     for p, a in zip(out_of_range["path"], out_of_range["age"])]
    if not problems and table.empty:
        problems.append("no photos found: an external set needs at least one face with an age and a gender")
    if problems:
        raise DataError(source, problems)
    return table.reset_index(drop=True)


def parse_utk_name(name: str) -> dict | None:
    """{age, gender, race} from a UTKFace file name, or None when the name does not follow the pattern."""
    m = UTK_NAME.match(Path(name).name)
    if m is None:
        return None
    return {"age": int(m["age"]), "gender": int(m["gender"]), "race": UTK_RACES[int(m["race"])]}


def _from_names(folder: Path) -> tuple[pd.DataFrame, list[str]]:
    rows, bad = [], []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                       and not p.name.startswith(".")):
        parsed = parse_utk_name(path.name)
        if parsed is None:
            bad.append(path.relative_to(folder).as_posix())
        else:
            rows.append({"path": str(path.resolve()), **parsed})
    problems = [f"{name}: not a UTKFace name (<age>_<gender 0/1>_<race 0-4>_<date>.jpg); rename it or list the "
                f"photos in a path,age,gender CSV" for name in bad]
    return pd.DataFrame(rows, columns=list(COLUMNS)), problems


def _from_csv(csv: Path) -> tuple[pd.DataFrame, list[str]]:
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        return pd.DataFrame(columns=list(COLUMNS)), [f"not a readable CSV: {err}"]
    missing = [c for c in ("path", "age", "gender") if c not in df.columns]
    if missing:
        return pd.DataFrame(columns=list(COLUMNS)), [f"missing column(s) {missing}; expected path, age, gender "
                                                     f"(race optional)"]
    problems, rows = [], []
    for i, row in df.iterrows():
        line = f"row {i + 2} ({row['path']!r})"
        path = (csv.parent / row["path"]).resolve()
        gender = row["gender"].strip().lower()
        gender = GENDERS.index(gender) if gender in GENDERS else int(gender) if gender in ("0", "1") else None
        age = pd.to_numeric(row["age"], errors="coerce")
        found = [f"{line}: file not found"] * (not path.is_file()) \
            + [f"{line}: gender {row['gender']!r} is not one of {GENDERS} or 0 / 1"] * (gender is None) \
            + [f"{line}: age {row['age']!r} is not a number"] * bool(pd.isna(age))
        problems += found
        if not found:
            rows.append({"path": str(path), "age": int(age), "gender": gender, "race": row.get("race", "")})
    return pd.DataFrame(rows, columns=list(COLUMNS)), problems
