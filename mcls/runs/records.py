"""Run folders and run records: what a run was made from, so runs on different code or data never get mixed up."""
from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path

import pandas as pd

from mcls import __version__
from mcls.config import Config, ConfigError, placement_keys
from mcls.errors import UserError
from mcls.io import file_digest, write_json, write_text
from mcls.runs.layout import Run, read_json


class RunExistsError(FileExistsError):
    pass


def resumed_config(saved: Config, cfg: Config, given: tuple[str, ...]) -> Config:
    """The saved config with the given placement keys taken from `cfg`; one sentence for any other given key whose
    value differs from the saved one."""
    placed = set(placement_keys())
    changed = [k for k in given if k != "run_dir" and getattr(cfg, k) != getattr(saved, k)]
    refused = [k for k in changed if k not in placed]
    if refused:
        shown = ", ".join(f"{k}={getattr(cfg, k)!r} (saved {getattr(saved, k)!r})" for k in refused)
        raise ConfigError(f"--resume continues the run as it was started: {shown} would change what it learns; "
                          f"drop {'them' if len(refused) > 1 else 'it'}, or start a new run_dir (a resumed run "
                          f"takes only {', '.join(sorted(placed))})")
    return saved.updated({k: getattr(cfg, k) for k in changed}) if changed else saved


def new_run_dir(cfg: Config) -> Path:
    return Path(cfg.run_dir) if cfg.run_dir else Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def open_run(cfg: Config, resume: bool = False, given: tuple[str, ...] = ()) -> tuple[Config, Path]:
    """Creates (or, with resume, reopens) a run folder and writes config.yaml; never overwrites a finished run.

    On resume the saved config wins, so a resumed run continues exactly what was started; of the `given` keys (the
    ones the user typed) the placement keys (where the data and caches are, the device) are taken, and one that
    would change what the run learns is refused with its saved value.
    """
    run_dir = new_run_dir(cfg)
    saved = Run(run_dir).config_file
    if saved.exists():
        if not resume:
            raise RunExistsError(f"{run_dir} already holds a run; pass --resume to continue it, "
                                 "or choose another run_dir")
        return resumed_config(Config.from_yaml(saved), cfg, given), run_dir
    if resume:
        raise FileNotFoundError(f"{run_dir}: nothing to resume, no run was started there (a start that stopped "
                                "before its first epoch, e.g. at the checks, leaves nothing); run the same command "
                                "without --resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = Config.from_dict({**cfg.to_dict(), "run_dir": str(run_dir)})
    write_text(saved, cfg.to_yaml())
    return cfg, run_dir


def git_state(cwd: str | Path = ".") -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def write_run_info(run_dir: Path, fingerprint: str, n_images: int, extra: dict | None = None) -> None:
    import torch

    code_dir = Path(__file__).resolve().parent
    info = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "mcls_version": __version__, "git": git_state(code_dir),
            "data_fingerprint": fingerprint, "n_images": n_images, "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, **(extra or {})}
    path = Run(run_dir).info_file
    if path.exists():  # a resumed run: the record of how it started stays, each resume is added to it
        first = json.loads(path.read_text())
        resumes = first.pop("resumes", [])
        if first.get("data_fingerprint") != fingerprint:
            raise UserError(f"{path}: the run started on data {first.get('data_fingerprint')}, the data now has "
                            f"fingerprint {fingerprint}; resume on the same data or start a new run")
        info = {**first, "resumes": resumes + [info]}
    write_json(path, info)


def record_leaderboard(run_dir: str | Path, public: float, private: float | None = None,
                       note: str = "") -> dict:
    """Appends a leaderboard score of the run's submission to <run>/leaderboard.json (earlier scores are kept);
    names the submission by its content hash, so a later re-prediction is not mistaken for the scored file."""
    run = Run(run_dir)
    if not run.config_file.is_file():
        raise FileNotFoundError(f"{run.path}: not a run folder (no {run.config_file.name})")
    check_scores(public, private)
    sub = run.submission_file
    entry = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "public": public, "private": private, "note": note,
             "submission_sha1": file_digest(sub)[:12] if sub.is_file() else None}
    write_json(run.leaderboard_file, {"scores": [*run.leaderboard, entry]})
    return entry


def check_scores(public: float | None, private: float | None = None) -> None:
    """Leaderboard scores are macro F1s in 0..1: one sentence otherwise."""
    for name, value in (("public", public), ("private", private)):
        if value is not None and not 0 <= value <= 1:
            raise UserError(f"{name} score {value} is not a macro F1 in 0..1")


def cv_score(summary: dict, cfg: Config) -> float | None:
    """The validation macro F1 of the run as it is served: its ensemble's, else calibrated, else person-consistent
    when it serves that way, else per image."""
    for key in ("ens_f1", "cal_f1", "pc_f1" if cfg.person_consistent else "f1", "f1"):
        if summary.get(key) is not None:
            return float(summary[key])
    return None


def list_runs(runs_dir: str | Path = "runs") -> pd.DataFrame:
    """One row per run with its key metrics and the config keys that differ between the runs."""
    rows, configs = [], []
    found = sorted(Path(runs_dir).iterdir()) if Path(runs_dir).is_dir() else []
    for run in [Run(d) for d in found if Run(d).config_file.is_file()]:
        cfg = run.config.to_dict()
        try:
            metrics, note, lb = run.summary, "", (run.leaderboard or [{}])[-1]
            fp = read_json(run.info_file, "").get("data_fingerprint")
        except ValueError as err:  # one damaged record must not hide the other runs
            metrics, fp, note, lb = {}, None, str(err).split(";")[0], {}
        rows.append({"run": run.path.name, "data": fp, "cv": cv_score(metrics, run.config),
                     "lb_public": lb.get("public"), "lb_private": lb.get("private"),
                     **{k: metrics.get(k) for k in ("f1", "pc_f1", "cal_f1", "ens_f1", "f1_mask", "f1_gender",
                                                    "f1_age", "f1_old", "folds")},
                     **({"problem": note} if note else {})})
        configs.append(cfg)
    df = pd.DataFrame(rows)
    if configs:
        cfgs = pd.DataFrame(configs).drop(columns=["run_dir"])
        differing = [c for c in cfgs.columns if cfgs[c].astype(str).nunique() > 1]
        df = pd.concat([df, cfgs[differing]], axis=1)
    return df


def result_lines(run_dir: str | Path, submission: str | Path | None = None) -> list[str]:
    """The closing lines of a command that trained a run: its validation scores on held-out persons, where the
    run is and where the submission is; what a user reads last."""
    run = Run(run_dir)
    summary = run.summary
    if "f1" not in summary:
        return [f"run folder:  {run.path}  (no validation scores yet: training did not finish)"]
    persons = sum(fold.get("n_val_persons", 0) for fold in summary.get("per_fold", {}).values())
    served = (f"; {summary['pc_f1']:.3f} with person-consistent answers" if run.config.person_consistent
              and "pc_f1" in summary else "")
    lines = [f"validation macro F1 {summary['f1']:.3f} (mask {summary['f1_mask']:.3f}, gender "
             f"{summary['f1_gender']:.3f}, age {summary['f1_age']:.3f}) on {persons} held-out persons of fold(s) "
             f"{summary['folds']}{served}",
             f"run folder:  {run.path}  (config.yaml, fold*/metrics.csv, best.pt, learning curves)"]
    if submission:
        lines.append(f"submission:  {submission}")
    return lines
