"""The steps of training one model, shared by fitting a fold (fit.py) and pretraining on external faces
(pretrain.py): what it trains with (build), one epoch (train_epoch, train_one_epoch) and the learning-rate schedule."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.optim.swa_utils import AveragedModel

from mcls.config import Config
from mcls.data.dataset import ImageArrayDataset, make_loader, targets_of
from mcls.model.checkpoint import load_face_weights
from mcls.model.classifier import model_from_config
from mcls.runtime import distributed
from mcls.runtime.device import Runtime, seed_everything
from mcls.runtime.progress import progress
from mcls.train.augment import create_train_transform
from mcls.train.ema import ema_model
from mcls.train.losses import TaskLoss
from mcls.train.mask_view import MaskView
from mcls.train.mixing import BatchMixer
from mcls.train.sampling import epoch_order, epoch_rows


def train_one_epoch(model, loader, loss_fn, optimizer, scheduler, rt: Runtime, desc: str = "train",
                    mixer: BatchMixer | None = None, ema=None, mask_view: MaskView | None = None) -> dict:
    model.train()
    total, count, start = 0.0, 0, time.perf_counter()
    for x, y, _ in progress(loader, desc=desc):
        x, y = rt.to_input(x), y.to(rt.device, non_blocking=True)
        x, task_inputs, y_other, lam = mixer.batch(x, y) if mixer is not None else (x, None, None, 1.0)
        if mask_view is not None:
            task_inputs = dict(task_inputs or {})
            task_inputs["mask"] = mask_view(task_inputs.get("mask", x))
        with rt.autocast():
            out = model(x, task_inputs)
            loss = loss_fn(out, y)
            if y_other is not None:
                loss = lam * loss + (1 - lam) * loss_fn(out, y_other)
        optimizer.zero_grad(set_to_none=True)
        rt.scaler.scale(loss).backward()
        rt.scaler.step(optimizer)
        rt.scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        total += loss.item() * len(x)
        count += len(x)
    seconds = time.perf_counter() - start
    return {"train_loss": total / count, "train_seconds": seconds, "train_img_per_s": count / seconds}


def lr_lambda(warmup_steps: int, total_steps: int):
    def f(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return f


def warmup_cosine(cfg: Config, optimizer, targets: np.ndarray, persons: np.ndarray):
    """The per-step schedule of a fold: linear warmup over cfg.warmup_epochs, then cosine to 1 % over cfg.epochs,
    counted in the batches an epoch's rows (epoch_rows) make."""
    rows = epoch_rows(targets, persons, cfg.wear_per_person, 0, cfg.external_share)
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(int(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch))


@dataclass
class Parts:
    """What one fold trains with, built once: the module trained (DDP-wrapped, maybe compiled), the plain module
    and its EMA (whose weights are validated, kept and shipped), the loss, optimiser, schedule, mixer, the mask
    task's view and the loader."""

    net: torch.nn.Module
    model: torch.nn.Module
    ema: AveragedModel | None
    loss_fn: TaskLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    mixer: BatchMixer | None
    mask_view: MaskView | None
    sampler: distributed.GlobalBatchSampler
    loader: torch.utils.data.DataLoader
    targets: np.ndarray
    persons: np.ndarray

    @property
    def scored(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.net

    def resumable(self, rt: Runtime) -> dict:
        """Everything last.pt holds besides the loop's own state."""
        return {"model": self.net, "optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": rt.scaler,
                "ema": self.ema}


def build(cfg: Config, rt: Runtime, train_df: pd.DataFrame, train_images: np.ndarray, extra=None,
          init=None) -> Parts:
    """The model, its EMA and everything that trains it; `extra` = (images, targets) joins training only (rows
    with mask -1 are external faces, drawn per epoch: sampling.epoch_rows); `init` is a pretrained face backbone
    (mcls.train.pretrain) the gender and age tasks start from."""
    model = model_from_config(cfg)
    if init is not None:
        load_face_weights(model, init)
    net = rt.prepare(model)
    model = distributed.wrap(net, rt.device, cfg.sync_bn)
    if cfg.compile:  # training steps only; validation, EMA and checkpoints use the plain module
        model = torch.compile(model)
    ema = ema_model(net, cfg.ema_decay) if cfg.ema_decay else None
    targets = targets_of(train_df)
    persons = pd.factorize(train_df["person"])[0]
    if extra is not None and len(extra[0]):
        train_images = np.concatenate([train_images, extra[0]])
        targets = np.concatenate([targets, extra[1]])
        persons = np.concatenate([persons, np.full(len(extra[0]), -1)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = warmup_cosine(cfg, optimizer, targets, persons)
    mixer = BatchMixer(cfg.mix, cfg.mix_prob, cfg.mix_alpha, tasks=cfg.mix_tasks) if cfg.mix != "none" else None
    mask_view = MaskView(cfg.mask_view) if cfg.mask_view != "none" else None
    train_ds = ImageArrayDataset(train_images, targets, create_train_transform(cfg.augment))
    sampler = distributed.GlobalBatchSampler(cfg.batch_size)
    # one loader per fold: its workers persist across epochs, the sampler hands them each epoch's order and seed
    loader = make_loader(train_ds, cfg.batch_size // distributed.world(), train=True, num_workers=cfg.num_workers,
                         pin_memory=rt.pin_memory, sampler=sampler)
    return Parts(net, model, ema, TaskLoss(cfg, targets).to(rt.device), optimizer, scheduler, mixer, mask_view, sampler,
                 loader, targets, persons)


def train_epoch(cfg: Config, rt: Runtime, parts: Parts, epoch: int, desc: str = "epoch") -> dict:
    """Trains epoch `epoch` (0-based; its order, augmentation, mixing and dropout seeded from (seed, epoch));
    returns its training stats."""
    epoch_seed = cfg.training_seed * 1000 + epoch
    seed_everything(epoch_seed)
    for drawn in (parts.mixer, parts.mask_view):
        if drawn is not None:
            drawn.reseed(epoch_seed)
    parts.sampler.set_epoch(epoch_order(parts.targets, epoch_seed, cfg.sampler, parts.persons, cfg.wear_per_person,
                                        cfg.external_share), epoch_seed)
    stats = train_one_epoch(parts.model, parts.loader, parts.loss_fn, parts.optimizer, parts.scheduler, rt,
                            desc=f"{desc} {epoch + 1}", mixer=parts.mixer, ema=parts.ema,
                            mask_view=parts.mask_view)
    stats["train_loss"] = distributed.mean_over_ranks(stats["train_loss"], len(parts.loader.sampler))
    return stats
