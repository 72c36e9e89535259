"""Face-crop throughput on this machine and the MTCNN detection rate on a data folder (train and eval).

    .venv/bin/python bench/crop.py                                   # ../shared/data/utkmask
    .venv/bin/python bench/crop.py --data data/sample --speed-n 100

Rows:
  speed     cold detection (empty cache) on the first --speed-n training images, per batch size, then the same
            images again from the cache (what a second run costs)
  rate      every train / eval image, through the persistent cache (--cache): detection rate, fallbacks by reason,
            confidence quantiles; train also per mask state, since a mask hides half the face. Its img_s is a cold
            full pass only when --cache starts empty; later runs read the cache and measure that instead.
Writes bench/results/crop.md and crop.csv with the machine, the load beside this run and the command.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mcls.data.faces import DETECTOR, CropSettings, crop_paths, detection_rate
from mcls.data.table import load_eval_table, load_train_table
from mcls.labels import MASK_STATES


def timed(paths, settings) -> tuple[pd.DataFrame, float]:
    start = time.perf_counter()
    report = crop_paths(paths, settings)
    return report, len(paths) / (time.perf_counter() - start)


def rate_row(name: str, report: pd.DataFrame, img_s: float | None = None) -> dict:
    reasons = report.loc[~report["detected"], "reason"].str.replace(r" [0-9.]+$", "", regex=True).value_counts()
    conf = report["confidence"].dropna()
    return {"row": "rate", "part": name, "images": len(report), "detected": int(report["detected"].sum()),
            "rate": detection_rate(report), "img_s": img_s, **{f"fallback: {k}": int(v) for k, v in reasons.items()},
            "conf_p05": conf.quantile(0.05) if len(conf) else None, "conf_median": conf.median() if len(conf) else None}


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "utkmask"))
    ap.add_argument("--speed-n", type=int, default=400, help="images for the cold / cached speed rows")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "mcls" / "crops"), help="cache for the rate rows")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "crop"))
    args = ap.parse_args(argv)
    load_start = os.getloadavg()[0]

    table = load_train_table(args.data)
    train = list(table["path"])
    rows = []
    sample = train[: args.speed_n]
    with tempfile.TemporaryDirectory() as tmp:
        crop_paths(sample[:8], CropSettings(cache_dir=str(Path(tmp) / "warm-up"), device=args.device))  # load MTCNN
        for batch in map(int, args.batches.split(",")):
            settings = CropSettings(cache_dir=str(Path(tmp) / f"b{batch}"), device=args.device, batch_size=batch)
            _, cold = timed(sample, settings)
            _, warm = timed(sample, settings)
            rows.append({"row": "speed", "part": f"train[:{len(sample)}]", "batch": batch, "img_s": cold,
                         "cached_img_s": warm})
            print(rows[-1], flush=True)
    settings = CropSettings(cache_dir=args.cache, device=args.device)
    report, img_s = timed(train, settings)
    rows.append(rate_row("train", report, img_s))
    state = table["mask"].map(dict(enumerate(MASK_STATES)))
    for name, part in report.groupby(state.to_numpy(), sort=False):
        rows.append(rate_row(f"train: {name}", part))
    if (Path(args.data) / "eval" / "info.csv").is_file():
        eval_report, img_s = timed(list(load_eval_table(args.data)["path"]), settings)
        rows.append(rate_row("eval", eval_report, img_s))
    df = pd.DataFrame(rows)
    command = " ".join([".venv/bin/python", "bench/crop.py", *(argv if argv is not None else sys.argv[1:])])
    write(df, Path(args.out), command, args.data, load_start)
    return df


def machine() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU {platform.processor() or ''}".strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "") if Path("/proc/cpuinfo").exists() else ""
    return (f"{platform.node()} ({dev} {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads), "
            f"torch {torch.__version__}, python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}")


def write(df: pd.DataFrame, out: Path, command: str, data: str, load_start: float) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out.with_suffix(".csv"), index=False)
    speed = df[df["row"] == "speed"].dropna(axis=1, how="all").drop(columns="row")
    rate = df[df["row"] == "rate"].dropna(axis=1, how="all").drop(columns="row")
    text = (f"# Face crops: speed and detection rate\n\nmachine: {machine()}\n\n"
            f"load average (other jobs on this machine): {load_start:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end\n\ncommand: `{command}`\n\ndata: `{data}`; detector: {DETECTOR}; "
            f"crop defaults: {CropSettings()}\n\n## Speed (images/s)\n\n{speed.round(2).to_markdown(index=False)}\n\n"
            f"## Detection rate\n\n{rate.round(4).to_markdown(index=False)}\n")
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
