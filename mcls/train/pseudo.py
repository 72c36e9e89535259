"""Pseudo-labelling: a first model's confident predictions on unlabelled images join a second model's training.

For fold k only the first run's fold-k model labels images, so no label of fold k's validation persons reaches
the second model through its teacher. pseudo_label=validation labels the validation fold's own images (their
labels are never read): the honest way to measure what pseudo-labelling of unseen persons buys.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mcls.config import Config
from mcls.data.cache import cached_images
from mcls.data.dataset import TARGET_COLUMNS
from mcls.data.faces import CropSettings
from mcls.data.table import load_eval_table
from mcls.errors import UserError
from mcls.labels import decode
from mcls.runs.layout import Run

log = logging.getLogger(__name__)


def teacher_checkpoint(run: str | Path, fold: int) -> Path:
    path = Run(run).fold(fold).best
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pseudo_run has no model for fold {fold}; train that fold of it first")
    return path


def pseudo_targets(probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(indices kept, their targets rows in TARGET_COLUMNS order; exact age unknown = -1)."""
    keep = np.flatnonzero(probs.max(1) >= threshold)
    label = probs[keep].argmax(1)
    mask, gender, band = decode(label)
    targets = np.stack([mask, gender, band, label, np.full(len(keep), -1)], 1).astype(np.int64)
    assert targets.shape[1] == len(TARGET_COLUMNS)
    return keep, targets


def unlabelled_images(cfg: Config, val_images: np.ndarray) -> np.ndarray:
    if cfg.pseudo_label == "validation":
        return val_images
    info = load_eval_table(cfg.data_dir)
    images, bad = cached_images(info["path"], cfg.img_size, "skip", CropSettings.from_config(cfg), cfg.image_cache,
                                cfg.max_pixels)
    return images[np.setdiff1d(np.arange(len(images)), bad)]


def pseudo_labelled(cfg: Config, fold: int, val_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(images, targets) that join fold `fold`'s training, as the config asks."""
    from mcls.data.dataset import ImageArrayDataset
    from mcls.infer.predictor import predict_dataset
    from mcls.infer.serving import Serving
    from mcls.model.checkpoint import load_checkpoint
    from mcls.runtime.device import Runtime

    images = unlabelled_images(cfg, val_images)
    rt = Runtime.from_config(cfg)
    checkpoint = teacher_checkpoint(cfg.pseudo_run, fold)
    teacher, teacher_cfg = load_checkpoint(checkpoint, rt.device)
    # the teacher's fold model as its run serves it, shared within this run's person groups, without an age bias
    serving = Serving.resolve(checkpoint, {"person_consistent": cfg.person_consistent,
                                           "group_threshold": cfg.group_threshold, "calibrate_age": False})
    if teacher_cfg.img_size != cfg.img_size:
        raise UserError(f"pseudo_run {cfg.pseudo_run} was trained at {teacher_cfg.img_size} px, this run at "
                        f"{cfg.img_size}: use a teacher of the same size")
    probs = predict_dataset(rt.prepare(teacher), ImageArrayDataset(images), rt, rt.eval_batch(cfg.batch_size),
                            tta=serving.tta, desc="pseudo-label")
    probs = serving.finish(probs, serving.groups(images))
    keep, targets = pseudo_targets(probs, cfg.pseudo_threshold)
    log.info("fold %d: %d of %d %s images pseudo-labelled (p >= %.2f)", fold, len(keep), len(images),
             cfg.pseudo_label, cfg.pseudo_threshold)
    return np.asarray(images[keep]), targets
