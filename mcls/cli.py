"""`mcls <command> [--config file.yaml] [key=value ...]`: the same config the notebooks use."""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from pathlib import Path

from mcls.config import Config, ConfigError, load_config, parse_overrides, read_yaml_keys


def _config(args):
    return load_config(args.config, args.overrides)


def _given(args) -> dict:
    """The keys the user set, and only those: --config's, then key=value's."""
    return {**(read_yaml_keys(args.config)[1] if args.config else {}), **parse_overrides(args.overrides)}


def cmd_train(args) -> None:
    from mcls.runtime import distributed
    from mcls.train.run import train

    summary = train(_config(args), resume=args.resume)
    if distributed.is_main():
        shown = {k: round(v, 4) for k, v in summary.items() if isinstance(v, float) and not k.endswith("_std")}
        print(json.dumps(shown, indent=2))
    distributed.shutdown()


# Keys `mcls predict` takes besides the serving keys: where the images are and how to read and run them.
PREDICT_KEYS = ("data_dir", "device", "on_bad_image")
SWITCHES = {"tta": "tta", "persons": "person_consistent", "calibration": "calibrate_age"}


def prediction_keys(args, accepted: tuple[str, ...]) -> tuple[dict, dict]:
    """(serving overrides, other keys) from --config, key=value and the on/off switches; a key that means nothing
    here is refused with the list of those that do, and a switch may not contradict its key."""
    from mcls.infer.serving import SERVING_KEYS

    values = _given(args)
    valid = (*SERVING_KEYS, *accepted)
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: mean(s) nothing to `mcls {args.command}`; it takes "
                          f"{', '.join(valid)}")
    for flag, key in SWITCHES.items():
        given = getattr(args, flag, None)
        if given is None:
            continue
        if key in values and values[key] != (given == "on"):
            raise ConfigError(f"--{flag} {given} contradicts {key}={values[key]}; give one of them")
        values[key] = given == "on"
    return ({k: v for k, v in values.items() if k in SERVING_KEYS},
            {k: v for k, v in values.items() if k not in SERVING_KEYS})


def cmd_predict(args) -> None:
    from mcls.infer.serving import Serving
    from mcls.infer.submission import predict_folder, write_submission

    overrides, other = prediction_keys(args, PREDICT_KEYS)
    cfg = Config().updated(other)
    if len(args.run) > 1 and not args.out:
        raise SystemExit("an ensemble of runs (--run given more than once) needs --out: no single run folder owns it")
    serving = Serving.resolve(args.run, overrides)
    if args.folder:
        out = args.out or str(Path(args.run[0]) / "predictions.csv")
        print(predict_folder(args.folder, serving, out, device=cfg.device, on_bad_image=cfg.on_bad_image))
    else:
        print(write_submission(cfg.data_dir, serving, args.out, device=cfg.device))


def cmd_calibrate(args) -> None:
    from mcls.train.run import calibrate

    # the run's own serving (its person_consistent decides how predictions are shared), plus any overrides
    overrides, _ = prediction_keys(args, ())
    fit = calibrate(args.run, overrides)
    if not fit:
        raise SystemExit(f"{args.run}: calibration needs validation predictions of 2 or more folds")
    print(json.dumps({k: v if isinstance(v, list) else round(v, 4) for k, v in fit.items()}, indent=2))


def cmd_face_prior(args) -> None:
    from mcls.infer.face_expert import fit_run_experts, weight_scores
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


def cmd_folds(args) -> None:
    from mcls.data.folds import assign_folds, fold_summary
    from mcls.data.table import load_train_table

    cfg = _config(args)
    table = load_train_table(cfg.data_dir, cfg.age_bounds, cfg.train_old_age, cfg.relabel_file or None)
    print(fold_summary(table, assign_folds(table, cfg.n_folds, cfg.seed)).to_string())


def cmd_check(args) -> None:
    """Validates the data folder (every problem listed) and prints what was found."""
    from mcls.data.images import load_images
    from mcls.data.table import load_eval_table, load_train_table

    cfg = _config(args)
    table = load_train_table(cfg.data_dir, cfg.age_bounds, cfg.train_old_age, cfg.relabel_file or None)
    info = load_eval_table(cfg.data_dir)
    _, bad = load_images(list(table["path"]) + list(info["path"]), 32, on_bad_image="skip")
    print(f"{cfg.data_dir}: {table['person'].nunique()} persons, {len(table)} training images, "
          f"{len(info)} eval images, {len(bad)} unreadable")
    if bad:
        sys.exit(1)


def cmd_runs(args) -> None:
    from mcls.analysis.leaderboard import cv_lb_agreement, cv_lb_figure, describe_agreement
    from mcls.runs.records import list_runs

    df = list_runs(args.runs_dir)
    print(df.to_string(index=False) if len(df) else f"no runs in {args.runs_dir}")
    if len(df) and df["lb_public"].notna().any():
        for board in ("lb_public", "lb_private"):
            if df[board].notna().any():
                print(describe_agreement(cv_lb_agreement(df, board)))
    if args.figure:
        from mcls.analysis.plots import save

        print(f"figure: {save(cv_lb_figure(df), args.figure)}")


def cmd_lb(args) -> None:
    """Records a leaderboard score of a run's submission beside its CV."""
    from mcls.runs.layout import Run
    from mcls.runs.records import cv_score, record_leaderboard

    from mcls.analysis.compare import Side, board_noise

    check_scores(args)
    run = Run.open(args.run)
    persons = args.persons or board_persons(run)
    entry = record_leaderboard(args.run, args.public, args.private, args.note or "")
    cv = cv_score(run.summary, run.config)
    private = f", private {entry['private']:.4f}" if entry["private"] is not None else ""
    print(f"{run.path}: public {entry['public']:.4f}{private} recorded beside CV "
          f"{'%.4f' % cv if cv is not None else '(none yet)'} in {run.leaderboard_file}")
    if not run.scored_folds:
        print("(no fold has out-of-fold predictions yet: the leaderboard's noise needs them)")
        return
    if persons is None:
        print("(how noisy the board is: give --persons, the number of persons the public board scores)")
        return
    against = Side((Path(args.against),)) if args.against else None
    noise = board_noise(Side((run.path,)), persons, against)
    print("\n".join(noise.lines(entry["public"], args.against)))


def check_scores(args) -> None:
    for name in ("public", "private"):
        value = getattr(args, name)
        if value is not None and not 0 <= value <= 1:
            raise ConfigError(f"{name} score {value} is not a macro F1 in 0..1")
    if args.persons is not None and args.persons < 1:
        raise ConfigError(f"--persons {args.persons}: a leaderboard scores at least 1 person")


def board_persons(run) -> int | None:
    """The public board's persons for a run's data: half of its eval images' persons (7 photos each), as the
    competition scored half of eval publicly; None when the run's data_dir has no eval/info.csv here."""
    info = Path(run.config.data_dir) / "eval" / "info.csv"
    if not info.is_file():
        return None
    with info.open() as f:
        images = sum(1 for _ in f) - 1
    return max(1, images // 7 // 2)


def compare_sides(args):
    """(Side A, Side B) from `mcls compare A B [key=value] [a.key=value] [b.key=value]`: a key without a prefix
    serves both sides; a side is a run folder, or several (one per train_seed) joined by commas."""
    from mcls.analysis.compare import Side
    from mcls.infer.serving import SERVING_KEYS

    values = {"a": {}, "b": {}}
    for key, value in parse_overrides(args.overrides).items():
        side, _, name = key.rpartition(".")
        if side not in ("", "a", "b") or name not in SERVING_KEYS:
            raise ConfigError(f"{key}: not a serving key of `mcls compare`; it takes {', '.join(SERVING_KEYS)}, "
                              "each for both sides or prefixed a. or b. for one")
        for s in ([side] if side else ["a", "b"]):
            values[s][name] = value
    return tuple(Side(tuple(Path(r) for r in spec.split(",") if r), values[s]) for s, spec in
                 (("a", args.a), ("b", args.b)))


def cmd_compare(args) -> None:
    """B against A on their common folds, with paired person-bootstrap intervals; writes compare.json + figure."""
    from mcls.analysis.compare import compare, save_comparison

    a, b = compare_sides(args)
    if args.resamples < 100:
        raise ConfigError(f"--resamples {args.resamples}: use at least 100 (2000 gives stable 95 % intervals)")
    result = compare(a, b, args.resamples, args.seed)
    print("\n".join(result.lines()))
    out = Path(args.out or Path("runs") / "compare" / f"{_slug(a)}--vs--{_slug(b)}")
    paths = save_comparison(result, out)
    print(f"\n{paths['json']}\n{paths['figure']}")


def _slug(side) -> str:
    """A folder name for one side: its runs' names and serving keys."""
    keys = "".join(f"-{k}={v}" for k, v in side.overrides.items())
    from mcls.analysis.compare import models

    return ",".join("+".join(p.resolve().name for p in models(r)) for r in side.runs) + keys


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
          "and age only roughly (about 0.75 and 0.6, several points apart from run to run); full-data scores are in "
          "docs/results.md")


def cmd_pipeline(args) -> None:
    from mcls.pipeline import NOTEBOOKS, PipelineError, pipeline_settings, run_pipeline
    from mcls.runs.layout import Run
    from mcls.runs.records import result_lines

    values = _given(args)
    notebooks = args.only.split(",") if args.only else NOTEBOOKS
    unknown = sorted(set(notebooks) - set(NOTEBOOKS))
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; valid: {list(NOTEBOOKS)}")
    run_dir = Run(pipeline_settings(values)["run_dir"])
    try:
        run_pipeline(values, notebooks)
    except PipelineError as err:
        print(f"mcls pipeline: {err}", file=sys.stderr)
        sys.exit(1)
    sub = run_dir.submission_file if run_dir.submission_file.is_file() else None
    print("", *result_lines(run_dir.path, sub), f"executed notebooks: {run_dir.path / 'notebooks'}", sep="\n")


def cmd_vote(args) -> None:
    """Combines teammates' submissions or probability files into one checked submission."""
    from mcls.data.table import load_eval_table
    from mcls.infer.submission import probs_file, save_submission
    from mcls.infer.vote import vote
    from mcls.io import writable_output

    # `files` is greedy: key=value words among them are overrides
    args.overrides += [f for f in args.files if "=" in f and not Path(f).exists()]
    files = [f for f in args.files if f not in args.overrides]
    cfg = _config(args)
    out = writable_output(args.out, "--out")
    info = load_eval_table(cfg.data_dir)
    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    soft = {"soft": True, "hard": False, "auto": None}[args.mode]
    sub, probs, how = vote(files, info, weights, soft)
    save_submission(out, info, sub["ans"], probs)
    print(f"{how}\nwrote {out}" + (f" and {probs_file(out)}" if probs is not None else ""))


def cmd_diff(args) -> None:
    """Where two submissions (or two runs' submissions) disagree, per head."""
    from mcls.data.table import load_eval_table
    from mcls.infer.vote import HEADS, answers_file, disagreements

    cfg = _config(args)
    info = load_eval_table(cfg.data_dir)
    d = disagreements(args.a, args.b, info)
    print(f"A = {answers_file(args.a)}\nB = {answers_file(args.b)}\n"
          f"{d['n']} of {d['of']} images answered differently ({d['n'] / max(d['of'], 1):.1%})")
    for head in HEADS:
        if len(d[head]):
            print(f"\n{head}: A's answer (rows) vs B's (columns), where they differ\n{d[head].to_string()}")
    if args.out and d["n"]:
        from mcls.io import write_csv

        rows = info.iloc[d["rows"]][["ImageID"]].copy()
        rows["a"], rows["b"] = d["a"][d["rows"]], d["b"][d["rows"]]
        write_csv(args.out, rows)
        print(f"\nthe {d['n']} differing rows: {args.out}")


def cmd_sweep(args) -> None:
    """An Optuna sweep over a search space, each trial a run; resumes an interrupted sweep in the same folder."""
    from mcls.train.sweep import read_space, sweep

    base = _config(args)
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


def cmd_cam(args) -> None:
    """CAM grids (PNG) and face-energy figures (cam_energy.json) for a trained run, written into the run folder."""
    from mcls.analysis.cam import inspect_run

    cfg = _config(args)
    # data_dir only re-roots image paths when given: by default the run's own val_predictions paths are used
    data_dir = cfg.data_dir if cfg.data_dir != Config().data_dir else None
    result = inspect_run(args.run, data_dir=data_dir, method=cfg.cam_method, n=cfg.cam_images, person=args.person,
                         max_images=args.max_images, out_dir=args.out, device=cfg.device)
    print(json.dumps(result["energy"]["heads"], indent=2))
    print("\n".join(str(p) for p in result["paths"].values()))


def cmd_crop(args) -> None:
    """Detects faces (cached) in data_dir's train and eval images or in --folder; writes the per-image report."""
    import pandas as pd

    from mcls.data.faces import CropSettings, crop_paths, detection_rate
    from mcls.data.table import list_images, load_eval_table, load_train_table
    from mcls.io import write_csv

    cfg = _config(args)
    settings = CropSettings.from_config(cfg.updated({"crop": "mtcnn"}))
    if args.folder:
        parts = {"folder": [str(p) for p in list_images(args.folder)]}
    else:
        parts = {"train": list(load_train_table(cfg.data_dir, cfg.age_bounds)["path"])}
        if (Path(cfg.data_dir) / "eval" / "info.csv").is_file():
            parts["eval"] = list(load_eval_table(cfg.data_dir)["path"])
    reports = []
    for name, paths in parts.items():
        report = crop_paths(paths, settings)
        print(f"{name}: faces found in {int(report['detected'].sum())} of {len(report)} images "
              f"({detection_rate(report):.1%}); fallback crops: {int((~report['detected']).sum())}")
        reports.append(report.assign(split=name))
    out = Path(args.out or Path("runs") / "crops" / f"{Path(args.folder or cfg.data_dir).name}.csv")
    write_csv(out, pd.concat(reports, ignore_index=True))
    print(f"report: {out}")


# the keys the leak guard reads: the two sets, its threshold and how faces are found for the descriptors
LEAK_CHECK_KEYS = ("data_dir", "external_data", "external_threshold", "crop_cache", "crop_min_confidence", "device")


def leak_check_config(args) -> Config:
    unknown = sorted(set(_given(args)) - set(LEAK_CHECK_KEYS))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: mean(s) nothing to `mcls leak-check`; it takes "
                          f"{', '.join(LEAK_CHECK_KEYS)}")
    return _config(args)


def cmd_leak_check(args) -> None:
    """Compares an external face-age set with every competition photo and writes what would be dropped."""
    from mcls.data.external import read_external
    from mcls.data.faces import CropSettings
    from mcls.data.leak_guard import competition_photos, guard, save_report

    cfg = leak_check_config(args)
    if not cfg.external_data:
        raise ConfigError("leak-check needs external_data=<folder of UTKFace-named photos or path,age,gender CSV>")
    external = read_external(cfg.external_data)  # every bad name or row, before any descriptor is computed
    photos = competition_photos(cfg.data_dir)
    settings = CropSettings.from_config(cfg.updated({"crop": "mtcnn"}))
    report = guard(external, photos, cfg.external_threshold, settings)
    out = Path(args.out or Path("runs") / "leak-check" / Path(cfg.external_data).stem)
    save_report(report, out)
    print(report.line())
    print(f"pairs, kept faces and figures: {out}")


def cmd_relabel(args) -> None:
    """Writes the suspect queue (and the OOF probabilities behind it), or appends reviewed decisions."""
    import pandas as pd

    from mcls.analysis.relabel import apply_decisions, run_finder

    cfg = _config(args)
    if args.apply:
        from mcls.data.table import read_persons

        target = args.relabel_file or cfg.relabel_file or "data/relabel.csv"
        written = apply_decisions(args.apply, target, persons=read_persons(cfg.data_dir)["id"])
        print(f"appended {len(written)} decision(s) to {target}; load with relabel_file={target}")
        return
    out_dir = Path(args.out or Path("runs") / "relabel" / Path(cfg.data_dir).name)
    queue, table, _ = run_finder(cfg, run=args.run, out_dir=out_dir, near_edge=args.near_edge)
    suspects = queue[queue["check"] != "edge"]
    print(f"{table['person'].nunique()} persons checked: {len(suspects)} suspect label(s) "
          f"({', '.join(f'{k} {v}' for k, v in suspects['check'].value_counts().items()) or 'none'}), "
          f"{int((queue['check'] == 'edge').sum())} age(s) near a band edge")
    with pd.option_context("display.width", 160, "display.max_colwidth", 70):
        print(suspects.head(args.top).to_string(index=False))
    print(f"queue: {out_dir / 'queue.csv'}  (add a `decision` column: keep / accept / set + `value`, then "
          f"`mcls relabel --apply FILE`)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcls", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or set MCLS_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, fn, help_):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", help="YAML file of config keys, or a preset name (quality)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        p.set_defaults(fn=fn)
        return p

    p = add("train", cmd_train, "train one fold (fold=K) or all folds (fold=-1) into run_dir")
    p.add_argument("--resume", action="store_true", help="continue the run in run_dir from its last checkpoint")
    p = add("predict", cmd_predict, "write run/submission.csv for data_dir/eval, or predict a folder")
    p.add_argument("--run", required=True, action="append",
                   help="run folder (fold ensemble) or one checkpoint file; give it again to average several runs "
                        "(e.g. train_seed variants; served without calibration)")
    p.add_argument("--folder", help="predict every image under this folder instead of eval/info.csv")
    p.add_argument("--out", help="output CSV path")
    p.add_argument("--tta", choices=("on", "off"), help="flip TTA (default: the run's config)")
    p.add_argument("--persons", choices=("on", "off"),
                   help="person-consistent inference: share gender/age within blindly grouped images "
                        "(default: the run's config key person_consistent)")
    p.add_argument("--calibration", choices=("on", "off"),
                   help="apply the run's fitted age-band bias, calibration.json (default: the run's calibrate_age)")
    p = add("calibrate", cmd_calibrate, "fit a run's age-band bias on its folds' validation predictions "
                                        "(done by `train fold=-1`; use it after training folds one by one)")
    p.add_argument("--run", required=True, help="run folder with 2+ fold*/val_predictions.csv")
    p = add("face-prior", cmd_face_prior, "fit a run's dlib face experts (one logistic regression per fold on frozen "
                                          "face descriptors) and score its folds at each face_weight")
    p.add_argument("--run", required=True, help="run folder with fold*/best.pt and fold*/val_predictions.csv")
    add("folds", cmd_folds, "show persons per fold and gender x age cell")
    add("check", cmd_check, "validate a data folder and list every problem")
    add("demo", cmd_demo, "train briefly on data/sample and write a submission")
    p = add("pipeline", cmd_pipeline, "run the numbered notebooks headless (papermill) into run_dir/notebooks")
    p.add_argument("--only", help="comma-separated notebook names, e.g. 00_eda,03_train")
    p = add("cam", cmd_cam, "GradCAM grids and face-energy figures per head for a trained run "
                            "(keys cam_method, cam_images; data_dir= re-roots image paths)")
    p.add_argument("--run", required=True, help="run folder with fold*/best.pt and fold*/val_predictions.csv")
    p.add_argument("--person", help="person id for the seven-image grid (default: a random validation person)")
    p.add_argument("--max-images", type=int, help="measure energy on this many random validation images (default: all)")
    p.add_argument("--out", help="output folder (default: the run folder)")
    p = add("leak-check", cmd_leak_check, "compare an external face-age set (UTKFace-named folder or path,age,gender "
            "CSV, key external_data) with every photo in data_dir; write the matches it would drop "
            "(external_threshold)")
    p.add_argument("--out", help="output folder (default runs/leak-check/<name>)")
    p = add("crop", cmd_crop, "detect faces (MTCNN, cached) in data_dir train+eval or a folder; print the detection "
                              "rate, write a per-image report (keys crop_margin, crop_chin, crop_min_confidence, ...)")
    p.add_argument("--folder", help="crop every image under this folder instead of data_dir")
    p.add_argument("--out", help="report CSV (default: runs/crops/<data name>.csv)")
    p = add("relabel", cmd_relabel, "rank persons whose labels look wrong into a review queue, or --apply decisions")
    p.add_argument("--run", help="fold=-1 run folder (or oof.csv) for out-of-fold probabilities (default: a quick "
                                 "frozen-feature probe)")
    p.add_argument("--out", help="folder for queue.csv and oof.csv (default: runs/relabel/<data name>)")
    p.add_argument("--near-edge", type=int, default=2, help="list ages this many years from a band edge")
    p.add_argument("--top", type=int, default=20, help="suspects to print")
    p.add_argument("--apply", metavar="CSV", help="append the reviewed rows of this decisions CSV instead")
    p.add_argument("--relabel-file", help="decisions log to append to (default: relabel_file, else data/relabel.csv)")
    def add_with_files(name, fn, help_):
        # file arguments of their own: key=value overrides reach it through parse_args' extras
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", help="YAML file of config keys, or a preset name")
        p.set_defaults(fn=fn, overrides=[])
        return p

    p = add("sweep", cmd_sweep, "an Optuna sweep: each trial a run on --folds, pruned on per-epoch validation F1")
    p.add_argument("--space", required=True, help="YAML search space: key: {type: float|int|categorical, ...}")
    p.add_argument("--trials", type=int, required=True, help="finished trials wanted (an interrupted sweep resumes)")
    p.add_argument("--folds", default="0", help="comma-separated validation folds each trial trains (default 0)")
    p.add_argument("--dir", help="sweep folder (default runs/sweep-<space file name>)")
    p = add_with_files("vote", cmd_vote,
                       "combine submissions (hard vote) or probability files (soft vote) into one submission")
    p.add_argument("files", nargs="+", metavar="CSV_OR_RUN", help="submissions, *_probs.csv files or run folders")
    p.add_argument("--out", required=True, help="the combined submission")
    p.add_argument("--weights", help="comma-separated, one per file (default: equal)")
    p.add_argument("--mode", choices=("auto", "soft", "hard"), default="auto",
                   help="auto: soft when every file has probabilities, else hard")
    p = add_with_files("diff", cmd_diff, "where two submissions (or two runs' submission.csv) disagree, per head")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("--out", help="also write the differing rows (ImageID, a, b) to this CSV")
    p = sub.add_parser("compare", help="is B better than A? paired differences on their common folds with 95 % "
                                       "intervals over persons (and seeds), per fold, and a verdict")
    p.add_argument("a", metavar="A", help="the reference: a run folder; runs of several train_seeds joined by ','; "
                                          "runs joined by '+' are averaged into one model")
    p.add_argument("b", metavar="B", help="the candidate, the same way (A again with other serving keys is valid)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="serving keys for both sides (tta=false), or for one (a.tta=false, b.person_consistent=true)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's random seed (default 0)")
    p.add_argument("--out", help="folder for compare.json and compare.png (default runs/compare/<A>--vs--<B>)")
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser("runs", help="list runs with key metrics, leaderboard scores and differing config keys")
    p.add_argument("runs_dir", nargs="?", default="runs")
    p.add_argument("--figure", help="also plot CV against the leaderboard over all runs into this PNG")
    p.set_defaults(fn=cmd_runs, overrides=[])
    p = sub.add_parser("lb", help="record a leaderboard score of a run's submission (shown by `mcls runs`)")
    p.add_argument("run", help="the run folder whose submission.csv was scored")
    p.add_argument("public", type=float, help="the public leaderboard's macro F1")
    p.add_argument("--private", type=float, help="the private leaderboard's macro F1, once known")
    p.add_argument("--note", help="a word on what was submitted")
    p.add_argument("--persons", type=int, help="persons the public board scores (default: half of the run's "
                                               "data_dir eval images / 7)")
    p.add_argument("--against", metavar="RUN", help="also the board's noise on this run's difference from RUN "
                                                    "(both trained on the same folds)")
    p.set_defaults(fn=cmd_lb, overrides=[])
    for command in sub.choices.values():
        command.add_argument("--check", action="store_true",
                             help="check the command's keys and values, then stop: nothing is trained or written")
    return parser


def validate(args) -> None:
    """The checks a command makes before any work, alone (`--check`): its keys, their values, and the config a
    training resolves to (what a switch such as smoke derives included)."""
    if args.command in ("predict", "calibrate", "face-prior"):
        prediction_keys(args, PREDICT_KEYS if args.command == "predict" else ())
    elif args.command == "compare":
        compare_sides(args)
    elif args.command == "leak-check":
        leak_check_config(args)
    elif args.command == "pipeline":
        from mcls.pipeline import pipeline_settings

        pipeline_settings(_given(args))
    elif args.command == "lb":
        check_scores(args)
    elif args.command != "runs":
        cfg = _config(args)
        Config.from_dict(cfg.resolved().to_dict(), source="the resolved config")


def describe_os_error(err: OSError) -> str:
    """One sentence for a failed read or write: which file, what happened, what to do."""
    where = f"{err.filename}: " if getattr(err, "filename", None) else ""
    if err.errno == errno.ENOSPC:
        return (f"{where}the disk is full; free space, then run the same command again (training: with --resume, "
                "which continues after the last saved epoch; files written before are intact)")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}cannot write here (read-only or not yours); choose another path or fix its permissions"
    return str(err)


def parse_args(argv=None) -> argparse.Namespace:
    """Options and key=value overrides in any order (`predict tta=false --run R data_dir=D` is one command):
    argparse alone takes positionals in one block only."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*getattr(args, "overrides", []), *extra]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet = int(os.environ.get("RANK", "0")) > 0  # under torchrun, rank 0 speaks for all
    logging.basicConfig(level=logging.WARNING if quiet else logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    try:
        if args.check:
            validate(args)
            print(f"mcls {args.command}: the keys and values are valid (--check: nothing was run)")
            return 0
        args.fn(args)
    except (ValueError, OSError) as err:  # ConfigError, DataError, CheckpointError, OutputError and the OS's own
        if args.debug or os.environ.get("MCLS_DEBUG"):
            raise
        message = describe_os_error(err) if isinstance(err, OSError) and type(err).__module__ == "builtins" \
            else str(err)
        print(f"mcls {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    return 0
