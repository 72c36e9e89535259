"""Training and inference throughput: the compute limit vs mcls's loader vs the competition baseline's loader.

    .venv/bin/python bench/speed.py                       # 2 backbones x 2 sizes on data/sample
    .venv/bin/python bench/speed.py --backbones mobilenetv2_100 --sizes 224 --batch 16

Rows, per backbone and size (images per second; ratios within one run are what count):
  limit       training steps on one in-memory uint8 batch: no data loading at all
  mcls        training through ImageArrayDataset (decoded-once uint8 cache + albumentations) and make_loader
  baseline    the competition baseline's way: PIL open + resize + torchvision transforms per image, per epoch
  infer       predict_probs on the cache, without and with flip TTA (one doubled batch)
Writes bench/results/speed.md and speed.csv with the machine, torch version, threads and the command.
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
from common import machine  # noqa: E402

from mcls.config import Config
from mcls.data.dataset import ImageArrayDataset, make_loader, targets_of
from mcls.data.faces import CropSettings, crop_paths
from mcls.data.images import load_images
from mcls.data.table import load_train_table
from mcls.infer.predictor import predict_dataset
from mcls.model.classifier import create_model
from mcls.runtime.device import Runtime
from mcls.runtime.distributed import GlobalBatchSampler
from mcls.train.augment import create_train_transform
from mcls.train.fit import train_one_epoch
from mcls.train.losses import TaskLoss
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


def train_rate(cfg: Config, loader, targets, steps: int) -> float:
    """Training images/s over `steps` batches after two warm-up batches."""
    rt = Runtime.from_config(cfg)
    torch.manual_seed(0)
    model = rt.prepare(create_model(cfg.backbone, cfg.heads, "none", cfg.drop_rate))
    loss_fn = TaskLoss(cfg, targets).to(rt.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if cfg.compile:  # as fit() does; the warm-up batches absorb the compilation
        model = torch.compile(model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    train_one_epoch(model, Limited(loader, 2), loss_fn, opt, sched, rt, desc="warm-up")
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    stats = train_one_epoch(model, Limited(loader, steps), loss_fn, opt, sched, rt, desc="timed")
    return stats["train_img_per_s"]


def face_crop_rate(paths) -> float:
    """MTCNN detection + crop images/s with an empty cache (what a first run pays once per image)."""
    with tempfile.TemporaryDirectory() as cache:
        settings = CropSettings(cache_dir=cache)
        start = time.perf_counter()
        crop_paths(list(paths), settings)
        return len(paths) / (time.perf_counter() - start)


def infer_rate(cfg: Config, images: np.ndarray, tta: bool, repeats: int = 2) -> float:
    rt = Runtime.from_config(cfg)
    model = rt.prepare(create_model(cfg.backbone, cfg.heads, "none"))
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
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "speed"))
    args = ap.parse_args(argv)

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
    write(df, Path(args.out), " ".join([".venv/bin/python", "bench/speed.py", *(argv or sys.argv[1:])]))
    return df


def write(df: pd.DataFrame, out: Path, command: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out.with_suffix(".csv"), index=False)
    text = (f"# Throughput (images/s)\n\nmachine: {machine()}\n\ncommand: `{command}`\n\n"
            + df.round(2).to_markdown(index=False) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
