"""Decisions about labels, recorded: an append-only relabel CSV that `data.load_train_table(relabel_file=...)`
applies, latest per (person, field); image files are never touched. Reviewers append under a lock, so a team
reviewing at once loses no row, and a bad value is refused before anything is written."""
from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

import pandas as pd

from mcls.data.table import DataError, decision_value
from mcls.errors import UserError
from mcls.io import atomic_path

RELABEL_COLUMNS = ["id", "field", "old", "new", "reason", "time"]


def record_decision(path: str | Path, person: str, field: str, old, new, reason: str = "") -> dict:
    """Appends one decision (id, field, old, new, reason, time) to the relabel CSV; returns the row written.

    The file is only ever extended: earlier rows stay byte for byte, and the rewrite is atomic (a crash leaves the
    old file or the new one). Values are checked first, so a bad decision never makes the file unloadable.
    """
    return record_decisions(path, [{"id": person, "field": field, "old": old, "new": new, "reason": reason}])[0]


def record_decisions(path: str | Path, decisions, persons=None) -> list[dict]:
    """Appends many decisions in one atomic write; returns the rows written (same checks as record_decision).
    With `persons` (the data's person ids), a decision about anyone else is refused before anything is written."""
    if persons is not None:
        known = set(map(str, persons))
        unknown = sorted({str(d["id"]) for d in decisions} - known)
        if unknown:
            raise DataError(path, [f"no such person in train.csv: {', '.join(unknown[:10])}; nothing was written"])
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    rows = [{"id": str(d["id"]), "field": d["field"],
             "old": decision_value(d["field"], d.get("old", ""), allow_empty=True),
             "new": decision_value(d["field"], d["new"]), "reason": str(d.get("reason", "")).strip(), "time": stamp}
            for d in decisions]
    path = Path(path)
    with _locked(path):
        before = path.read_bytes() if path.exists() else b""
        header = next(csv.reader(io.StringIO(before.decode()))) if before.strip() else RELABEL_COLUMNS
        missing = [c for c in ("id", "field", "new") if c not in header]
        if missing:
            raise DataError(path, [f"missing column(s) {missing}; not a relabel file"])
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        if not before.strip():
            writer.writerow(header)
        for r in rows:
            writer.writerow([r.get(c, "") for c in header])
        sep = b"" if not before or before.endswith(b"\n") else b"\n"
        with atomic_path(path) as tmp:
            tmp.write_bytes(before + sep + text.getvalue().encode())
    return rows


class _locked:
    """An exclusive lock beside the file, so two reviewers appending at once both land (POSIX; no-op elsewhere)."""

    def __init__(self, path: Path):
        self.lock = path.with_name(f".{path.name}.lock")

    def __enter__(self):
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except ImportError:
            pass
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing releases the lock


def decide(path: str | Path, row, action: str, value=None, reviewer_note: str = "") -> dict:
    """Records a review of one queue row: action "keep" (new = given), "accept" (new = suggested) or "set"
    (new = value). This is what the notebook's keep / accept / set buttons call; returns the row written."""
    row = dict(row._asdict() if hasattr(row, "_asdict") else row)
    if action not in ("keep", "accept", "set"):
        raise UserError(f"action {action!r} is not one of keep, accept, set")
    if action == "set" and value is None:
        raise UserError("action 'set' needs a value")
    new = {"keep": row["given"], "accept": row["suggested"], "set": value}[action]
    reason = f"{action}: {row.get('reason', '')}" + (f" ({reviewer_note})" if reviewer_note else "")
    return record_decision(path, row["person"], row["field"], row["given"], new, reason)


def apply_decisions(decisions: str | Path | pd.DataFrame, relabel_path: str | Path, persons=None) -> pd.DataFrame:
    """Appends the reviewed rows of a decisions CSV (a queue with a `decision` column: keep / accept / set, and
    `value` for set) to the relabel file, for papermill and headless runs; rows with no decision are skipped.
    Returns the rows written."""
    df = decisions if isinstance(decisions, pd.DataFrame) else pd.read_csv(decisions, dtype=str, keep_default_na=False)
    where = "decisions" if isinstance(decisions, pd.DataFrame) else str(decisions)
    missing = [c for c in ("person", "field", "given", "decision") if c not in df.columns]
    if missing:
        raise DataError(where, [f"missing column(s) {missing}"])
    todo, problems = [], []
    for i, r in df.fillna("").astype(str).iterrows():
        action = r["decision"].strip().lower()
        if not action:
            continue
        value = r.get("value", "").strip() or None
        new = {"keep": r["given"], "accept": r.get("suggested", ""), "set": value}.get(action, "?")
        try:
            if action not in ("keep", "accept", "set") or new is None:
                raise UserError(f"decision {action!r} needs to be keep, accept, or set with a value")
            todo.append({"id": r["person"], "field": r["field"], "old": r["given"],
                         "new": decision_value(r["field"], new),
                         "reason": f"{action}: {r.get('reason', '')}".strip()})
        except ValueError as err:
            problems.append(f"row {i + 2} (person {r['person']!r}): {err}")
    if problems:
        raise DataError(where, problems)
    written = record_decisions(relabel_path, todo, persons) if todo else []
    return pd.DataFrame(written, columns=RELABEL_COLUMNS)
