"""A team's ensemble from files: hard votes of teammates' submissions, soft votes of their probability files, and
where two answers disagree. Every input is checked against eval/info.csv before anything is combined."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mcls.errors import UserError
from mcls.infer.submission import class_problems, order_problems
from mcls.labels import NUM_CLASSES, PROB_COLUMNS, decode
from mcls.runs.layout import Run

HEADS = ("mask", "gender", "age")


class VoteError(UserError):
    """An input file that cannot be voted with; the message names it and lists what is wrong."""


def answers_file(source: str | Path) -> Path:
    """A submission or probability CSV as given, or a run folder's submission.csv."""
    source = Path(source)
    return Run(source).submission_file if source.is_dir() else source


def read_answers(path: str | Path, info: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """(answers (N,), probabilities (N, 18) or None) of a submission (ImageID, ans) or a probability file
    (ImageID, p0..p17), in info.csv's order; refuses the file by name, with every problem, otherwise."""
    path = answers_file(path)
    if not path.is_file():
        raise VoteError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype={"ImageID": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise VoteError(f"{path}: not a readable CSV ({err})") from None
    problems = []
    if "ImageID" not in df.columns:
        problems.append(f"no ImageID column (columns: {list(df.columns)})")
    else:
        dupes = df["ImageID"][df["ImageID"].duplicated()].unique()
        if len(dupes):
            problems.append(f"ImageID(s) listed twice: {', '.join(map(str, dupes[:5]))}")
        problems += order_problems(df["ImageID"], info)
    probs = None
    if all(c in df.columns for c in PROB_COLUMNS):
        probs = df[PROB_COLUMNS].to_numpy(dtype=float)
        if not np.isfinite(probs).all() or (probs < 0).any() or not np.allclose(probs.sum(1), 1, atol=1e-3):
            problems.append("p0..p17 are not probabilities (finite, >= 0, summing to 1 per row)")
        answers = probs.argmax(1)
    elif "ans" in df.columns:
        problems += class_problems(df["ans"])
        answers = pd.to_numeric(df["ans"], errors="coerce").fillna(-1).astype(int).to_numpy()
    else:
        problems.append("neither an ans column (a submission) nor p0..p17 (a probability file)")
    if problems:
        raise VoteError(f"{path}: " + "; ".join(problems))
    return answers, probs


def vote(paths: list, info: pd.DataFrame, weights: list[float] | None = None,
         soft: bool | None = None) -> tuple[pd.DataFrame, np.ndarray | None, str]:
    """(submission, averaged probabilities or None, how it was decided) of several files.

    Soft (the default when every file carries probabilities): the weighted mean of the probabilities, then the
    likeliest class. Hard: each file's answer counts its weight; a tie goes to the tied class that the earliest
    listed file chose (so list the strongest model first)."""
    if len(paths) < 2:
        raise VoteError("a vote needs two or more files")
    weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths) or any(w <= 0 for w in weights):
        raise VoteError(f"--weights: {len(paths)} positive numbers needed, one per file, got {weights}")
    read = [read_answers(p, info) for p in paths]
    have_probs = all(p is not None for _, p in read)
    soft = have_probs if soft is None else soft
    if soft and not have_probs:
        missing = [str(answers_file(p)) for p, (_, pr) in zip(paths, read) if pr is None]
        raise VoteError(f"a soft vote needs probabilities from every file; {', '.join(missing)} hold(s) answers "
                        "only (use its _probs.csv, or a hard vote)")
    w = np.asarray(weights) / sum(weights)
    if soft:
        probs = sum(wi * pr for wi, (_, pr) in zip(w, read))
        answers, how = probs.argmax(1), f"soft vote of {len(paths)} probability files, weights {weights}"
    else:
        probs = None
        counts = np.zeros((len(info), NUM_CLASSES))
        for wi, (ans, _) in zip(w, read):
            counts[np.arange(len(info)), ans] += wi
        top = np.isclose(counts, counts.max(1, keepdims=True))
        answers = np.full(len(info), -1)
        for ans, _ in read:  # ties: the earliest file whose answer is among the tied classes
            undecided = (answers < 0) & top[np.arange(len(info)), ans]
            answers[undecided] = ans[undecided]
        how = (f"hard vote of {len(paths)} files, weights {weights}; ties to the earliest listed file's answer "
               f"({int((top.sum(1) > 1).sum())} tied rows)")
    return pd.DataFrame({"ImageID": info["ImageID"], "ans": answers.astype(int)}), probs, how


def disagreements(a: str | Path, b: str | Path, info: pd.DataFrame) -> dict:
    """Where two answers differ: {"a", "b": the answers, "rows": indices where they differ, "n": count, head:
    crosstab of A's vs B's value on the rows where that head differs}; empty tables when they agree."""
    from mcls.labels import GENDERS, MASK_STATES, age_band_names

    ans_a, ans_b = read_answers(a, info)[0], read_answers(b, info)[0]
    rows = np.flatnonzero(ans_a != ans_b)
    out = {"a": ans_a, "b": ans_b, "rows": rows, "n": len(rows), "of": len(info)}
    # the eval classes use the competition's own age bands, whatever edges a run trained with
    names = {"mask": MASK_STATES, "gender": GENDERS, "age": age_band_names((30, 60))}
    for k, head in enumerate(HEADS):
        va, vb = decode(ans_a)[k], decode(ans_b)[k]
        differ = va != vb
        out[head] = pd.crosstab(pd.Series([names[head][v] for v in va[differ]], name=f"A: {head}", dtype=object),
                                pd.Series([names[head][v] for v in vb[differ]], name=f"B: {head}", dtype=object))
    return out
