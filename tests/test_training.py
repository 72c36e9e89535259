"""End-to-end on the sample with a tiny backbone: smoke training, resume after SIGKILL, determinism."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import ROOT, TINY

from mcls.model.checkpoint import load_checkpoint
from mcls.runs.records import RunExistsError
from mcls.train.run import train

METRIC_COLUMNS = ["epoch", "train_loss", "val_loss", "f1", "f1_mask", "f1_gender", "f1_age"]


def test_one_epoch_smoke_run_leaves_a_complete_run(tiny_cfg):
    summary = train(tiny_cfg)
    run = Path(tiny_cfg.run_dir)
    for name in ("config.yaml", "run_info.json", "summary.json", "fold0/best.pt", "fold0/last.pt",
                 "fold0/metrics.csv", "fold0/confusion_matrix.png", "fold0/learning_curves.png",
                 "fold0/val_predictions.csv"):
        assert (run / name).is_file(), name
    assert 0 <= summary["f1"] <= 1 and summary["folds"] == [0]
    val = pd.read_csv(run / "fold0" / "val_predictions.csv")
    fold = summary["per_fold"]["0"]
    # every validation image is scored once, persons are whole
    assert len(val) == fold["n_val_images"] == 7 * fold["n_val_persons"] and val["path"].is_unique
    model, cfg = load_checkpoint(run / "fold0" / "best.pt")
    assert cfg.backbone == "test_efficientnet" and cfg.img_size == 48


def test_a_finished_run_is_never_overwritten(tiny_cfg):
    train(tiny_cfg)
    before = (Path(tiny_cfg.run_dir) / "fold0" / "best.pt").read_bytes()
    with pytest.raises(RunExistsError, match="--resume"):
        train(tiny_cfg)
    assert (Path(tiny_cfg.run_dir) / "fold0" / "best.pt").read_bytes() == before


def test_same_seed_same_metrics(tiny_cfg, tmp_path):
    a = train(tiny_cfg)
    b = train(tiny_cfg.updated({"run_dir": str(tmp_path / "again")}))
    assert a["f1"] == b["f1"] and a["per_fold"]["0"]["acc"] == b["per_fold"]["0"]["acc"]


def test_train_seed_changes_the_model_not_the_folds(tiny_cfg, tmp_path):
    train(tiny_cfg)
    train(tiny_cfg.updated({"run_dir": str(tmp_path / "seed7"), "train_seed": 7}))
    a, b = (pd.read_csv(Path(run) / "fold0" / "val_predictions.csv") for run in (tiny_cfg.run_dir, tmp_path / "seed7"))
    assert a["path"].tolist() == b["path"].tolist()  # the same validation persons: the two can be ensembled
    probs = [f"p{k}" for k in range(18)]
    assert (a[probs] - b[probs]).abs().to_numpy().max() > 1e-3  # another initialisation, order and augmentation
    assert tiny_cfg.training_seed == tiny_cfg.seed and tiny_cfg.updated({"train_seed": 7}).training_seed == 7


def _cli(run_dir, *extra):
    # EMA on: its average must resume exactly too
    args = [f"{k}={v}" for k, v in {**TINY, "epochs": 4, "ema_decay": 0.9, "data_dir": ROOT / "data" / "sample"}.items()]
    return [sys.executable, "-m", "mcls", "train", f"run_dir={run_dir}", *args, *extra]


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = tmp_path / "full"
    subprocess.run(_cli(full), check=True, capture_output=True, env=env, timeout=300)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    metrics = killed / "fold0" / "metrics.csv"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and len(pd.read_csv(metrics)) >= 1):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(pd.read_csv(metrics))
    assert 1 <= done < 4, "the run was not killed mid-training"
    assert not list((killed / "fold0").glob(".*.tmp"))  # no half-written file left behind
    subprocess.run(_cli(killed, "--resume"), check=True, capture_output=True, env=env, timeout=300)
    a = pd.read_csv(full / "fold0" / "metrics.csv")[METRIC_COLUMNS]
    b = pd.read_csv(killed / "fold0" / "metrics.csv")[METRIC_COLUMNS]
    pd.testing.assert_frame_equal(a, b)
    info = json.loads((killed / "run_info.json").read_text())
    assert len(info["resumes"]) == 1 and info["created"] <= info["resumes"][0]["created"]  # start kept, resume added
    sa = torch.load(full / "fold0" / "best.pt", weights_only=False)["model"]
    sb = torch.load(killed / "fold0" / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_epoch_is_chosen_on_the_score_as_served(trained_run):
    """The run serves with flip TTA and person sharing: each epoch's served_f1 is that score, and the best epoch's
    equals what the fold reports as served (pc_f1) -- not a per-image maximum read at a chosen epoch."""
    from mcls.train.fit import record_epoch

    history = pd.read_csv(trained_run / "fold0" / "metrics.csv")
    fold = json.loads((trained_run / "fold0" / "summary.json").read_text())
    best = history.set_index("epoch").loc[fold["best_epoch"]]
    assert best["served_f1"] == pytest.approx(fold["pc_f1"], abs=1e-6)
    state = {"epoch": 0, "best_f1": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": []}
    assert record_epoch(state, {"epoch": 1, "f1": 0.60, "served_f1": 0.50})
    assert not record_epoch(state, {"epoch": 2, "f1": 0.70, "served_f1": 0.45})  # better per image, worse served
    assert state["best_epoch"] == 1 and state["bad_epochs"] == 1


def test_resume_takes_the_keys_that_place_a_run_and_refuses_those_that_change_it(tmp_path, capsys):
    from mcls.cli import main
    from mcls.config import Config, ConfigError
    from mcls.runs.records import open_run

    # a run whose start stopped at the checks leaves nothing: --resume says so and what to do
    moved = tmp_path / "moved"
    assert main(["train", f"data_dir={moved}", f"run_dir={tmp_path / 'run'}", "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run'}: nothing to resume, no run was started there" in err and "without --resume" in err

    # a started run whose data moved: the new data_dir (and device, caches) are taken; the recipe is not
    started = Config(data_dir=str(moved), run_dir=str(tmp_path / "run"), epochs=3)
    open_run(started)
    typed = started.updated({"data_dir": "data/sample", "device": "cpu", "epochs": 3})
    cfg, _ = open_run(typed, resume=True, given=("data_dir", "device", "epochs"))
    assert (cfg.data_dir, cfg.device, cfg.epochs) == ("data/sample", "cpu", 3)
    with pytest.raises(ConfigError, match=r"--resume continues the run as it was started: epochs=5 \(saved 3\), "
                                          r"lr=0\.01 \(saved 0\.001\) would change what it learns; drop them"):
        open_run(typed.updated({"epochs": 5, "lr": 0.01}), resume=True, given=("data_dir", "epochs", "lr"))
    # a key not typed never beats the saved value, whatever the defaults say
    assert open_run(Config(run_dir=str(tmp_path / "run")), resume=True)[0].data_dir == str(moved)
