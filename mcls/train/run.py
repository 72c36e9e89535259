"""Training a run: data table -> folds -> one cached image array -> fit per fold -> run summary."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from mcls.config import JOINS, PRETRAINS, Config
from mcls.data.cache import cached_images
from mcls.data.faces import CropSettings
from mcls.data.folds import assign_folds
from mcls.data.table import as_given, data_fingerprint, load_train_table
from mcls.infer.calibration import calibrate_run
from mcls.infer.serving import Serving
from mcls.io import write_json
from mcls.labels import near_edge
from mcls.metrics import epoch_choice_scores
from mcls.runs.layout import Fold, Run
from mcls.runs.records import open_run, write_run_info
from mcls.runs.tracking import log_run
from mcls.runtime import distributed
from mcls.train.fit import fit
from mcls.train.joint import joined
from mcls.train.preflight import check_references

log = logging.getLogger(__name__)


def load_training_data(cfg: Config) -> tuple[pd.DataFrame, np.ndarray]:
    """The image table (with a `fold` column) and its decoded images; unreadable images dropped if on_bad_image=skip."""
    table = load_train_table(cfg.data_dir, cfg.age_bounds, cfg.train_old_age, cfg.relabel_file or None)
    crop = CropSettings.from_config(cfg)
    if not distributed.is_main():  # rank 0 decodes into the cache first; the others then read its memory map
        distributed.barrier()
    images, bad = cached_images(table["path"], cfg.img_size, cfg.on_bad_image, crop, cfg.image_cache, cfg.max_pixels)
    if distributed.is_main():
        distributed.barrier()
    if bad:
        keep = np.setdiff1d(np.arange(len(table)), bad)
        table, images = table.iloc[keep].reset_index(drop=True), images[keep]
    table["fold"] = assign_folds(table, cfg.n_folds, cfg.seed)
    return table, images


def train(cfg: Config, resume: bool = False, folds: list[int] | None = None, on_epoch=None,
          given: tuple[str, ...] = ()) -> dict:
    """Trains `cfg.fold` (or every fold when fold=-1; or the given `folds`) into the run folder; returns the run
    summary. `on_epoch(fold, row)` is called after each validated epoch (a sweep reports to its pruner there, and
    may stop the run by raising). `given` names the keys the user set: a resumed run takes those that place it
    (records.resumed_config).

    Under torchrun every process calls this: rank 0 opens the run folder and tells the others where it is, and
    only rank 0 writes run records.
    """
    distributed.init(cfg.device)
    opened = None
    if distributed.is_main():
        try:
            if not resume:  # a resumed run is checked as saved, below
                check_references(cfg.resolved())
            opened = open_run(cfg.resolved(), resume=resume, given=given)
            if resume:
                check_references(opened[0])
        except Exception as err:  # every rank must learn of it, or the others wait forever
            opened = err
    opened = distributed.broadcast(opened)
    if isinstance(opened, Exception):
        raise opened
    cfg, run_dir = opened
    try:
        table, images = load_training_data(cfg)
        if distributed.is_main():
            write_run_info(run_dir, data_fingerprint(table), len(table), {"processes": distributed.world()})
        folds = folds if folds is not None else range(cfg.n_folds) if cfg.fold == -1 else [cfg.fold]
        results = {}
        for k in folds:
            results[k] = fit_fold(cfg, table, images, k, Run(run_dir).fold(k), resume=resume, on_epoch=on_epoch)
    except BaseException:
        if not resume and distributed.is_main():
            forget_unstarted(Run(run_dir))
        raise
    summary = summarise_folds(results)
    summary.update(epoch_choice_scores({k: pd.read_csv(Run(run_dir).fold(k).metrics) for k in results}))
    if cfg.members:
        summary.update(train_members(cfg, run_dir))
    if distributed.is_main():
        if cfg.calibrate_age:
            summary.update(calibrate(run_dir))
        write_json(Run(run_dir).summary_file, summary)
        log_run(cfg, run_dir)
    distributed.barrier()
    return summary


def forget_unstarted(run: Run) -> None:
    """A run that failed before its first epoch was saved holds nothing worth resuming: its records go, so that
    the same command, fixed, starts again instead of being refused as an existing run."""
    if any(run.path.glob("fold*/last.pt")):
        return
    for path in (run.config_file, run.info_file):
        path.unlink(missing_ok=True)
    for sub in sorted(run.path.glob("fold*"), reverse=True):
        if sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()
    if run.path.is_dir() and not any(run.path.iterdir()):
        run.path.rmdir()


def train_members(cfg: Config, run_dir) -> dict:
    """Trains each ensemble member into <run>/members/<name> (resuming one already started), then scores the
    averaged out-of-fold predictions of the run and its members (ens_*)."""
    from mcls.train.members import ensemble_scores, member_configs

    for name, member in member_configs(cfg):
        log.info("ensemble member %s: %s", name, member.run_dir)
        train(member, resume=Run(member.run_dir).config_file.exists())
    if not distributed.is_main():
        return {}
    scores = ensemble_scores(Serving.resolve(run_dir, {"calibrate_age": False}))
    if scores:
        log.info("ensemble of %d runs, folds %s: macro F1 %.4f (+- %.4f)", len(scores["ens_members"]),
                 scores["ens_folds"], scores["ens_f1"], scores["ens_f1_std"])
    return scores


def fit_fold(cfg: Config, table: pd.DataFrame, images: np.ndarray, k: int, out: Fold, resume: bool = False,
             on_epoch=None) -> dict:
    """Fold k against the rest, with pseudo-labelled images and external faces added to training when the config
    asks."""
    is_val = (table["fold"] == k).to_numpy()
    train_rows = ~is_val & ~near_edge(table["age"], cfg.age_bounds, cfg.near_edge_drop)
    log.info("fold %d: %d training / %d validation images%s", k, train_rows.sum(), is_val.sum(),
             f" ({(~is_val).sum() - train_rows.sum()} near-edge ages left out of training)" if cfg.near_edge_drop
             else "")
    if cfg.face_weight:
        from mcls.infer.face_expert import fit_fold_expert

        if distributed.is_main():
            out.dir.mkdir(parents=True, exist_ok=True)
            fit_fold_expert(cfg, table, k, out.face_expert)
        distributed.barrier()
    init, external = None, None
    if cfg.external_data:
        from mcls.train.joint import joint_faces
        from mcls.train.pretrain import prepare_external

        prepare_external(cfg, out.run)  # every rank: rank 0 screens, all pretrain together
        init = out.run.pretrained_face if cfg.external_training in PRETRAINS else None
        external = joint_faces(cfg, out.run) if cfg.external_training in JOINS else None
    pseudo = None
    if cfg.pseudo_label != "none":
        from mcls.train.pseudo import pseudo_labelled

        pseudo = pseudo_labelled(cfg, k, images[is_val])
    extra = joined(pseudo, external)
    # relabel decisions move training targets only; validation scores the labels as given (as_given)
    result = fit(cfg, table[train_rows].reset_index(drop=True), as_given(table[is_val]).reset_index(drop=True),
                 images[train_rows], images[is_val], out, resume=resume, extra=extra, on_epoch=on_epoch, init=init)
    return {**result, "n_pseudo": 0 if pseudo is None else len(pseudo[0]),
            "n_external": 0 if external is None else len(external[0])}


def calibrate(run_dir, overrides: dict | None = None) -> dict:
    """Fits the age-band bias on every finished fold of the run as it is served (with serving-key `overrides`; for
    a run with members: on their average); its nested scores go into the summary as cal_*."""
    fit = calibrate_run(Run.open(run_dir), Serving.resolve(run_dir, {**(overrides or {}), "calibrate_age": False}))
    if fit is None:
        log.info("age calibration skipped: it needs validation predictions of 2 or more folds (fold=-1 trains all)")
        return {}
    log.info("age calibration on folds %s: log-prior bias %s, macro F1 %.4f -> %.4f (each fold's bias fitted on "
             "the other folds)", fit["folds"], fit["age_log_bias"], fit["f1_before"], fit["f1_after"])
    return {"cal_age_log_bias": fit["age_log_bias"], "cal_folds": fit["folds"],
            **{f"cal_{k}": fit[f"{k}_after"] for k in ("f1", "acc", "acc_age", "f1_age", "f1_old")},
            "cal_f1_std": fit["f1_after_std"]}


def summarise_folds(results: dict[int, dict]) -> dict:
    """Mean (and spread) of each fold metric; `folds` lists the folds behind it."""
    df = pd.DataFrame(results.values())
    keys = [c for c in df.columns if c.startswith(("f1", "acc", "pc_", "group_ari"))]
    out = {k: float(df[k].mean()) for k in keys}
    out.update({f"{k}_std": float(df[k].std(ddof=0)) for k in ("f1", "f1_age", "f1_old", "pc_f1") if k in df})
    out["folds"] = list(results)
    out["per_fold"] = {str(k): v for k, v in results.items()}
    return out
