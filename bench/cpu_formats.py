"""Memory format and number format on the CPU: a default training step in float32 or bfloat16 autocast, with the
contiguous (NCHW) or channels_last layout, for each backbone alone and for the default's whole model.

    .venv/bin/python bench/cpu_formats.py                  # the package's default model, batch 32
    .venv/bin/python bench/cpu_formats.py --steps 3        # a quick look

Run it alone: on 2 cores a second CPU-heavy job slows every figure 3-4x. Each row is the median seconds of a
forward + backward + AdamW step on one in-memory batch of random uint8 images (the model normalises them), after
two warm-up steps. The kit's `channels_last: auto` follows what this measures (mcls/runtime/device.py); AMP stays a
CUDA-only setting. Writes bench/results/cpu_formats.md and .csv.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import write_result  # noqa: E402

from mcls.config import Config, parse_overrides
from mcls.model.classifier import create_model, model_from_config


def step_seconds(model: torch.nn.Module, size: int, batch: int, channels_last: bool, bf16: bool,
                 steps: int) -> float:
    """Median seconds of one training step of `model` on a (batch, 3, size, size) uint8 batch."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8).contiguous(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
            loss = sum(v.float().mean() for v in out.values()) if isinstance(out, dict) else out.float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per row (after two warm-up steps)")
    ap.add_argument("--set", nargs="*", default=[], help="key=value overrides of the defaults")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python", "bench/cpu_formats.py", *(argv if argv is not None else sys.argv[1:])])
    cfg = Config().updated(parse_overrides(args.set))
    models = {f"face backbone {cfg.backbone} @{cfg.img_size}":
              (lambda: create_model(cfg.backbone, "multi", "none", cfg.drop_rate), cfg.img_size)}
    if cfg.mask_backbone or cfg.mask_size:
        name, size = cfg.mask_backbone or cfg.backbone, cfg.mask_size or cfg.img_size
        models[f"mask backbone {name} @{size}"] = (lambda: create_model(name, "multi", "none", cfg.drop_rate), size)
    models[f"whole model ({cfg.heads})"] = (lambda: model_from_config(cfg, "none"), cfg.img_size)
    rows = []
    for what, (make, size) in models.items():
        for channels_last in (False, True):
            for bf16 in (False, True):
                seconds = step_seconds(make(), size, cfg.batch_size, channels_last, bf16, args.steps)
                rows.append({"model": what, "layout": "channels_last" if channels_last else "contiguous",
                             "dtype": "bfloat16 autocast" if bf16 else "float32", "s_per_step": seconds,
                             "img_per_s": cfg.batch_size / seconds})
                print(f"{what:<44} {rows[-1]['layout']:<14} {rows[-1]['dtype']:<18} {seconds:6.3f} s a step",
                      flush=True)
    df = pd.DataFrame(rows)
    base = df.groupby("model")["s_per_step"].transform("first")  # contiguous float32, each model's first row
    df["speedup"] = base / df["s_per_step"]
    note = (f"Batch {cfg.batch_size}; torch threads {torch.get_num_threads()}; speedup against the same model's "
            "contiguous float32 step.\n\n")
    print(write_result(args.out, "cpu_formats", df, "Memory and number formats of a training step on the CPU",
                       command, note + df.round(3).to_markdown(index=False) + "\n"))
    return df


if __name__ == "__main__":
    main()
