"""Hyperparameter sweeps with Optuna. Each trial is a normal run (its own folder, config and records) on the folds
asked for, pruned on its per-epoch validation F1 against the trials before it. The study lives in a SQLite file
beside the trials, so a killed sweep resumes: the trial it was in is marked failed and a new one takes its place.

The search space is a YAML file of config keys:

    lr: {type: float, low: 3.0e-4, high: 3.0e-3, log: true}
    img_size: {type: int, low: 96, high: 160, step: 32}
    augment: {type: categorical, choices: [light, strong]}
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pandas as pd

from mcls.config import Config, ConfigError, read_yaml_keys

log = logging.getLogger(__name__)

STUDY_FILE = "study.db"
TRIALS_FILE = "trials.csv"
SPEC_KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
             "categorical": {"type", "choices"}}


def read_space(path: str | Path, base: Config) -> dict[str, dict]:
    """The search space, checked whole before any trial: every key a config key, every spec complete, and every
    bound or choice a value the config accepts. One ConfigError lists every problem, naming the file."""
    path, space = read_yaml_keys(path)
    problems = []
    for key, spec in space.items():
        where = f"{path}: {key}"
        if key not in Config.field_names():
            problems.append(f"{where}: not a config key")
            continue
        if not isinstance(spec, dict) or spec.get("type") not in SPEC_KEYS:
            problems.append(f"{where}: needs a mapping with type float, int or categorical")
            continue
        extra = set(spec) - SPEC_KEYS[spec["type"]]
        if extra:
            problems.append(f"{where}: unknown field(s) {sorted(extra)} for type {spec['type']}")
        if spec["type"] == "categorical":
            values = spec.get("choices")
            if not isinstance(values, list) or not values:
                problems.append(f"{where}: choices must be a non-empty list")
                continue
        else:
            if "low" not in spec or "high" not in spec or not float(spec["low"]) < float(spec["high"]):
                problems.append(f"{where}: needs low < high")
                continue
            values = [spec["low"], spec["high"]]
        for v in values:
            try:
                base.updated({key: v}, source=str(path))
            except ConfigError as err:
                problems.append(f"{where}: {v!r} is refused by the config ({str(err).splitlines()[-1].strip()})")
    if not space:
        problems.append(f"{path}: empty search space")
    if problems:
        raise ConfigError("invalid search space:\n  " + "\n  ".join(problems))
    return space


def suggest(trial, space: dict[str, dict]) -> dict:
    params = {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            params[key] = trial.suggest_categorical(key, spec["choices"])
        elif spec["type"] == "int":
            params[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)),
                                            log=bool(spec.get("log", False)))
        else:
            params[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), step=spec.get("step"),
                                              log=bool(spec.get("log", False)))
    return params


def open_study(sweep_dir: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(study_name="mcls", storage=f"sqlite:///{(sweep_dir / STUDY_FILE).resolve()}",
                               load_if_exists=True, direction="maximize",
                               pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))


def sweep(base: Config, space: dict[str, dict], trials: int, folds: list[int], sweep_dir: str | Path,
          say=print) -> pd.DataFrame:
    """Runs trials until `trials` of them have finished (completed or pruned), counting those of an earlier,
    interrupted call on the same `sweep_dir`; returns the trials table (also written to trials.csv, with the
    history and importance plots beside it)."""
    import optuna
    from optuna.trial import TrialState

    from mcls.train.run import train

    sweep_dir = Path(sweep_dir)
    study = open_study(sweep_dir)
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)  # the sweep was killed in it; its folder stays as it was
        say(f"trial {stale.number} was interrupted: marked failed, a new trial takes its place")
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    failures = 0
    while len(study.get_trials(deepcopy=False, states=finished)) < trials:
        trial = study.ask()
        params = suggest(trial, space)
        run_dir = sweep_dir / f"trial-{trial.number:03d}"
        trial.set_user_attr("run_dir", str(run_dir))
        cfg = base.updated({**params, "run_dir": str(run_dir), "fold": folds[0]})
        steps = iter(range(10**6))

        def report(fold, row, trial=trial):
            trial.report(row.get("served_f1", row["f1"]), next(steps))
            if trial.should_prune():
                raise optuna.TrialPruned(f"fold {fold} epoch {row['epoch']}: F1 {row.get('served_f1', row['f1']):.4f} "
                                         "below the median")

        say(f"trial {trial.number}: {params} -> {run_dir}")
        try:
            summary = train(cfg, folds=folds, on_epoch=report)
        except optuna.TrialPruned as why:
            study.tell(trial, state=TrialState.PRUNED)
            say(f"trial {trial.number}: pruned ({why})")
            continue
        except (ConfigError, ValueError, RuntimeError) as err:
            study.tell(trial, state=TrialState.FAIL)
            failures += 1
            say(f"trial {trial.number}: failed ({err})")
            if failures >= 3:
                raise RuntimeError(f"{sweep_dir}: 3 trials failed; the last said: {err}") from err
            continue
        study.tell(trial, summary["f1"])
        say(f"trial {trial.number}: validation macro F1 {summary['f1']:.4f} on folds {folds}")
    return write_summary(study, sweep_dir, say)


def trials_table(study) -> pd.DataFrame:
    rows = [{"trial": t.number, "state": t.state.name.lower(), "f1": t.value, **t.params,
             "run_dir": t.user_attrs.get("run_dir")} for t in study.trials]
    return pd.DataFrame(rows).sort_values("f1", ascending=False, na_position="last").reset_index(drop=True)


def write_summary(study, sweep_dir: Path, say=print) -> pd.DataFrame:
    """trials.csv, optimization_history.png and param_importances.png (when 2+ trials finished with different
    values) in the sweep folder."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as optuna_plots

    from mcls.analysis.plots import plt, save
    from mcls.io import write_csv

    table = trials_table(study)
    write_csv(sweep_dir / TRIALS_FILE, table)
    # optuna's plots switch matplotlib to its own style; rc_context gives the kit's figures theirs back afterwards
    with warnings.catch_warnings(), plt.rc_context():
        warnings.simplefilter("ignore", ExperimentalWarning)
        ax = optuna_plots.plot_optimization_history(study)
        ax.set_ylabel("validation macro F1 (mean over the folds)")
        save(ax.figure, sweep_dir / "optimization_history.png")
        try:
            save(optuna_plots.plot_param_importances(study).figure, sweep_dir / "param_importances.png")
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            say(f"parameter importances not drawn: {err}")
    return table
