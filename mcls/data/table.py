"""The competition layout -> one image table (one row per image), with every problem reported at once."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mcls.errors import UserError
from mcls.labels import FILE_MASK, GENDERS, IMAGE_EXTENSIONS, age_band, encode

TRAIN_COLUMNS = ("id", "gender", "race", "age", "path")
RELABEL_FIELDS = ("gender", "age", "swap_normal_incorrect")
MIN_AGE, MAX_AGE = 0, 120


class DataError(UserError):
    """Bad input data; the message names the file and lists every problem found."""

    def __init__(self, where: str | Path, problems: list[str]):
        self.where, self.problems = str(where), list(problems)
        shown = self.problems[:50]
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{where}: {len(self.problems)} problem(s):\n  " + "\n  ".join(shown) + more)


def _is_hidden(name: str) -> bool:
    # macOS leaves '._mask1.jpg' resource forks next to images; the competition data carried them.
    return name.startswith(".")


def read_persons(data_dir: str | Path) -> pd.DataFrame:
    """Reads and validates `train/train.csv`: one row per person (id kept as a string)."""
    csv = Path(data_dir) / "train" / "train.csv"
    if not csv.is_file():
        raise DataError(csv, [f"file not found (is data_dir={str(data_dir)!r} a competition-layout folder?)"])
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(csv, [f"not a readable CSV: {err}"]) from err
    missing = [c for c in TRAIN_COLUMNS if c not in df.columns and c != "race"]
    if missing:
        raise DataError(csv, [f"missing column(s) {missing}; expected {list(TRAIN_COLUMNS)}"])
    if df.empty:
        raise DataError(csv, ["no persons listed"])
    problems = []
    ages = pd.to_numeric(df["age"], errors="coerce")
    for i, row in df.iterrows():
        line = f"row {i + 2} (id {row['id']!r})"
        if row["gender"].strip().lower() not in GENDERS:
            problems.append(f"{line}: gender {row['gender']!r} is not one of {GENDERS}")
        if np.isnan(ages[i]):
            problems.append(f"{line}: age {row['age']!r} is not a number")
        elif not MIN_AGE <= ages[i] <= MAX_AGE:
            problems.append(f"{line}: age {ages[i]:g} is outside {MIN_AGE}-{MAX_AGE}")
    for pid in df.loc[df["id"].duplicated(), "id"].unique():
        rows = [str(i + 2) for i in df.index[df["id"] == pid]]
        problems.append(f"id {pid!r} appears on rows {', '.join(rows)}")
    for path in df.loc[df["path"].duplicated(), "path"].unique():
        problems.append(f"path {path!r} is listed more than once")
    if problems:
        raise DataError(csv, problems)
    df = df.copy()
    df["gender"] = df["gender"].str.strip().str.lower()
    df["age"] = ages.astype(int)
    if "race" not in df.columns:
        df["race"] = ""
    return df[list(TRAIN_COLUMNS)]


def person_images(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Maps each of a person's seven file stems to its image; returns (found, problems)."""
    found, problems = {}, []
    if not folder.is_dir():
        return found, [f"{folder}: folder does not exist"]
    for f in sorted(folder.iterdir()):
        if _is_hidden(f.name) or f.is_dir():
            continue
        stem, ext = f.stem, f.suffix.lower()
        if ext not in IMAGE_EXTENSIONS:
            problems.append(f"{f}: unexpected file (images are {', '.join(IMAGE_EXTENSIONS)})")
        elif stem not in FILE_MASK:
            problems.append(f"{f}: extra image; expected only {', '.join(FILE_MASK)}")
        elif stem in found:
            problems.append(f"{f}: second file for {stem!r} beside {found[stem].name}")
        else:
            found[stem] = f
    for stem in FILE_MASK:
        if stem not in found:
            problems.append(f"{folder}: missing image {stem}.<{'|'.join(e[1:] for e in IMAGE_EXTENSIONS)}>")
    return found, problems


def load_train_table(data_dir: str | Path, age_bounds=(30, 60), train_old_age: int | None = None,
                     relabel_file: str | Path | None = None) -> pd.DataFrame:
    """One row per training image: person, path, stem, mask, gender, age, race, age_band, label, age_band_train.

    `age_band` and `label` use `age_bounds` and are what validation scores against; `age_band_train` moves only
    the oldest band's edge to `train_old_age` and is used solely as a training target. With a `relabel_file`
    the labels are the decided ones and the data's own are kept beside them as given_<column> (see `as_given`).
    """
    data_dir = Path(data_dir)
    persons = given = read_persons(data_dir)
    if relabel_file:
        persons = apply_relabels(given, read_relabels(relabel_file))
    swapped = set(persons.loc[persons["swap_normal_incorrect"], "id"]) if "swap_normal_incorrect" in persons else set()
    image_root = data_dir / "train" / "images"
    rows, problems, mixed = [], [], []
    for p in persons.itertuples(index=False):
        found, person_problems = person_images(image_root / p.path)
        problems += person_problems
        if len({f.suffix.lower() for f in found.values()}) > 1:
            mixed.append(p.path)
        for stem, path in found.items():
            mask = FILE_MASK[stem]
            if p.id in swapped and mask in (1, 2):
                mask = 3 - mask  # a relabel decision said these two files were swapped
            rows.append((p.id, str(path), stem, mask, GENDERS.index(p.gender), p.age, p.race))
    if problems:
        raise DataError(image_root, problems)
    if mixed:
        # Readable as they are, but usually a sign of files copied in from elsewhere: say so, do not stop.
        warnings.warn(f"{image_root}: {len(mixed)} person folder(s) mix file extensions: {mixed[:10]}", stacklevel=2)
    df = pd.DataFrame(rows, columns=["person", "path", "stem", "mask", "gender", "age", "race"])
    old = train_old_age if train_old_age is not None else age_bounds[1]
    add_bands(df, "", age_bounds, old)
    if relabel_file:  # the data's own labels, from train.csv and the file names alone
        own = given.set_index("id").loc[df["person"]]
        df["given_mask"] = df["stem"].map(FILE_MASK).to_numpy()
        df["given_gender"] = own["gender"].map(GENDERS.index).to_numpy()
        df["given_age"] = own["age"].to_numpy()
        add_bands(df, "given_", age_bounds, old)
    return df


def add_bands(df: pd.DataFrame, prefix: str, age_bounds, train_old_age: int) -> None:
    """<prefix>age_band, label and age_band_train from <prefix>mask, gender and age."""
    age = df[f"{prefix}age"]
    df[f"{prefix}age_band"] = age_band(age, age_bounds)
    df[f"{prefix}label"] = encode(df[f"{prefix}mask"], df[f"{prefix}gender"], df[f"{prefix}age_band"])
    df[f"{prefix}age_band_train"] = age_band(age, (age_bounds[0], train_old_age))


LABEL_COLUMNS = ("mask", "gender", "age", "age_band", "label", "age_band_train")


def as_given(df: pd.DataFrame) -> pd.DataFrame:
    """The rows with the labels the data's files give, before relabel decisions: what validation scores, since
    the eval answers it stands for are never relabelled (a score on decided labels would flatter the decisions)."""
    if "given_label" not in df:
        return df
    return df.assign(**{col: df[f"given_{col}"] for col in LABEL_COLUMNS})


def load_eval_table(data_dir: str | Path) -> pd.DataFrame:
    """`eval/info.csv` in its own row order, with each image's path; every missing image is reported."""
    data_dir = Path(data_dir)
    csv = data_dir / "eval" / "info.csv"
    if not csv.is_file():
        raise DataError(csv, ["file not found"])
    info = pd.read_csv(csv, dtype=str, keep_default_na=False)
    if "ImageID" not in info.columns:
        raise DataError(csv, [f"missing column 'ImageID' (columns: {list(info.columns)})"])
    if info.empty:
        raise DataError(csv, ["lists no images (a header only); the competition's info.csv has one row per eval "
                              "image"])
    problems = [f"ImageID {i!r} appears {n} times" for i, n in info["ImageID"].value_counts().items() if n > 1]
    image_dir = data_dir / "eval" / "images"
    paths = [image_dir / i for i in info["ImageID"]]
    problems += [f"row {k + 2}: image {p} does not exist" for k, p in enumerate(paths) if not p.is_file()]
    if problems:
        raise DataError(csv, problems)
    return pd.DataFrame({"ImageID": info["ImageID"], "path": [str(p) for p in paths]})


def list_images(folder: str | Path) -> list[Path]:
    """Every image under `folder`, sorted, for predicting an arbitrary folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, ["folder does not exist"])
    out = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not _is_hidden(p.name))
    if not out:
        raise DataError(folder, [f"no images ({', '.join(IMAGE_EXTENSIONS)}) found"])
    return out


# ----------------------------------------------------------------------------------------------- relabeling
def read_relabels(path: str | Path) -> pd.DataFrame:
    """Relabel decisions (id, field, new, reason, ...); an append-only log, so later rows win."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, ["relabel file not found"])
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("id", "field", "new") if c not in df.columns]
    if missing:
        raise DataError(path, [f"missing column(s) {missing}"])
    bad = [f"row {i + 2}: field {f!r} is not one of {RELABEL_FIELDS}" for i, f in enumerate(df["field"])
           if f not in RELABEL_FIELDS]
    if bad:
        raise DataError(path, bad)
    df.attrs["source"] = str(path)
    return df


def decision_value(field: str, value, allow_empty: bool = False) -> str:
    """A relabel decision's value in its stored form, or ValueError saying what is wrong. The one validator of
    decisions: applied when a decision is written and again when the file is read, so a hand-edited file cannot
    carry what the kit would refuse to write."""
    if field not in RELABEL_FIELDS:
        raise UserError(f"field {field!r} is not one of {RELABEL_FIELDS}")
    v = "" if value is None or (isinstance(value, float) and value != value) else str(value).strip().lower()
    if allow_empty and v == "":
        return v
    if field == "gender" and v not in GENDERS:
        raise UserError(f"gender {value!r} is not one of {GENDERS}")
    if field == "swap_normal_incorrect" and v not in ("true", "false"):
        raise UserError(f"swap_normal_incorrect must be true or false, got {value!r}")
    if field == "age":
        try:
            age = float(v)
        except ValueError:
            raise UserError(f"age {value!r} is not a number") from None
        if not 0 <= age <= 120 or age != int(age):
            raise UserError(f"age {value!r} is not a whole number of years in 0..120")
        v = str(int(age))
    return v


def apply_relabels(persons: pd.DataFrame, relabels: pd.DataFrame) -> pd.DataFrame:
    """Applies the latest decision per (person, field) to a copy of the person table; files are never touched."""
    source = relabels.attrs.get("source", "relabels")
    out = persons.copy()
    out["swap_normal_incorrect"] = False
    index = {pid: i for i, pid in zip(out.index, out["id"])}
    latest = relabels.drop_duplicates(["id", "field"], keep="last")
    problems = []
    for k, r in latest.iterrows():
        where = f"row {k + 2} (id {r['id']!r}, field {r['field']!r})"
        if r["id"] not in index:
            problems.append(f"{where}: no such person in train.csv")
            continue
        try:
            value = decision_value(r["field"], r["new"])
        except ValueError as err:
            problems.append(f"{where}: {err}")
            continue
        if r["field"] == "gender":
            out.loc[index[r["id"]], "gender"] = value
        elif r["field"] == "age":
            out.loc[index[r["id"]], "age"] = int(value)
        else:
            out.loc[index[r["id"]], "swap_normal_incorrect"] = value == "true"
    if problems:
        raise DataError(source, [*problems, "fix or delete these rows (later rows win, so a corrected row appended "
                                            "after a wrong one also works)"])
    return out


# ----------------------------------------------------------------------------------------------- fingerprint
def data_fingerprint(table: pd.DataFrame) -> str:
    """A short hash of the image list (with file sizes) and the labels after relabeling."""
    h = hashlib.sha256()
    for row in table.sort_values("path").itertuples(index=False):
        size = Path(row.path).stat().st_size
        h.update(f"{Path(row.path).name}|{Path(row.path).parent.name}|{size}|{row.label}|{row.age}\n".encode())
    return h.hexdigest()[:16]
