"""The command line's grammar: every command, its options and the function that runs it."""
from __future__ import annotations

import argparse

from mcls.cli import data, evidence, serving, training


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcls", description="the mask classification kit: "
                                     "`mcls <command> [--config file.yaml] [key=value ...]`")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (or set MCLS_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, fn, help_):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", help="YAML file of config keys, or a preset name (quality)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        p.set_defaults(fn=fn)
        return p

    p = add("train", training.cmd_train, "train one fold (fold=K) or all folds (fold=-1) into run_dir")
    p.add_argument("--resume", action="store_true", help="continue the run in run_dir from its last checkpoint")
    p = add("predict", serving.cmd_predict, "write run/submission.csv for data_dir/eval, or predict a folder")
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
    p = add("calibrate", training.cmd_calibrate, "fit a run's age-band bias on its folds' validation predictions "
                                                 "(done by `train fold=-1`; use it after training folds one by one)")
    p.add_argument("--run", required=True, help="run folder with 2+ fold*/val_predictions.csv")
    p = add("face-prior", training.cmd_face_prior,
            "fit a run's dlib face experts (one logistic regression per fold on frozen "
            "face descriptors) and score its folds at each face_weight")
    p.add_argument("--run", required=True, help="run folder with fold*/best.pt and fold*/val_predictions.csv")
    add("folds", data.cmd_folds, "show persons per fold and gender x age cell")
    add("check", data.cmd_check, "validate a data folder and list every problem")
    add("demo", training.cmd_demo, "train briefly on data/sample and write a submission")
    p = add("pipeline", training.cmd_pipeline, "run the numbered notebooks headless (papermill) into run_dir/notebooks")
    p.add_argument("--only", help="comma-separated notebook names, e.g. 00_eda,03_train")
    p = add("cam", data.cmd_cam, "GradCAM grids and face-energy figures per head for a trained run "
                                 "(keys cam_method, cam_images; data_dir= re-roots image paths)")
    p.add_argument("--run", required=True, help="run folder with fold*/best.pt and fold*/val_predictions.csv")
    p.add_argument("--person", help="person id for the seven-image grid (default: a random validation person)")
    p.add_argument("--max-images", type=int, help="measure energy on this many random validation images (default: all)")
    p.add_argument("--out", help="output folder (default: the run folder)")
    p = add("leak-check", data.cmd_leak_check,
            "compare an external face-age set (UTKFace-named folder or path,age,gender "
            "CSV, key external_data) with every photo in data_dir; write the matches it would drop "
            "(external_threshold)")
    p.add_argument("--out", help="output folder (default runs/leak-check/<name>)")
    p = add("crop", data.cmd_crop,
            "detect faces (MTCNN, cached) in data_dir train+eval or a folder; print the detection "
            "rate, write a per-image report (keys crop_margin, crop_chin, crop_min_confidence, ...)")
    p.add_argument("--folder", help="crop every image under this folder instead of data_dir")
    p.add_argument("--out", help="report CSV (default: runs/crops/<data name>.csv)")
    p = add("relabel", data.cmd_relabel,
            "rank persons whose labels look wrong into a review queue, or --apply decisions")
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

    p = add("sweep", training.cmd_sweep,
            "an Optuna sweep: each trial a run on --folds, pruned on per-epoch validation F1")
    p.add_argument("--space", required=True, help="YAML search space: key: {type: float|int|categorical, ...}")
    p.add_argument("--trials", type=int, required=True, help="finished trials wanted (an interrupted sweep resumes)")
    p.add_argument("--folds", default="0", help="comma-separated validation folds each trial trains (default 0)")
    p.add_argument("--dir", help="sweep folder (default runs/sweep-<space file name>)")
    p = add_with_files("vote", serving.cmd_vote,
                       "combine submissions (hard vote) or probability files (soft vote) into one submission")
    p.add_argument("files", nargs="+", metavar="CSV_OR_RUN", help="submissions, *_probs.csv files or run folders")
    p.add_argument("--out", required=True, help="the combined submission")
    p.add_argument("--weights", help="comma-separated, one per file (default: equal)")
    p.add_argument("--mode", choices=("auto", "soft", "hard"), default="auto",
                   help="auto: soft when every file has probabilities, else hard")
    p = add_with_files("diff", serving.cmd_diff,
            "where two submissions (or two runs' submission.csv) disagree, per head")
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
    p.set_defaults(fn=evidence.cmd_compare)
    p = sub.add_parser("runs", help="list runs with key metrics, leaderboard scores and differing config keys")
    p.add_argument("runs_dir", nargs="?", default="runs")
    p.add_argument("--figure", help="also plot CV against the leaderboard over all runs into this PNG")
    p.set_defaults(fn=evidence.cmd_runs, overrides=[])
    p = sub.add_parser("lb", help="record a leaderboard score of a run's submission (shown by `mcls runs`)")
    p.add_argument("run", help="the run folder whose submission.csv was scored")
    p.add_argument("public", type=float, help="the public leaderboard's macro F1")
    p.add_argument("--private", type=float, help="the private leaderboard's macro F1, once known")
    p.add_argument("--note", help="a word on what was submitted")
    p.add_argument("--persons", type=int, help="persons the public board scores (default: half of the run's "
                                               "data_dir eval images / 7)")
    p.add_argument("--against", metavar="RUN", help="also the board's noise on this run's difference from RUN "
                                                    "(both trained on the same folds)")
    p.set_defaults(fn=evidence.cmd_lb, overrides=[])
    for command in sub.choices.values():
        command.add_argument("--check", action="store_true",
                             help="check the command's keys and values, then stop: nothing is trained or written")
    return parser
