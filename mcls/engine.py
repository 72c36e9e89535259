"""Training core: train_one_epoch / predict_probs / fit, atomic checkpoints, exact resume."""
from __future__ import annotations

import contextlib
import logging
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import Subset
from tqdm.auto import tqdm

from . import distributed

from .config import Config
from .dataset import ImageArrayDataset, epoch_order, epoch_rows, make_loader, targets_of
from .io import save_torch, write_csv, write_json
from .labels import HEAD_SIZES, NUM_CLASSES, PROB_COLUMNS
from .losses import AgeDistributionLoss, create_loss, inverse_frequency_weights
from .metrics import confusion, score
from .mixing import BatchMixer
from .models import AGE_BINS, MaskClassifier, class_log_probs, model_from_config
from .transforms import create_train_transform

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- runtime
def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", distributed.local_rank()) if distributed.active() else torch.device("cuda")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} asked for, but torch sees no CUDA GPU")
    return device


class Runtime:
    """Device, mixed precision and memory format, decided once from the config."""

    def __init__(self, cfg: Config):
        self.device = select_device(cfg.device)
        cuda = self.device.type == "cuda"
        self.amp_dtype = None
        if cuda and cfg.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and cuda)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.pin_memory = cuda

    def eval_batch(self, train_batch: int) -> int:
        """Images per inference forward pass, flipped TTA copies included. On CPU larger batches are slower per
        image (lite0 at 112 px: 237 img/s at 32, 188 at 64, 156 at 128), so inference keeps the training batch;
        GPUs want more."""
        return train_batch * 4 if self.device.type == "cuda" else train_batch

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def progress(iterable, **kwargs):
    """tqdm that redraws rarely when nobody watches a terminal (CI logs, papermill), so logs stay short."""
    interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
    return tqdm(iterable, mininterval=0.5 if interactive else 30, leave=False, disable=not distributed.is_main(),
                **kwargs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------- losses
class TaskLoss(torch.nn.Module):
    """Weighted sum of per-head losses (multi-head) or one loss over the 18 training classes (single head).

    Targets columns: mask, gender, age_band_train, label, age (see dataset.TARGET_COLUMNS). An exact-age head
    learns the age distribution; with age_head=both the 3-way band head trains beside it at the same weight.
    """

    def __init__(self, cfg: Config, train_targets: np.ndarray):
        super().__init__()
        self.multi = cfg.heads == "multi"
        self.age_head = cfg.age_head
        weighted = cfg.loss in ("weighted_ce", "focal")

        def make(targets, n):
            w = inverse_frequency_weights(targets, n) if weighted else None
            return create_loss(cfg.loss, w, cfg.label_smoothing, cfg.focal_gamma)

        if self.multi:
            self.losses = torch.nn.ModuleList(make(train_targets[:, i], n) for i, n in enumerate(HEAD_SIZES.values()))
            self.weights = list(cfg.loss_weights)
            self.age_dist = AgeDistributionLoss(AGE_BINS, cfg.age_sigma)
        else:
            self.losses = torch.nn.ModuleList([make(self.train_class(train_targets), NUM_CLASSES)])

    @staticmethod
    def train_class(targets):
        """Class with the training-only age band; tensors stay tensors (labels.encode would make numpy)."""
        return 6 * targets[:, 0] + 3 * targets[:, 1] + targets[:, 2]

    def forward(self, outputs, targets):
        if not self.multi:
            return self.losses[0](outputs["class"], self.train_class(targets))
        (w_mask, w_gender, w_age), (f_mask, f_gender, f_age) = self.weights, self.losses
        total = w_mask * f_mask(outputs["mask"], targets[:, 0]) + w_gender * f_gender(outputs["gender"], targets[:, 1])
        if self.age_head in ("band", "both"):
            total = total + w_age * f_age(outputs["age_band" if self.age_head == "both" else "age"], targets[:, 2])
        if self.age_head in ("dist", "both"):
            total = total + w_age * self.age_dist(outputs["age_dist"], targets[:, 4])
        return total


# ------------------------------------------------------------------------------------------------- loops
def train_one_epoch(model, loader, loss_fn, optimizer, scheduler, rt: Runtime, desc: str = "train",
                    mixer: BatchMixer | None = None, ema=None) -> dict:
    model.train()
    total, count, start = 0.0, 0, time.perf_counter()
    for x, y, _ in progress(loader, desc=desc):
        x, y = rt.to_input(x), y.to(rt.device, non_blocking=True)
        x, perm, lam = mixer(x) if mixer is not None else (x, None, 1.0)
        with rt.autocast():
            out = model(x)
            loss = loss_fn(out, y)
            if perm is not None:
                loss = lam * loss + (1 - lam) * loss_fn(out, y[perm])
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


@torch.no_grad()
def predict_probs(models, loader, rt: Runtime, tta: bool = False, desc: str = "predict") -> np.ndarray:
    """(N, 18) class probabilities averaged over models (and flips), in the loader's (never shuffled) order."""
    models = models if isinstance(models, (list, tuple)) else [models]
    for m in models:
        m.eval()
    out, seen = [], []
    for x, _, idx in progress(loader, desc=desc):
        x = rt.to_input(x)
        if tta:  # flipped copies ride in the same batch
            x = torch.cat([x, x.flip(-1)])
        p = 0
        with rt.autocast():
            for m in models:
                p = p + class_log_probs(m(x)).exp()
        p = p / len(models)
        if tta:
            p = (p[: len(idx)] + p[len(idx):]) / 2
        out.append(p.float().cpu())
        seen.append(idx)
    seen = torch.cat(seen).numpy()
    expected = np.asarray(getattr(loader.dataset, "indices", np.arange(len(loader.dataset))))
    if len(seen) != len(expected) or not np.array_equal(seen, expected):
        raise RuntimeError(f"prediction scored {len(seen)} of {len(expected)} rows or out of order: refusing to "
                           "continue")
    return torch.cat(out).numpy()


def predict_dataset(models, dataset, rt: "Runtime", batch_size: int, tta: bool = False, num_workers: int = 0,
                    desc: str = "predict") -> np.ndarray:
    """predict_probs over a whole dataset; under torchrun each rank scores its share and all get every row.

    `batch_size` counts images per forward pass: with TTA the loader takes half as many, and their flips ride
    along, so TTA costs twice the work and not a slower batch size on top."""
    rows = distributed.shard(len(dataset))
    part = dataset if len(rows) == len(dataset) else Subset(dataset, rows)
    per_load = max(1, batch_size // 2) if tta else batch_size
    loader = make_loader(part, per_load, train=False, num_workers=num_workers, pin_memory=rt.pin_memory)
    return distributed.gather_concat(predict_probs(models, loader, rt, tta=tta, desc=desc))


def lr_lambda(warmup_steps: int, total_steps: int):
    def f(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return f


# ------------------------------------------------------------------------------------------------- fit
def fit(cfg: Config, train_df: pd.DataFrame, val_df: pd.DataFrame, train_images: np.ndarray,
        val_images: np.ndarray, out_dir: str | Path, resume: bool = False, extra=None) -> dict:
    """Trains one fold, validating every epoch; writes metrics.csv, last.pt, best.pt and val predictions.

    `extra` = (images, targets) joins training only (pseudo-labelled images; targets in TARGET_COLUMNS order).

    Each epoch seeds its order, augmentation, mixing and dropout from (seed, epoch), so a run resumed from
    last.pt ends exactly as an uninterrupted one would (on CPU). Under torchrun every rank runs this; rank 0
    alone writes files.
    """
    out_dir = Path(out_dir)
    rt = Runtime(cfg)
    seed_everything(cfg.training_seed)
    net = rt.prepare(model_from_config(cfg))
    model = distributed.wrap(net, rt.device, cfg.sync_bn)
    if cfg.compile:  # training steps only; validation, EMA and checkpoints use the plain module
        model = torch.compile(model)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True) \
        if cfg.ema_decay else None
    scored = ema.module if ema is not None else net  # the weights validated, kept and shipped
    train_targets = targets_of(train_df)
    train_persons = pd.factorize(train_df["person"])[0]
    if extra is not None and len(extra[0]):
        train_images = np.concatenate([train_images, extra[0]])
        train_targets = np.concatenate([train_targets, extra[1]])
        train_persons = np.concatenate([train_persons, np.full(len(extra[0]), -1)])
    loss_fn = TaskLoss(cfg, train_targets).to(rt.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rows_per_epoch = len(epoch_rows(train_targets, train_persons, cfg.wear_per_person, 0))
    steps_per_epoch = math.ceil(rows_per_epoch / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(int(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch))
    mixer = BatchMixer(cfg.mix, cfg.mix_prob, cfg.mix_alpha) if cfg.mix != "none" else None
    train_ds = ImageArrayDataset(train_images, train_targets, create_train_transform(cfg.augment))
    val_ds = ImageArrayDataset(val_images, targets_of(val_df))
    state = {"epoch": 0, "best_f1": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": []}
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
    if resume and last_path.exists():
        ckpt = torch.load(last_path, map_location=rt.device, weights_only=False)
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        rt.scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        state = ckpt["state"]
        log.info("resumed %s after epoch %d", out_dir, state["epoch"])

    val_labels = val_df["label"].to_numpy()
    sampler = distributed.GlobalBatchSampler(cfg.batch_size)
    # one loader per fold: its workers persist across epochs, the sampler hands them each epoch's order and seed
    loader = make_loader(train_ds, cfg.batch_size // distributed.world(), train=True, num_workers=cfg.num_workers,
                         pin_memory=rt.pin_memory, sampler=sampler)
    while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
        epoch = state["epoch"]
        epoch_seed = cfg.training_seed * 1000 + epoch
        seed_everything(epoch_seed)
        if mixer is not None:
            mixer.reseed(epoch_seed)
        sampler.set_epoch(epoch_order(train_targets, epoch_seed, cfg.sampler, train_persons, cfg.wear_per_person),
                          epoch_seed)
        stats = train_one_epoch(model, loader, loss_fn, optimizer, scheduler, rt, desc=f"epoch {epoch + 1}",
                                mixer=mixer, ema=ema)
        stats["train_loss"] = distributed.mean_over_ranks(stats["train_loss"], len(loader.sampler))
        probs = predict_dataset(scored, val_ds, rt, rt.eval_batch(cfg.batch_size), num_workers=cfg.num_workers,
                                desc="validate")
        val_loss = float(-np.log(np.clip(probs[np.arange(len(probs)), val_labels], 1e-12, None)).mean())
        row = {"epoch": epoch + 1, **stats, "val_loss": val_loss, **score(val_labels, probs),
               "lr": optimizer.param_groups[0]["lr"]}
        state["history"].append(row)
        improved = row["f1"] > state["best_f1"]
        if improved:
            state.update(best_f1=row["f1"], best_epoch=epoch + 1, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        if distributed.is_main():
            if improved:
                save_torch(best_path, {"model": scored.state_dict(), "config": cfg.to_dict(), "epoch": epoch + 1,
                                       "metrics": row})
            save_torch(last_path, {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                                   "scheduler": scheduler.state_dict(), "scaler": rt.scaler.state_dict(),
                                   "ema": ema.state_dict() if ema is not None else None,
                                   "state": state, "config": cfg.to_dict()})
            write_csv(out_dir / "metrics.csv", pd.DataFrame(state["history"]))
        distributed.barrier()
        log.info("epoch %d: loss %.4f  val f1 %.4f (mask %.3f gender %.3f age %.3f)  %.1f img/s%s", epoch + 1,
                 row["train_loss"], row["f1"], row["f1_mask"], row["f1_gender"], row["f1_age"],
                 row["train_img_per_s"], "  *best" if improved else "")
    return finish_fold(cfg, out_dir, val_df, val_ds, rt, state)


def finish_fold(cfg, out_dir: Path, val_df, val_ds, rt: Runtime, state: dict) -> dict:
    """Scores the best checkpoint on the whole validation fold (with TTA when configured), with and without
    person-consistent inference, and saves the evidence."""
    from .persons import consistency_scores, person_consistent
    from .plots import confusion_matrix_figure, learning_curves_figure, save

    model = rt.prepare(load_checkpoint(out_dir / "best.pt", rt.device)[0])
    probs = predict_dataset(model, val_ds, rt, rt.eval_batch(cfg.batch_size), tta=cfg.tta, num_workers=cfg.num_workers,
                            desc="validate best")
    labels = val_df["label"].to_numpy()
    shared, groups = person_consistent(probs, val_ds.images, cfg.group_threshold)
    result = {"best_epoch": state["best_epoch"], "epochs_run": state["epoch"], "n_val_images": len(val_df),
              "n_val_persons": int(val_df["person"].nunique()), "tta": cfg.tta, **score(labels, probs),
              **consistency_scores(labels, shared, groups, val_df["person"].to_numpy())}
    if distributed.is_main():
        # raw probabilities plus the blind person groups: calibration re-shares them the way prediction does
        pred = val_df[["person", "path", "label"]].copy()
        pred["group"] = groups
        pred["pred"] = probs.argmax(1)
        pred[PROB_COLUMNS] = probs.round(5)
        write_csv(out_dir / "val_predictions.csv", pred)
        write_json(out_dir / "summary.json", result)
        save(confusion_matrix_figure(confusion(labels, probs), cfg.age_bounds), out_dir / "confusion_matrix.png")
        save(learning_curves_figure(pd.DataFrame(state["history"])), out_dir / "learning_curves.png")
        import matplotlib.pyplot as plt

        plt.close("all")
    distributed.barrier()
    return result


def load_checkpoint(path: str | Path, device="cpu") -> tuple[MaskClassifier, Config]:
    """Rebuilds the model from the config stored inside the checkpoint (no weights are fetched)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    ckpt = torch.load(path, map_location=device, weights_only=False)
    cfg = Config.from_dict(ckpt["config"], source=str(path))
    model = model_from_config(cfg, pretrained="none")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit backbone {cfg.backbone!r} / heads {cfg.heads!r}: "
                         f"{str(err).splitlines()[0]}") from None
    return model.to(device).eval(), cfg
