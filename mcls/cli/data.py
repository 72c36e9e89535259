"""`mcls folds | check | crop | leak-check | relabel | cam`: the data, its faces and labels, and where models look."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from mcls.cli.keys import config_of, leak_check_config
from mcls.config import Config, ConfigError


def cmd_folds(args) -> None:
    from mcls.data.folds import assign_folds, fold_summary
    from mcls.data.table import load_train_table

    cfg = config_of(args)
    table = load_train_table(cfg.data_dir, cfg.age_bounds, cfg.train_old_age, cfg.relabel_file or None)
    print(fold_summary(table, assign_folds(table, cfg.n_folds, cfg.seed)).to_string())


def cmd_check(args) -> None:
    """Validates the data folder (every problem listed) and prints what was found."""
    from mcls.data.cache import load_images
    from mcls.data.table import load_eval_table, load_train_table

    cfg = config_of(args)
    table = load_train_table(cfg.data_dir, cfg.age_bounds, cfg.train_old_age, cfg.relabel_file or None)
    info = load_eval_table(cfg.data_dir)
    _, bad = load_images(list(table["path"]) + list(info["path"]), 32, on_bad_image="skip", max_pixels=cfg.max_pixels)
    print(f"{cfg.data_dir}: {table['person'].nunique()} persons, {len(table)} training images, "
          f"{len(info)} eval images, {len(bad)} unreadable")
    if bad:
        sys.exit(1)


def cmd_crop(args) -> None:
    """Detects faces (cached) in data_dir's train and eval images or in --folder; writes the per-image report."""
    import pandas as pd

    from mcls.data.faces import CropSettings, crop_paths, detection_rate
    from mcls.data.table import list_images, load_eval_table, load_train_table
    from mcls.io import write_csv

    cfg = config_of(args)
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


def cmd_leak_check(args) -> None:
    """Compares an external face-age set with every competition photo and writes what would be dropped."""
    from mcls.analysis.leak_report import save_report
    from mcls.data.leak_guard import screen_external

    cfg = leak_check_config(args)
    if not cfg.external_data:
        raise ConfigError("leak-check needs external_data=<folder of UTKFace-named photos or path,age,gender CSV>")
    report = screen_external(cfg)  # the same reading, minimum age and guard as training: the same counts
    out = Path(args.out or Path("runs") / "leak-check" / Path(cfg.external_data).stem)
    save_report(report, out)
    print(report.line())
    print(f"pairs, kept faces and figures: {out}")


def cmd_relabel(args) -> None:
    """Writes the suspect queue (and the OOF probabilities behind it), or appends reviewed decisions."""
    import pandas as pd

    from mcls.analysis.relabel import run_finder
    from mcls.analysis.relabel_decisions import apply_decisions

    cfg = config_of(args)
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


def cmd_cam(args) -> None:
    """CAM grids (PNG) and face-energy figures (cam_energy.json) for a trained run, written into the run folder."""
    from mcls.analysis.cam_inspect import inspect_run

    cfg = config_of(args)
    # data_dir only re-roots image paths when given: by default the run's own val_predictions paths are used
    data_dir = cfg.data_dir if cfg.data_dir != Config().data_dir else None
    result = inspect_run(args.run, data_dir=data_dir, method=cfg.cam_method, n=cfg.cam_images, person=args.person,
                         max_images=args.max_images, out_dir=args.out, device=cfg.device)
    print(json.dumps(result["energy"]["heads"], indent=2))
    print("\n".join(str(p) for p in result["paths"].values()))
