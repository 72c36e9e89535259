"""Pretraining the gender/age backbone on external face-age photos, once, before any fold trains.

External faces carry an age and a gender, no mask state, and no competition label is read to train on them, so
one pretrained backbone serves every fold. First the leak guard drops each external face that shows a competition
person (train or eval photos), since another photo of a validation or test person would carry that person's labels
into their score. Faces younger than `external_min_age` are left out: the competition's persons are adults, and a
child's gender is a different problem. The rest, framed by the run's own face crop, train a one-backbone model's
gender and age heads (the mask loss weighs nothing) for `external_epochs`; its backbone and those heads then start
each fold's gender and age tasks (the mask task keeps its ImageNet start).

prepare_external runs the guard for every external_training (joint training reads the faces it kept:
mcls.train.joint) and pretrains for pretrain and both. The pretraining is cached by everything that shapes it (the
kept files, the crop, the keys in PRETRAIN_KEYS), so the folds of a run, its resumption and other runs on the same
external set train it once; each run keeps a copy and the guard's report in <run>/external/.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mcls.config import JOINS, PRETRAINS, Config
from mcls.data.cache import cache_key, cached_images
from mcls.data.faces import CropSettings
from mcls.io import atomic_path, file_digest, save_torch, write_json
from mcls.labels import age_band_names
from mcls.model.checkpoint import face_weights
from mcls.runs.layout import Run
from mcls.runtime import distributed

log = logging.getLogger(__name__)

# What shapes the pretrained weights besides the faces themselves; a change of any trains them afresh.
PRETRAIN_KEYS = ("backbone", "pretrained", "img_size", "drop_rate", "age_head", "age_sigma", "age_bounds",
                 "train_old_age", "loss", "loss_weights", "label_smoothing", "focal_gamma", "batch_size", "lr",
                 "weight_decay", "warmup_epochs", "augment", "sampler", "ema_decay", "external_epochs", "seed",
                 "train_seed")
VERSION = 2
NOT_WEAR = 2  # no external face wears a mask: their mask state is known, but it is not what they are here to teach


def pretrain_config(cfg: Config) -> Config:
    """The one-backbone model the external faces train: the run's face backbone and keys, its mask loss off."""
    _, w_gender, w_age = cfg.loss_weights
    return cfg.updated({"heads": "multi", "loss_weights": [0.0, w_gender, w_age], "epochs": cfg.external_epochs})


def with_targets(rows: pd.DataFrame, cfg: Config, mask: int) -> pd.DataFrame:
    """External rows with the kit's target columns, their mask state `mask` (-1: unknown, its loss ignored, and so
    is the 18-class label); each photo its own person, as no identities come with them."""
    from mcls.data.table import add_bands

    rows = rows.copy()
    rows["mask"] = max(mask, 0)
    add_bands(rows, "", tuple(cfg.age_bounds), cfg.train_old_age)
    if mask < 0:
        rows[["mask", "label"]] = -1
    rows["person"] = np.arange(len(rows))
    return rows


def prepare_external(cfg: Config, run: Run) -> Path | None:
    """Runs the leak guard on the run's external data once, keeping its report and record in <run>/external/, and
    when external_training pretrains, the pretrained face backbone (<run>/external/pretrained_face.pt): kept from
    before, copied from the cache, or trained now. Returns that backbone's path, or None when nothing pretrains."""
    pretrains = cfg.external_training in PRETRAINS
    # rank 0 decides for all: a rank that saw another rank's fresh record would leave the others waiting
    done = run.external_record.is_file() and (run.pretrained_face.is_file() or not pretrains)
    if distributed.broadcast(done):
        return run.pretrained_face if pretrains else None
    start = time.perf_counter()
    screened = None
    if distributed.is_main():
        from mcls.analysis.leak_report import save_report
        from mcls.data.leak_guard import screen_external

        report = screen_external(cfg)
        save_report(report, run.external_dir)
        log.info("external data %s: %s", cfg.external_data, report.line())
        screened = {"leak_guard": report.line(), "n_external": report.n_external, "left_out": report.left_out,
                    "threshold": report.threshold}
    screened = distributed.broadcast(screened)
    # every rank trains on the faces rank 0 kept, as joint training reads them
    rows = with_targets(pd.read_csv(run.external_dir / "external_kept.csv"), cfg, NOT_WEAR)
    record = {"external_data": cfg.external_data, "external_training": cfg.external_training, **screened,
              "min_age": cfg.external_min_age, "n_kept": len(rows), "ages": band_counts(rows, cfg),
              "external_share": cfg.external_share}
    if pretrains:
        record.update(pretrained(cfg, run, rows))
    record["prepare_seconds"] = time.perf_counter() - start
    if distributed.is_main():
        write_json(run.external_record, record)
    distributed.barrier()
    return run.pretrained_face if pretrains else None


def pretrained(cfg: Config, run: Run, rows: pd.DataFrame) -> dict:
    """Puts the face backbone pretrained on `rows` at run.pretrained_face (from the cache when it holds one for
    these inputs); returns the pretraining's record. Under torchrun every rank calls it and they pretrain
    together (DDP, as a fold trains); rank 0 writes."""
    crop = CropSettings.from_config(cfg)
    key = pretrain_key(cfg, rows, crop)
    cached = Path(cfg.pretrain_cache) / f"{key}.pt" if cfg.pretrain_cache else None
    record = {"key": key}
    entry = distributed.broadcast(cache_entry(cached) if cached is not None and distributed.is_main() else None)
    if entry is not None:
        record.update(entry, from_cache=str(cached))
        log.info("pretrained face backbone from the cache: %s", cached)
    else:
        images, bad = cached_images(rows["path"], cfg.img_size, "skip", crop, cfg.image_cache, cfg.max_pixels)
        keep = np.setdiff1d(np.arange(len(rows)), bad)
        trained = pretrain(cfg, rows.iloc[keep].reset_index(drop=True), np.asarray(images)[keep] if bad else images)
        record.update(trained["record"], n_unreadable=len(bad))
        if bad:  # the guard left out what it could not read; a photo that broke since is counted here
            log.warning("pretraining skipped %d unreadable external faces", len(bad))
        if distributed.is_main():
            save_torch(cached or run.pretrained_face, trained["weights"])
            if cached is not None:  # the record last, naming the weights it describes: see cache_entry
                write_json(cached.with_suffix(".json"), {**record, "weights_sha1": file_digest(cached)})
    if cached is not None and distributed.is_main():
        with atomic_path(run.pretrained_face) as tmp:
            shutil.copyfile(cached, tmp)
    distributed.barrier()
    return record


def band_counts(rows: pd.DataFrame, cfg: Config) -> dict:
    return {band: int(n) for band, n in zip(age_band_names(cfg.age_bounds),
                                            np.bincount(rows["age_band"], minlength=3))}


def cache_entry(weights: Path) -> dict | None:
    """The cached pretraining's record, or None (train again) unless both files are there and the record names
    these very weights: a crash between the two writes, or a file copied over by hand, is never served."""
    meta = weights.with_suffix(".json")
    if not (weights.is_file() and meta.is_file()):
        return None
    try:
        record = json.loads(meta.read_text())
        if record.get("weights_sha1") == file_digest(weights):
            return record
    except (OSError, ValueError):
        pass
    log.warning("pretraining cache %s does not match its record; pretraining again", weights)
    return None


def pretrain_key(cfg: Config, rows: pd.DataFrame, crop) -> str:
    """Every input of the pretrained weights: the photos (and their crop), the labels they train, the starting
    weights' content and the keys in PRETRAIN_KEYS."""
    from mcls.model.weights import weights_identity

    labels = rows[["path", "age", "gender"]].astype(str).agg("|".join, axis=1)
    blob = {"v": VERSION, "files": cache_key(rows["path"], cfg.img_size, crop),
            "labels": hashlib.sha1("\n".join(labels).encode()).hexdigest(),
            "start": weights_identity(cfg.backbone, cfg.pretrained),
            **{k: getattr(cfg, k) for k in PRETRAIN_KEYS}}
    return hashlib.sha1(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def pretrain(cfg: Config, rows: pd.DataFrame, images: np.ndarray) -> dict:
    """Trains pretrain_config(cfg) on the external faces; returns {"weights": the face backbone's and face heads'
    state dicts (the EMA's when there is one), "record": what it trained on and how long it took}."""
    from mcls.runtime.device import Runtime, seed_everything
    from mcls.train.steps import build, train_epoch

    pcfg = pretrain_config(cfg)
    rt = Runtime.from_config(pcfg)
    seed_everything(pcfg.training_seed)
    parts = build(pcfg, rt, rows, images)
    start, losses = time.perf_counter(), []
    for epoch in range(pcfg.epochs):
        stats = train_epoch(pcfg, rt, parts, epoch, desc="pretrain")
        losses.append(round(stats["train_loss"], 4))
        log.info("pretraining epoch %d/%d on %d external faces: train loss %.3f, %.0f img/s", epoch + 1, pcfg.epochs,
                 len(rows), stats["train_loss"], stats["train_img_per_s"])
    weights = face_weights(parts.scored, pcfg.backbone)
    record = {"n_trained": len(rows), "epochs": pcfg.epochs, "train_loss": losses,
              "pretrain_seconds": time.perf_counter() - start, "ages": band_counts(rows, pcfg)}
    return {"weights": weights, "record": record}


def external_lines(run: Run) -> list[str]:
    """What a user reads about a run's external data: the leak guard's line and what the kept faces trained; []
    when the run has none."""
    if not run.external_record.is_file():
        return []
    r = json.loads(run.external_record.read_text())
    ages = ", ".join(f"{band} {n}" for band, n in r.get("ages", {}).items())
    mode = r.get("external_training", "pretrain")
    uses = []
    if mode in PRETRAINS:
        uses.append(f"pretrained the gender/age backbone for {r['epochs']} epoch{'s' * (r['epochs'] != 1)} in "
                    f"{r['pretrain_seconds'] / 60:.1f} min"
                    + (f" (taken from the cache {r['from_cache']})" if "from_cache" in r else ""))
    if mode in JOINS:
        uses.append(f"join every fold's batches ({r['external_share']:g} per competition row an epoch, drawn anew; "
                    f"their mask loss ignored)")
    return [f"external data {r['external_data']}: {r['leak_guard']}",
            f"the {r['n_kept']} faces kept ({ages}) " + "; then ".join(uses),
            f"pairs and figures: {run.external_dir}"]
