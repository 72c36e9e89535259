"""Training and inference throughput: the compute limit vs mcls's loader vs the competition baseline's loader.

    .venv/bin/python bench/speed.py                       # 2 backbones x 2 sizes on data/sample
    .venv/bin/python bench/speed.py --backbones mobilenetv2_100 --sizes 224 --batch 16

Rows, per backbone and size (images per second; ratios within one run are what count):
  limit       training steps on one in-memory uint8 batch: no data loading at all
  mcls        training through ImageArrayDataset (decoded-once uint8 cache + albumentations) and make_loader
  baseline    the competition baseline's way: PIL open + resize + torchvision transforms per image, per epoch
  infer       predict_probs on the cache, without and with flip TTA (one doubled batch)
Writes bench/results/speed.md and speed.csv with the machine, torch version, threads and the command.

With --models, whole models as configs build them instead (the default's two backbones, a preset's), each timed
training through mcls's loader, mask view and mixing as fit() trains it, and serving as the config serves (flip
TTA where it sets tta), with ratios to the first: bench/results/speed_models.{md,csv}.
"""
from __future__ import annotations

import argparse
import itertools
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

from baseline_loader import BaselineDataset  # noqa: E402
from common import write_result  # noqa: E402

from mcls.config import Config, has_mask_backbone, load_config, parse_overrides
from mcls.data.dataset import ImageArrayDataset, make_loader, targets_of
from mcls.data.faces import CropSettings, crop_paths
from mcls.data.cache import load_images
from mcls.data.table import load_train_table
from mcls.infer.predictor import predict_dataset
from mcls.model.classifier import create_model, model_from_config
from mcls.runtime.device import Runtime
from mcls.runtime.distributed import GlobalBatchSampler
from mcls.train.augment import create_train_transform
from mcls.train.steps import train_one_epoch
from mcls.train.losses import TaskLoss
from mcls.train.mask_view import MaskView
from mcls.train.mixing import BatchMixer
from mcls.train.sampling import epoch_order


class Limited:
    """Iterates a loader for a fixed number of batches, so every row times the same amount of work."""

    def __init__(self, loader, n_batches: int):
        self.loader, self.n = loader, n_batches

    def __iter__(self):
        count = 0
        while count < self.n:
            for batch in self.loader:
                yield batch
                count += 1
                if count == self.n:
                    return

    def __len__(self):
        return self.n


def train_rate(cfg: Config, loader, targets, steps: int, whole: bool = False) -> float:
    """Training images/s over `steps` batches after two warm-up batches; `whole`: the config's whole model with its
    mask view and mixing (else one `backbone` with cfg.heads and no mixing)."""
    rt = Runtime.from_config(cfg)
    torch.manual_seed(0)
    model = rt.prepare(model_from_config(cfg, "none") if whole else
                       create_model(cfg.backbone, cfg.heads, "none", cfg.drop_rate))
    mixed = whole and cfg.mix != "none"
    mixer = BatchMixer(cfg.mix, cfg.mix_prob, cfg.mix_alpha, tasks=cfg.mix_tasks) if mixed else None
    view = MaskView(cfg.mask_view) if whole and cfg.mask_view != "none" else None
    loss_fn = TaskLoss(cfg, targets).to(rt.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if cfg.compile:  # as fit() does; the warm-up batches absorb the compilation
        model = torch.compile(model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    train_one_epoch(model, Limited(loader, 2), loss_fn, opt, sched, rt, desc="warm-up", mixer=mixer, mask_view=view)
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    stats = train_one_epoch(model, Limited(loader, steps), loss_fn, opt, sched, rt, desc="timed", mixer=mixer,
                            mask_view=view)
    return stats["train_img_per_s"]


def face_crop_rate(paths) -> float:
    """MTCNN detection + crop images/s with an empty cache (what a first run pays once per image)."""
    with tempfile.TemporaryDirectory() as cache:
        settings = CropSettings(cache_dir=cache)
        start = time.perf_counter()
        crop_paths(list(paths), settings)
        return len(paths) / (time.perf_counter() - start)


def infer_rate(cfg: Config, images: np.ndarray, tta: bool, repeats: int = 2, whole: bool = False) -> float:
    rt = Runtime.from_config(cfg)
    model = rt.prepare(model_from_config(cfg, "none") if whole else create_model(cfg.backbone, cfg.heads, "none"))
    dataset, batch = ImageArrayDataset(images), rt.eval_batch(cfg.batch_size)
    predict_dataset(model, dataset, rt, batch, tta=tta, num_workers=cfg.num_workers)
    start = time.perf_counter()
    for _ in range(repeats):
        predict_dataset(model, dataset, rt, batch, tta=tta, num_workers=cfg.num_workers)
    return repeats * len(images) / (time.perf_counter() - start)


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "data" / "sample"))
    ap.add_argument("--backbones", default="tf_efficientnet_lite0,mobilenetv2_100")
    ap.add_argument("--sizes", default="112,160")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8, help="timed training batches per row")
    ap.add_argument("--workers", default="0", help="loader worker counts to compare, e.g. 0,2")
    ap.add_argument("--compile", action="store_true", help="also time training under torch.compile")
    ap.add_argument("--crop-n", type=int, default=48, help="images for the cold face-crop rate (0 = skip)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", help="comma list of models to time whole instead, ratios to the first: \"default\" "
                                     "(the package's defaults), a preset or YAML file, or key=value overrides of the "
                                     "defaults joined by '+' (e.g. heads=multi)")
    ap.add_argument("--repeats", type=int, default=5, help="rounds of serving passes (the median is kept)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "speed"))
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "bench/speed.py", *(argv or sys.argv[1:])])
    if args.models:
        return compare_models(args, command)

    table = load_train_table(args.data)
    targets = targets_of(table)
    crop_rate = face_crop_rate(table["path"][:args.crop_n]) if args.crop_n else float("nan")
    rows = []
    for size in map(int, args.sizes.split(",")):
        start = time.perf_counter()
        images, _ = load_images(table["path"], size)
        cache_s = time.perf_counter() - start
        for backbone, workers in itertools.product(args.backbones.split(","), map(int, args.workers.split(","))):
            cfg = Config(backbone=backbone, img_size=size, batch_size=args.batch, num_workers=workers,
                         device=args.device, augment="light")
            pin = Runtime.from_config(cfg).pin_memory
            one = next(iter(make_loader(ImageArrayDataset(images, targets), args.batch, train=True)))
            limit = train_rate(cfg, [one], targets, args.steps)
            sampler = GlobalBatchSampler(args.batch)  # the order and loader that fit() uses
            sampler.set_epoch(epoch_order(targets, seed=0), seed=0)
            ours = make_loader(ImageArrayDataset(images, targets, create_train_transform(cfg.augment)), args.batch,
                               train=True, num_workers=workers, pin_memory=pin, sampler=sampler)
            mcls = train_rate(cfg, ours, targets, args.steps)
            base = torch.utils.data.DataLoader(BaselineDataset(table, size, targets), batch_size=args.batch,
                                               shuffle=True, num_workers=workers, pin_memory=pin)
            baseline = train_rate(cfg, base, targets, args.steps)
            row = {"backbone": backbone, "size": size, "batch": args.batch, "workers": workers,
                   "limit": limit, "mcls": mcls, "baseline": baseline,
                   "mcls/limit": mcls / limit, "mcls/baseline": mcls / baseline,
                   "infer": infer_rate(cfg, images, tta=False), "infer_tta": infer_rate(cfg, images, tta=True),
                   "cache_build_img_s": len(images) / cache_s, "face_crop_img_s": crop_rate}
            if args.compile:
                row["mcls_compiled"] = train_rate(cfg.updated({"compile": True}), ours, targets, args.steps)
            rows.append(row)
            print(pd.DataFrame([row]).round(2).to_string(index=False), flush=True)
    df = pd.DataFrame(rows)
    write(df, Path(args.out), command)
    return df


def compare_models(args, command: str) -> pd.DataFrame:
    """One row per model config: training images/s as fit() trains it (loader, augmentation, mask view, mixing)
    and serving images/s and ms per image (as the config serves: flip TTA only where it sets tta), with each figure's
    ratio to the first model's."""
    table = load_train_table(args.data)
    targets = targets_of(table)
    rows, cache, serving = [], {}, []
    runtime = {"batch_size": args.batch, "device": args.device, "num_workers": int(args.workers.split(",")[0])}
    for name in args.models.split(","):
        given = parse_overrides(name.split("+")) if "=" in name else {}
        cfg = load_config(None if name == "default" or given else name, {**given, **runtime})
        if cfg.img_size not in cache:
            cache[cfg.img_size] = load_images(table["path"], cfg.img_size)[0]
        images = cache[cfg.img_size]
        sampler = GlobalBatchSampler(args.batch)
        sampler.set_epoch(epoch_order(targets, seed=0), seed=0)
        loader = make_loader(ImageArrayDataset(images, targets, create_train_transform(cfg.augment)), args.batch,
                             train=True, num_workers=cfg.num_workers, sampler=sampler)
        rows.append({"model": name, "heads": cfg.heads, "tta": cfg.tta, "backbone": cfg.backbone,
                     "mask_backbone": cfg.mask_backbone or (cfg.backbone if has_mask_backbone(cfg.heads) else ""),
                     "img_size": cfg.img_size, "mask_size": cfg.mask_size,
                     "train_img_s": train_rate(cfg, loader, targets, args.steps, whole=True)})
        serving.append((cfg, images))
        print(pd.DataFrame(rows[-1:]).round(2).to_string(index=False), flush=True)
    # serving in rounds, one pass of every model a round, the median per model: a single pass of the first model
    # measured alone ran up to 1.8x slower than the same pass later in the process
    rates = [[infer_rate(cfg, images, tta=cfg.tta, repeats=1, whole=True) for cfg, images in serving]
             for _ in range(args.repeats)]
    for row, model_rates in zip(rows, zip(*rates)):
        row["serve_img_s"] = float(np.median(model_rates))
        row["serve_ms_per_image"] = 1000 / row["serve_img_s"]
    df = pd.DataFrame(rows)
    df["train_time_ratio"] = df["train_img_s"].iloc[0] / df["train_img_s"]
    df["serve_time_ratio"] = df["serve_ms_per_image"] / df["serve_ms_per_image"].iloc[0]
    out = Path(args.out)
    write(df, out.with_name(out.name + "_models"), command,
          title="Whole models: training and serving speed",
          note="Training: images/s through fit()'s loader, augmentation, mask view and mixing (no validation, no "
               "EMA). Serving: images/s of predict_dataset on decoded images as the config serves them (flip TTA "
               "where it sets tta), the median of --repeats rounds that each time every model once. "
               "Ratios are time per image against the first row.\n\n")
    return df


def write(df: pd.DataFrame, out: Path, command: str, title: str = "Throughput (images/s)", note: str = "") -> None:
    print(write_result(out.parent, out.name, df, title, command, note + df.round(2).to_markdown(index=False) + "\n"))


if __name__ == "__main__":
    main()
