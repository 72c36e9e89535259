"""Where one default fold's minutes go: each part of fit() timed on its own, scaled to a whole fold.

    .venv/bin/python bench/profile_fold.py --data ../shared/data/utkmask          # the package's defaults
    .venv/bin/python bench/profile_fold.py --steps 4 --val 64                      # a quick look on data/sample
    .venv/bin/python bench/profile_fold.py --data ../shared/data/utkmask --external ../shared/data/utkface-extra

Run it alone: on 2 cores a second CPU-heavy job slows every figure 3-4x. It builds fold 0 exactly as fit() does
(mcls.train.steps.build) from the warm caches, then times, each over a few batches after a warm-up:

  reading       the decoded-once crop cache (memory-mapped) and, cold, MTCNN + decoding per image (a first run)
  augmentation  the training transform per image (albumentations), apart from the rest of the loader
  loader        a whole training batch out of the DataLoader (indexing, augmentation, collation)
  <backbone>    forward, and forward + backward, of each backbone alone at its input size on one in-memory batch:
                the synthetic compute limit (a one-backbone model with the three heads)
  model step    the default model's forward + backward + optimiser step on one in-memory batch, no mixing
  mask view, mixing, EMA   each as fit() applies it to one batch
  train step    a real step: loader, view, mixing, model, optimiser, EMA (what an epoch is made of)
  validation    the per-epoch pass over the fold's validation images (both flip views) and its scoring
  person groups the blind person groups, found once per fold (whatever the serving: the saved evidence holds them)
  checkpoints   best.pt + last.pt written once per epoch (best only when it improves: counted every epoch)
  external      with --external: the leak guard and the one-off pretraining on external faces (not in the fold's
                estimate: a run pays them once, and the pretraining cache once for every run with the same inputs)

Writes bench/results/profile_fold.md and .csv: each part's seconds per unit, per epoch and per fold, and its share
of the fold, with the fold's measured minutes from a bench run (runs/quality/default-*) when one is there.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import write_result  # noqa: E402

from mcls.config import Config
from mcls.data.cache import load_images
from mcls.data.dataset import ImageArrayDataset, targets_of
from mcls.data.faces import CropSettings
from mcls.infer.predictor import predict_dataset
from mcls.infer.serving import Serving
from mcls.metrics import macro_f1
from mcls.model.checkpoint import save_best, save_training_state
from mcls.model.classifier import create_model
from mcls.runtime.device import Runtime, seed_everything
from mcls.train.augment import create_train_transform
from mcls.train.run import load_training_data
from mcls.train.sampling import epoch_order
from mcls.train.steps import build, train_one_epoch


def timed(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of fn() over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


class Batches:
    """The first `n` batches of a loader, as fit() would draw them."""

    def __init__(self, loader, n: int):
        self.loader, self.n = loader, n

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.n:
                return
            yield batch

    def __len__(self):
        return self.n


def backbone_limit(name: str, size: int, batch: torch.Tensor, y: torch.Tensor, cfg: Config, rt: Runtime,
                   steps: int) -> tuple[float, float]:
    """(forward seconds, forward + backward + step seconds) of one backbone alone on one in-memory batch."""
    from mcls.train.losses import TaskLoss

    model = rt.prepare(create_model(name, "multi", "none", cfg.drop_rate))
    x = torch.nn.functional.interpolate(batch.float(), size=(size, size), mode="bilinear").to(torch.uint8)
    x = rt.to_input(x)
    loss_fn = TaskLoss(cfg, y.numpy()).to(rt.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def forward():
        with torch.no_grad(), rt.autocast():
            model(x)

    def step():
        with rt.autocast():
            loss = loss_fn(model(x), y.to(rt.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    return timed(forward, steps), timed(step, steps)


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "data" / "sample"))
    ap.add_argument("--steps", type=int, default=8, help="timed batches per part (after one warm-up)")
    ap.add_argument("--val", type=int, default=512, help="validation images timed (scaled to the fold's)")
    ap.add_argument("--cold", type=int, default=32, help="images read cold (MTCNN + decoding), 0 = skip")
    ap.add_argument("--external", help="external face-age data: also time its leak guard and pretraining (once a "
                                       "run, with an empty pretraining cache; the descriptor cache stays warm)")
    ap.add_argument("--set", nargs="*", default=[], help="key=value overrides of the defaults")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "bench/profile_fold.py", *(argv if argv is not None else sys.argv[1:])])
    from mcls.config import parse_overrides

    cfg = Config(data_dir=args.data).updated(parse_overrides(args.set))
    rt = Runtime.from_config(cfg)
    seed_everything(cfg.training_seed)
    rows = []

    def add(part: str, unit: str, seconds: float, per_epoch: float, per_fold: float, note: str = ""):
        rows.append({"part": part, "unit": unit, "s_per_unit": seconds, "s_per_epoch": per_epoch,
                     "s_per_fold": per_fold, "note": note})
        print(f"{part:<28} {seconds:8.4f} s / {unit:<14} {per_epoch:8.1f} s an epoch {per_fold:8.1f} s a fold",
              flush=True)

    start = time.perf_counter()
    table, images = load_training_data(cfg)
    warm_read = time.perf_counter() - start
    is_val = (table["fold"] == 0).to_numpy()
    train_df, val_df = table[~is_val].reset_index(drop=True), table[is_val].reset_index(drop=True)
    train_images, val_images = np.asarray(images[~is_val]), np.asarray(images[is_val])
    add("reading (warm caches)", "run", warm_read, 0, warm_read, f"{len(table)} images, every fold shares it")
    if args.cold:
        paths = table["path"].iloc[:args.cold]
        with tempfile.TemporaryDirectory() as tmp:
            crop = CropSettings.from_config(cfg.updated({"crop_cache": tmp}))
            t0 = time.perf_counter()
            load_images(paths, cfg.img_size, crop=crop)
            cold = (time.perf_counter() - t0) / len(paths)
        what = "MTCNN + decode" if cfg.crop != "none" else f"decode, crop={cfg.crop}"
        add(f"reading (cold: {what})", "image", cold, 0, cold * len(table), "a first run only, then cached")

    parts = build(cfg, rt, train_df, train_images)
    epoch_seed = cfg.training_seed * 1000
    parts.sampler.set_epoch(epoch_order(parts.targets, epoch_seed, cfg.sampler, parts.persons, cfg.wear_per_person,
                                        cfg.external_share), epoch_seed)
    steps_per_epoch = len(parts.loader)
    n_epochs = cfg.epochs
    fold = steps_per_epoch * n_epochs

    transform = create_train_transform(cfg.augment)
    raw = ImageArrayDataset(train_images, parts.targets)
    augmented = ImageArrayDataset(train_images, parts.targets, transform)
    idx = np.random.default_rng(0).integers(len(raw), size=cfg.batch_size)
    aug = (timed(lambda: [augmented[i] for i in idx], args.steps) - timed(lambda: [raw[i] for i in idx], args.steps))
    add("augmentation", "batch", aug, aug * steps_per_epoch, aug * fold, cfg.augment)
    it = iter(parts.loader)
    loader = timed(lambda: next(it), args.steps)
    add("loader (a whole batch)", "batch", loader, loader * steps_per_epoch, loader * fold,
        f"num_workers={cfg.num_workers}, includes augmentation")

    x, y, _ = next(iter(parts.loader))
    sizes = {"face": (cfg.backbone, cfg.img_size)}
    if cfg.mask_backbone or cfg.mask_size:
        sizes["mask"] = (cfg.mask_backbone or cfg.backbone, cfg.mask_size or cfg.img_size)
    for task, (name, size) in sizes.items():
        fwd, step = backbone_limit(name, size, x, y, cfg, rt, args.steps)
        add(f"{task} backbone {name} @{size}: forward", "batch", fwd, fwd * steps_per_epoch, fwd * fold,
            f"limit {cfg.batch_size / fwd:.0f} img/s")
        add(f"{task} backbone {name} @{size}: fwd+bwd+step", "batch", step, step * steps_per_epoch, step * fold,
            f"limit {cfg.batch_size / step:.0f} img/s")

    xd, yd = rt.to_input(x), y.to(rt.device)

    def model_step():
        with rt.autocast():
            loss = parts.loss_fn(parts.model(xd), yd)
        parts.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parts.optimizer.step()

    parts.model.train()
    step = timed(model_step, args.steps)
    add("model step (both backbones)", "batch", step, step * steps_per_epoch, step * fold,
        f"limit {cfg.batch_size / step:.0f} img/s, no mixing")
    if parts.mask_view is not None:
        view = timed(lambda: parts.mask_view(xd), args.steps)
        add("mask view", "batch", view, view * steps_per_epoch, view * fold, cfg.mask_view)
    if parts.mixer is not None:
        mix = timed(lambda: parts.mixer.batch(xd, yd), args.steps)
        add("mixing", "batch", mix, mix * steps_per_epoch, mix * fold, f"{cfg.mix} on {cfg.mix_tasks}")
    if parts.ema is not None:
        ema = timed(lambda: parts.ema.update_parameters(parts.model), args.steps)
        add("EMA update", "batch", ema, ema * steps_per_epoch, ema * fold, f"decay {cfg.ema_decay}")

    stats = train_one_epoch(parts.model, Batches(parts.loader, args.steps + 1), parts.loss_fn, parts.optimizer,
                            parts.scheduler, rt, desc="profile", mixer=parts.mixer, ema=parts.ema,
                            mask_view=parts.mask_view)
    real = stats["train_seconds"] / (args.steps + 1)
    add("train step (real)", "batch", real, real * steps_per_epoch, real * fold,
        f"{stats['train_img_per_s']:.1f} img/s, {steps_per_epoch} steps an epoch")

    n_val = min(args.val, len(val_images))
    val_ds = ImageArrayDataset(val_images[:n_val], targets_of(val_df.iloc[:n_val]))
    serving = Serving.of_config(cfg)

    labels = val_df["label"].to_numpy()[:n_val]
    # fit() finds the blind groups once per fold whatever the serving: the saved evidence holds them
    t0 = time.perf_counter()
    groups = dataclasses.replace(serving, person_consistent=True).groups(val_images[:n_val])
    grouping = (time.perf_counter() - t0) / n_val
    add("person groups", "image", grouping, 0, grouping * len(val_df), "found once per fold")
    groups = groups if cfg.person_consistent else None

    def validate():
        views = predict_dataset(parts.scored, val_ds, rt, rt.eval_batch(cfg.batch_size), views=cfg.tta,
                                num_workers=cfg.num_workers, desc="validate")
        macro_f1(labels, serving.finish(views.mean(0) if cfg.tta else views, groups).argmax(1))

    val = timed(validate, 1) / n_val
    add("validation pass", "image", val, val * len(val_df), val * len(val_df) * (n_epochs + 1),
        f"{len(val_df)} images, flip views={cfg.tta}; +1 pass of the best at the end")
    with tempfile.TemporaryDirectory() as tmp:
        def checkpoints():
            save_best(Path(tmp) / "best.pt", parts.scored, cfg, {"epoch": 1})
            save_training_state(Path(tmp) / "last.pt", parts.resumable(rt), {"epoch": 1}, cfg)

        ckpt = timed(checkpoints, 2)
    add("checkpoints", "epoch", ckpt, ckpt, ckpt * n_epochs, "best.pt + last.pt")

    if args.external:
        guard, trained = external_seconds(cfg.updated({"external_data": args.external}))
        add("external leak guard (warm caches)", "run", guard, 0, guard, "every run with external_data, once")
        add("external pretraining", "run", trained, 0, trained,
            f"external_training=pretrain, {cfg.external_epochs} epochs, once: cached for every fold and run")
    df = pd.DataFrame(rows)
    training = df.loc[df["part"] == "train step (real)", "s_per_fold"].iloc[0]
    others = df["part"].isin(["validation pass", "person groups", "checkpoints"])
    estimate = training + df.loc[others, "s_per_fold"].sum()
    df["share_of_fold"] = df["s_per_fold"] / estimate
    measured = measured_folds(cfg)
    note = (f"Fold 0 of {args.data}: {len(train_df)} training rows, an epoch draws {steps_per_epoch} batches of "
            f"{cfg.batch_size}; {n_epochs} epochs; {len(val_df)} validation images. Parts inside 'train step (real)' "
            f"(loader, backbones, view, mixing, EMA) are shown on their own and are not added again: the fold's "
            f"estimate is the real steps + validation + person groups + checkpoints = {estimate / 60:.1f} min"
            + (f"; bench runs measured {measured}" if measured else "") + ".\n\n")
    print(write_result(args.out, "profile_fold", df, "Where one default fold's minutes go", command,
                       note + df.round(4).to_markdown(index=False) + "\n"))
    return df


def external_seconds(cfg: Config) -> tuple[float, float]:
    """(leak guard seconds, pretraining seconds) of prepare_external in a fresh run with an empty pretraining cache,
    as the run's record (external.json) has them."""
    from mcls.runs.layout import Run
    from mcls.train.pretrain import prepare_external

    with tempfile.TemporaryDirectory() as tmp:
        run = Run(Path(tmp) / "run")
        prepare_external(cfg.updated({"pretrain_cache": str(Path(tmp) / "cache"), "run_dir": str(run.path)}), run)
        record = json.loads(run.external_record.read_text())
    return record["prepare_seconds"] - record["pretrain_seconds"], record["pretrain_seconds"]


def measured_folds(cfg: Config) -> str:
    """The wall minutes of the bench's finished folds of the default, as their timing.json has them."""
    found = []
    for path in sorted((ROOT / "runs" / "quality").glob("default-*/fold*/timing.json")):
        found.append(f"{path.parent.parent.name}/{path.parent.name} {json.loads(path.read_text())['wall_s'] / 60:.1f}")
    return ", ".join(found)


if __name__ == "__main__":
    main()
