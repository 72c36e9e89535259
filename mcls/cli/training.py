"""`mcls train | demo | pipeline | sweep | calibrate | face-prior`: training runs and fitting what serves them."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from mcls.cli.keys import config_of, given_keys, prediction_keys
from mcls.config import ConfigError, load_config
from mcls.errors import UserError


def cmd_train(args) -> None:
    from mcls.runtime import distributed
    from mcls.train.run import train

    summary = train(config_of(args), resume=args.resume, given=tuple(given_keys(args)))
    if distributed.is_main():
        shown = {k: round(v, 4) for k, v in summary.items() if isinstance(v, float) and not k.endswith("_std")}
        print(json.dumps(shown, indent=2))
    distributed.shutdown()


def cmd_calibrate(args) -> None:
    from mcls.train.run import calibrate

    # the run's own serving (its person_consistent decides how predictions are shared), plus any overrides
    overrides, _ = prediction_keys(args, ())
    fit = calibrate(args.run, overrides)
    if not fit:
        raise UserError(f"{args.run}: calibration needs validation predictions of 2 or more folds (train with "
                        "fold=-1, or more folds into the same run_dir)")
    print(json.dumps({k: v if isinstance(v, list) else round(v, 4) for k, v in fit.items()}, indent=2))


def cmd_face_prior(args) -> None:
    from mcls.analysis.face_prior import weight_scores
    from mcls.infer.face_expert import fit_run_experts
    from mcls.runs.layout import Run

    overrides, _ = prediction_keys(args, ())
    run = Run.open(args.run)
    folds = fit_run_experts(run)
    table = weight_scores(run.path, overrides=overrides)
    print(f"face experts fitted for folds {folds} of {run.path}; out-of-fold scores by face_weight "
          "(served as the run's config, no age bias):")
    print(table.round(4).to_string(index=False))
    best = table.loc[table["f1"].idxmax()]
    print(f"serve with it: mcls predict --run {run.path} face_weight={best['face_weight']:g} (chosen on these "
          "folds' own persons, so mildly optimistic)")


# The demo's own settings (not the package defaults): 8 epochs at 128 px on the 48-person sample are enough for
# the mask head to learn visibly (F1 1.00 on fold 0's 12 held-out persons) in ~35 s on 2 CPU cores.
DEMO_SETTINGS = ["data_dir=data/sample", "run_dir=runs/demo", "epochs=8", "img_size=128", "n_folds=4"]


def cmd_demo(args) -> None:
    """Trains briefly on the shipped sample, predicts its eval images, and says what it learned and where it is."""
    from mcls.infer.submission import write_submission
    from mcls.runs.layout import Run
    from mcls.runs.records import result_lines
    from mcls.train.run import train

    cfg = load_config(args.config, DEMO_SETTINGS + args.overrides)
    train(cfg, resume=Run(cfg.run_dir).config_file.exists())
    sub = write_submission(cfg.data_dir, cfg.run_dir, device=cfg.device)
    print("", *result_lines(cfg.run_dir, sub), sep="\n")
    print("what to expect: 12 held-out persons of a 48-person sample judge the mask head (near 1.00 here) but gender "
          "and age only roughly (gender about 0.75, age 0.4-0.6, apart from run to run); full-data scores are in "
          "docs/results.md")


def cmd_pipeline(args) -> None:
    from mcls.pipeline import NOTEBOOKS, PipelineError, pipeline_settings, run_pipeline
    from mcls.runs.layout import Run
    from mcls.runs.records import result_lines

    values = given_keys(args)
    notebooks = args.only.split(",") if args.only else NOTEBOOKS
    unknown = sorted(set(notebooks) - set(NOTEBOOKS))
    if unknown:
        raise UserError(f"unknown notebook(s) {unknown}; valid: {list(NOTEBOOKS)}")
    run_dir = Run(pipeline_settings(values)["run_dir"])
    try:
        run_pipeline(values, notebooks)
    except PipelineError as err:
        print(f"mcls pipeline: {err}", file=sys.stderr)
        sys.exit(1)
    sub = run_dir.submission_file if run_dir.submission_file.is_file() else None
    print("", *result_lines(run_dir.path, sub), f"executed notebooks: {run_dir.path / 'notebooks'}", sep="\n")


def cmd_sweep(args) -> None:
    """An Optuna sweep over a search space, each trial a run; resumes an interrupted sweep in the same folder."""
    from mcls.train.sweep import read_space, sweep

    base = config_of(args)
    space = read_space(args.space, base)
    folds = [int(f) for f in args.folds.split(",")]
    bad = [f for f in folds if not 0 <= f < base.n_folds]
    if bad:
        raise ConfigError(f"--folds {args.folds}: fold(s) {bad} do not exist with n_folds={base.n_folds}")
    sweep_dir = Path(args.dir or Path("runs") / f"sweep-{Path(args.space).stem}")
    table = sweep(base, space, args.trials, folds, sweep_dir)
    print(table.drop(columns=["run_dir"]).to_string(index=False))
    print(f"sweep folder: {sweep_dir}  (study.db, trials.csv, optimization_history.png, param_importances.png, "
          "trial-*/)")
