"""Prediction: fold ensembles (and ensembles of runs) with flip TTA, a checked submission writer, and predicting any
image folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .calibration import apply_age_bias, load_age_bias
from .config import Config
from .data import list_images, load_eval_table
from .dataset import ImageArrayDataset
from .engine import Runtime, load_checkpoint, predict_dataset
from .ensemble import run_with_members
from .faces import CropSettings
from .image_cache import cached_images
from .io import keep_previous, write_csv
from .labels import NUM_CLASSES, PROB_COLUMNS, age_band_names, decode, GENDERS, MASK_STATES
from .persons import person_consistent


class SubmissionError(ValueError):
    pass


def find_checkpoints(run: str | Path) -> list[Path]:
    """A checkpoint file itself, or every fold's best.pt inside a run folder (the fold ensemble)."""
    run = Path(run)
    if run.is_file():
        return [run]
    found = sorted(run.glob("fold*/best.pt"))
    if not found:
        raise FileNotFoundError(f"{run}: no fold*/best.pt checkpoints (is it a run folder from `mcls train`?)")
    return found


def load_ensemble(checkpoints, device) -> tuple[list, Config]:
    """Models from checkpoints that must agree on input size; returns (models, config of the first)."""
    models, cfgs = zip(*(load_checkpoint(p, device) for p in checkpoints))
    sizes = {c.img_size for c in cfgs}
    if len(sizes) > 1:
        raise ValueError(f"checkpoints disagree on img_size {sorted(sizes)}; ensemble models of one size")
    return list(models), cfgs[0]


def as_runs(run) -> list[Path]:
    """One run (a folder or a checkpoint file) or several: an ensemble of runs."""
    runs = [Path(run)] if isinstance(run, (str, Path)) else [Path(r) for r in run]
    if not runs:
        raise ValueError("no run given")
    return runs


def with_members(runs: list[Path]) -> list[Path]:
    """The runs with the ensemble members each one trained (config key `members`) after it, each once."""
    return list(dict.fromkeys(r.resolve() for run in runs for r in run_with_members(run)))


def predict_paths(paths, checkpoints, tta: bool | None = None, device: str = "auto", batch_size: int | None = None,
                  on_bad_image: str = "error", persons: bool | None = None,
                  age_bias=None) -> tuple[np.ndarray, list[int]]:
    """(N, 18) probabilities for image files, prepared exactly as validation images are. Never shuffles.

    tta / persons (person-consistent inference over these images) default to the run's config; `age_bias` (from
    calibration.load_age_bias) reweights the age bands last, where it was fitted."""
    return _predict(paths, [checkpoints], tta, device, batch_size, on_bad_image, persons,
                    lambda cfg, shared: age_bias)[:2]


def _predict(paths, members, tta, device, batch_size, on_bad_image, persons, age_bias_for):
    """predict_paths for one or more members (each a list of checkpoints: a run's fold ensemble), averaged with
    equal weight per member; each member sees the images at its own size and crop. Person groups and the defaults
    come from the first member's config, which is returned too; `age_bias_for(config, shared)` picks the bias for
    predictions shared within person groups or not."""
    rt = Runtime(Config(device=device))
    probs, bad, first = [], set(), None
    for checkpoints in members:
        models, cfg = load_ensemble(checkpoints, rt.device)
        # the run's own crop settings: a model trained on face crops must see face crops
        images, missing = cached_images(paths, cfg.img_size, on_bad_image, CropSettings.from_config(cfg, device=device),
                                        cfg.image_cache)
        probs.append(predict_dataset([rt.prepare(m) for m in models], ImageArrayDataset(images), rt,
                                     batch_size or rt.eval_batch(cfg.batch_size), tta=cfg.tta if tta is None else tta))
        bad.update(missing)
        if first is None:
            first, first_images = cfg, images
    probs = np.mean(probs, axis=0)
    bad = sorted(bad)
    keep = np.setdiff1d(np.arange(len(paths)), bad)
    shared = first.person_consistent if persons is None else persons
    if shared:
        probs[keep] = person_consistent(probs[keep], first_images[keep], first.group_threshold)[0]
    age_bias = age_bias_for(first, shared)
    if age_bias is not None:
        probs[keep] = apply_age_bias(probs[keep], age_bias)
    return probs, bad, first


def run_age_bias(runs: list[Path], calibrate: bool | None):
    """For _predict: the run's fitted age bias when calibration is on (None: as the run's calibrate_age says).
    The bias is fitted for how one run is served (a run with members: their average); runs named together are
    served without it."""
    if len(runs) > 1:
        if calibrate:
            raise ValueError("calibration.json is fitted for one run's predictions; predict an ensemble of runs "
                             "with calibration off")
        return lambda cfg, shared: None

    def age_bias_for(cfg, shared):
        return load_age_bias(runs[0], shared) if (cfg.calibrate_age if calibrate is None else calibrate) else None
    return age_bias_for


def run_members(runs: list[Path], calibrate: bool | None):
    """(_predict's members: the checkpoints of each run and of its ensemble members, the age-bias picker), checked
    before anything is predicted."""
    age_bias_for = run_age_bias(runs, calibrate)
    return [find_checkpoints(r) for r in with_members(runs)], age_bias_for


def check_submission(sub: pd.DataFrame, info: pd.DataFrame, where: str = "submission") -> None:
    """Refuses a submission whose rows are not info.csv's rows in order, or whose classes are not 0..17."""
    problems = []
    if list(sub.columns) != ["ImageID", "ans"]:
        problems.append(f"columns are {list(sub.columns)}, expected ['ImageID', 'ans']")
    if len(sub) != len(info):
        problems.append(f"{len(sub)} rows, info.csv has {len(info)}")
    elif "ImageID" in sub and not np.array_equal(sub["ImageID"].to_numpy(), info["ImageID"].to_numpy()):
        first = int(np.argmax(sub["ImageID"].to_numpy() != info["ImageID"].to_numpy()))
        problems.append(f"row order differs from info.csv from row {first + 2} on")
    if "ans" in sub:
        ans = pd.to_numeric(sub["ans"], errors="coerce")
        bad = ~ans.between(0, NUM_CLASSES - 1) | (ans % 1 != 0)
        if bad.any():
            problems.append(f"{int(bad.sum())} answer(s) outside the classes 0..{NUM_CLASSES - 1}")
    if problems:
        raise SubmissionError(f"{where}: refusing to write: " + "; ".join(problems))


def write_submission(data_dir: str | Path, run, out: str | Path | None = None, tta: bool | None = None,
                     device: str = "auto", persons: bool | None = None, calibrate: bool | None = None) -> Path:
    """Predicts eval/info.csv with the run's fold ensemble (or several runs' ensembles averaged); writes
    `ImageID,ans` in info.csv's exact order."""
    runs = as_runs(run)
    if len(runs) > 1 and out is None:
        raise ValueError("an ensemble of runs needs an output path (--out): no single run folder owns it")
    members, age_bias_for = run_members(runs, calibrate)
    info = load_eval_table(data_dir)
    probs = _predict(info["path"], members, tta, device, None, "error", persons, age_bias_for)[0]
    sub = pd.DataFrame({"ImageID": info["ImageID"], "ans": probs.argmax(1).astype(int)})
    run_dir = runs[0] if runs[0].is_dir() else runs[0].parent
    out = Path(out) if out else run_dir / "submission.csv"
    check_submission(sub, info, str(out))
    keep_previous(out, sub.to_csv(index=False))
    write_csv(out, sub)
    return out


def predictions_table(paths, probs: np.ndarray, age_bounds=(30, 60)) -> pd.DataFrame:
    """path, class, mask, gender, age band (as names) and the 18 probabilities."""
    cls = probs.argmax(1)
    mask, gender, band = decode(cls)
    ages = age_band_names(age_bounds)
    df = pd.DataFrame({"path": [str(p) for p in paths], "class": cls,
                       "mask": [MASK_STATES[m] for m in mask], "gender": [GENDERS[g] for g in gender],
                       "age_band": [ages[a] for a in band]})
    return pd.concat([df, pd.DataFrame(probs.round(5), columns=PROB_COLUMNS)], axis=1)


def predict_folder(folder: str | Path, run, out: str | Path, tta: bool | None = None,
                   device: str = "auto", on_bad_image: str = "error", persons: bool | None = None,
                   calibrate: bool | None = None) -> Path:
    """Predicts every image under `folder` into a CSV with one run or several (averaged); unreadable files are
    listed (skip) or stop the run (error)."""
    members, age_bias_for = run_members(as_runs(run), calibrate)
    paths = list_images(folder)
    probs, bad, cfg = _predict(paths, members, tta, device, None, on_bad_image, persons, age_bias_for)
    keep = np.setdiff1d(np.arange(len(paths)), bad)
    write_csv(out, predictions_table([paths[i] for i in keep], probs[keep], cfg.age_bounds))
    return Path(out)
