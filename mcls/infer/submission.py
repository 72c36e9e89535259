"""Submissions: the checked writer of eval/info.csv's answers, and predictions for any image folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mcls.data.table import list_images, load_eval_table
from mcls.errors import UserError
from mcls.infer.predictor import predict_paths
from mcls.infer.serving import Serving
from mcls.io import writable_output, write_csv
from mcls.labels import (
    GENDERS,
    MASK_STATES,
    NUM_CLASSES,
    PROB_COLUMNS,
    age_band_names,
    decode,
)
from mcls.runs.tracking import log_submission


class SubmissionError(UserError):
    pass



def probs_file(submission: str | Path) -> Path:
    """Where a submission's eval probabilities are kept: <stem>_probs.csv beside it (ImageID, p0..p17)."""
    submission = Path(submission)
    return submission.with_name(f"{submission.stem}_probs.csv")


def order_problems(image_ids, info: pd.DataFrame) -> list[str]:
    """What keeps `image_ids` from being info.csv's ImageIDs in info.csv's order."""
    ids, expected = np.asarray(image_ids), info["ImageID"].to_numpy()
    if len(ids) != len(expected):
        return [f"{len(ids)} rows, info.csv has {len(expected)}"]
    if not np.array_equal(ids, expected):
        return [f"rows are not in info.csv's order (row order differs from row {int(np.argmax(ids != expected)) + 2} "
                "on)"]
    return []


def class_problems(answers) -> list[str]:
    ans = pd.to_numeric(pd.Series(answers), errors="coerce")
    bad = ~ans.between(0, NUM_CLASSES - 1) | (ans % 1 != 0)
    return [f"{int(bad.sum())} answer(s) outside the classes 0..{NUM_CLASSES - 1}"] if bad.any() else []


def check_submission(sub: pd.DataFrame, info: pd.DataFrame, where: str = "submission") -> None:
    """Refuses a submission whose rows are not info.csv's rows in order, or whose classes are not 0..17."""
    problems = []
    if list(sub.columns) != ["ImageID", "ans"]:
        problems.append(f"columns are {list(sub.columns)}, expected ['ImageID', 'ans']")
    if "ImageID" in sub:
        problems += order_problems(sub["ImageID"], info)
    if "ans" in sub:
        problems += class_problems(sub["ans"])
    if problems:
        raise SubmissionError(f"{where}: refusing to write: " + "; ".join(problems))


def save_submission(out: Path, info: pd.DataFrame, answers, probs: np.ndarray | None = None) -> Path:
    """Writes a checked `ImageID,ans` submission in info.csv's order and, given probabilities, its _probs.csv
    beside it (what teammates soft-vote); an earlier file of either name is kept, never lost."""
    sub = pd.DataFrame({"ImageID": info["ImageID"], "ans": np.asarray(answers).astype(int)})
    check_submission(sub, info, str(out))
    write_csv(out, sub, keep_previous=True)
    if probs is not None:
        write_csv(probs_file(out), probabilities_table(info["ImageID"], probs), keep_previous=True)
    return out


def served(run, overrides: dict | None = None) -> Serving:
    """A Serving as given, or the one resolved for a run (or runs) with serving-key overrides."""
    return run if isinstance(run, Serving) else Serving.resolve(run, overrides)


def write_submission(data_dir: str | Path, run, out: str | Path | None = None, device: str = "auto",
                     overrides: dict | None = None) -> Path:
    """Predicts eval/info.csv as the run (a Serving, or a run folder / several resolved with `overrides`) serves it;
    writes `ImageID,ans` in info.csv's exact order, into <run>/submission.csv unless `out` is given."""
    serving = served(run, overrides)
    if out is None and serving.several_runs:
        raise UserError("an ensemble of runs needs an output path (--out): no single run folder owns it")
    out = writable_output(out if out else serving.runs[0].submission_file, "submission")
    info = load_eval_table(data_dir)
    probs = predict_paths(info["path"], serving, device)[0]
    save_submission(out, info, probs.argmax(1), probs)
    if not serving.several_runs:  # a tracked run keeps its submissions on the MLflow server too
        log_submission(serving.runs[0].path, [out, probs_file(out)])
    return out


def probabilities_table(image_ids, probs: np.ndarray) -> pd.DataFrame:
    """ImageID and p0..p17: what a soft vote reads."""
    return pd.concat([pd.DataFrame({"ImageID": list(image_ids)}), pd.DataFrame(probs.round(6), columns=PROB_COLUMNS)],
                     axis=1)


def predictions_table(paths, probs: np.ndarray, age_bounds=(30, 60)) -> pd.DataFrame:
    """path, class, mask, gender, age band (as names) and the 18 probabilities."""
    cls = probs.argmax(1)
    mask, gender, band = decode(cls)
    ages = age_band_names(age_bounds)
    df = pd.DataFrame({"path": [str(p) for p in paths], "class": cls,
                       "mask": [MASK_STATES[m] for m in mask], "gender": [GENDERS[g] for g in gender],
                       "age_band": [ages[a] for a in band]})
    return pd.concat([df, pd.DataFrame(probs.round(5), columns=PROB_COLUMNS)], axis=1)



def predict_folder(folder: str | Path, run, out: str | Path, device: str = "auto", on_bad_image: str = "error",
                   overrides: dict | None = None) -> Path:
    """Predicts every image under `folder` into a CSV as the run (or runs, averaged) serves it; unreadable files are
    listed (skip) or stop the run (error)."""
    serving = served(run, overrides)
    out = writable_output(out, "--out")
    paths = list_images(folder)
    probs, bad, cfg = predict_paths(paths, serving, device, on_bad_image=on_bad_image)
    keep = np.setdiff1d(np.arange(len(paths)), bad)
    write_csv(out, predictions_table([paths[i] for i in keep], probs[keep], cfg.age_bounds), keep_previous=True)
    return out
