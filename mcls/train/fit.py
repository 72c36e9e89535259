"""Fitting one fold: epochs (mcls.train.steps) validated as served, the best kept (EMA, early stop, atomic
checkpoints, exact resume), then the fold's scores and evidence."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from mcls.config import Config
from mcls.data.dataset import TARGET_COLUMNS, ImageArrayDataset, targets_of
from mcls.infer.predictor import predict_dataset
from mcls.infer.serving import Serving
from mcls.io import write_csv, write_json
from mcls.labels import PROB_COLUMNS
from mcls.metrics import confusion, macro_f1, score
from mcls.model.checkpoint import load_checkpoint, load_training_state, save_best, save_training_state
from mcls.runs.layout import FLIP_COLUMNS, Fold
from mcls.runtime import distributed
from mcls.runtime.device import Runtime, seed_everything
from mcls.train.steps import Parts, build, train_epoch

log = logging.getLogger(__name__)


def run_epoch(cfg: Config, rt: Runtime, parts: Parts, val_ds: ImageArrayDataset, epoch: int,
              groups: np.ndarray | None = None) -> dict:
    """Trains epoch `epoch` and validates the scored weights; returns the epoch's metrics row: the per-image
    scores (f1, ...) and `served_f1`, the macro F1 as the config serves the fold (flip TTA, person sharing within the
    blind `groups`), which chooses the best epoch: a choice made on the per-image score made that score a maximum
    over epochs while the served one was read at an epoch it did not choose."""
    stats = train_epoch(cfg, rt, parts, epoch)
    views = predict_dataset(parts.scored, val_ds, rt, rt.eval_batch(cfg.batch_size), num_workers=cfg.num_workers,
                            desc="validate", views=cfg.tta)
    probs = views[0] if cfg.tta else views
    labels = val_ds.targets[:, TARGET_COLUMNS.index("label")]
    served = Serving.of_config(cfg).finish(views.mean(0) if cfg.tta else probs, groups)
    val_loss = float(-np.log(np.clip(probs[np.arange(len(probs)), labels], 1e-12, None)).mean())
    return {"epoch": epoch + 1, **stats, "val_loss": val_loss, **score(labels, probs),
            "served_f1": macro_f1(labels, served.argmax(1)), "lr": parts.optimizer.param_groups[0]["lr"]}


def record_epoch(state: dict, row: dict) -> bool:
    """Adds the epoch to the loop's state (history, best epoch, patience); True when it is the best so far, as
    served (a row from before served_f1 was kept counts its per-image F1)."""
    state["history"].append(row)
    chosen = row.get("served_f1", row["f1"])
    improved = chosen > state["best_f1"]
    if improved:
        state.update(best_f1=chosen, best_epoch=row["epoch"], bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    state["epoch"] = row["epoch"]
    return improved


def fit(cfg: Config, train_df: pd.DataFrame, val_df: pd.DataFrame, train_images: np.ndarray,
        val_images: np.ndarray, out: Fold, resume: bool = False, extra=None, on_epoch=None, init=None) -> dict:
    """Trains one fold, validating every epoch; writes metrics.csv, last.pt, best.pt and val predictions.

    `extra` = (images, targets) joins training only (pseudo-labelled images, external faces with mask -1; targets
    in TARGET_COLUMNS order);
    `init` = a pretrained face backbone file the model starts from.

    Each epoch seeds its order, augmentation, mixing and dropout from (seed, epoch), so a run resumed from
    last.pt ends exactly as an uninterrupted one would (on CPU). Under torchrun every rank runs this; rank 0
    alone writes files.
    """
    rt = Runtime.from_config(cfg)
    log.info("fold %s on %s", out.k, rt.describe())
    seed_everything(cfg.training_seed)
    parts = build(cfg, rt, train_df, train_images, extra, init)
    val_ds = ImageArrayDataset(val_images, targets_of(val_df))
    # the blind person groups depend on the images alone: found once, they serve every epoch's choice and the end
    groups = dataclasses.replace(Serving.of_config(cfg), person_consistent=True).groups(val_images)
    state = {"epoch": 0, "best_f1": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": []}
    if distributed.is_main():
        out.dir.mkdir(parents=True, exist_ok=True)
    if resume and out.last.exists():
        state = load_training_state(out.last, parts.resumable(rt), rt.device)
        log.info("resumed %s after epoch %d", out.dir, state["epoch"])
    while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
        row = run_epoch(cfg, rt, parts, val_ds, state["epoch"], groups if cfg.person_consistent else None)
        improved = record_epoch(state, row)
        if distributed.is_main():
            if improved:
                save_best(out.best, parts.scored, cfg, row)
            save_training_state(out.last, parts.resumable(rt), state, cfg)
            write_csv(out.metrics, pd.DataFrame(state["history"]))
        distributed.barrier()
        log.info("fold %s epoch %d/%d: train loss %.3f, val loss %.3f, val F1 %.3f as served (%.3f per image: mask "
                 "%.3f, gender %.3f, age %.3f), %.0f img/s%s", out.k, row["epoch"], cfg.epochs, row["train_loss"],
                 row["val_loss"], row["served_f1"], row["f1"], row["f1_mask"], row["f1_gender"], row["f1_age"],
                 row["train_img_per_s"],
                 "  *best" if improved else "")
        if on_epoch is not None and distributed.is_main():
            on_epoch(out.k, row)
    return finish_fold(cfg, out, val_df, val_ds, rt, state, groups)


def finish_fold(cfg, out: Fold, val_df, val_ds, rt: Runtime, state: dict, groups: np.ndarray) -> dict:
    """Scores the best checkpoint on the whole validation fold as the config serves it, with and without person
    sharing, and saves the evidence: the images' and their mirrors' probabilities and the blind person groups, so
    that every serving policy can be scored later from the file alone."""
    from mcls.analysis.plots import confusion_matrix_figure, learning_curves_figure, save
    from mcls.infer.persons import consistency_scores

    model = rt.prepare(load_checkpoint(out.best, rt.device)[0])
    plain, mirrored = predict_dataset(model, val_ds, rt, rt.eval_batch(cfg.batch_size), views=True,
                                      num_workers=cfg.num_workers, desc="validate best")
    serving = dataclasses.replace(Serving.of_config(cfg, (out.run,)), person_consistent=True)
    probs = serving.with_face((plain + mirrored) / 2 if serving.tta else plain, val_df["path"], [out.k])
    labels = val_df["label"].to_numpy()
    shared = serving.finish(probs, groups)
    result = {"best_epoch": state["best_epoch"], "epochs_run": state["epoch"], "n_val_images": len(val_df),
              "n_val_persons": int(val_df["person"].nunique()), "tta": cfg.tta, **score(labels, probs),
              **consistency_scores(labels, shared, groups, val_df["person"].to_numpy())}
    if distributed.is_main():
        pred = val_df[["person", "path", "label"]].copy()
        pred["group"] = groups
        pred["pred"] = probs.argmax(1)
        pred[PROB_COLUMNS] = plain.round(5)
        pred[FLIP_COLUMNS] = mirrored.round(5)
        write_csv(out.predictions, pred)
        write_json(out.summary, result)
        save(confusion_matrix_figure(confusion(labels, probs), cfg.age_bounds), out.figure("confusion_matrix"))
        save(learning_curves_figure(pd.DataFrame(state["history"])), out.figure("learning_curves"))
    distributed.barrier()
    return result
