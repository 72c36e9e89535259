"""torchrun with 2 CPU processes (gloo) on the sample: same metrics as one process with the same global batch,
one set of run files, and resume after a kill."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import ROOT, TINY

# BatchNorm sees 8 images per process instead of 16 (SyncBatchNorm needs CUDA), so the two runs are close,
# not equal; measured differences on the sample are listed in the README's multi-GPU section. The mask task's mixing
# and reframing are off here: each process draws them for its own half of the batch, so with them on the two runs
# see different images and the comparison would no longer isolate how the gradients are shared.
VAL_LOSS_TOLERANCE = 0.05
F1_TOLERANCE = 0.1
EPOCHS = 3


def _args(run_dir, *extra):
    cfg = {**TINY, "epochs": EPOCHS, "batch_size": 16, "data_dir": ROOT / "data" / "sample", "run_dir": run_dir,
           "mix": "none", "mix_tasks": "all", "mask_view": "none"}
    return ["train", *[f"{k}={v}" for k, v in cfg.items()], *extra]


def _single(run_dir, *extra):
    return [sys.executable, "-m", "mcls", *_args(run_dir, *extra)]


def _torchrun(run_dir, *extra, port):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            "-m", "mcls", *_args(run_dir, *extra)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _metrics(run_dir):
    return pd.read_csv(run_dir / "fold0" / "metrics.csv")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    subprocess.run(_single(base / "one"), check=True, capture_output=True, env=ENV, timeout=300, cwd=base)
    two = subprocess.run(_torchrun(base / "two", port=29517), capture_output=True, text=True, env=ENV,
                         timeout=300, cwd=base)
    assert two.returncode == 0, two.stderr[-3000:]
    return base, two


def test_two_processes_match_one_with_the_same_global_batch(runs):
    base, _ = runs
    one, two = _metrics(base / "one"), _metrics(base / "two")
    assert len(one) == len(two) == EPOCHS
    # the same number of images went through training: each process took half of every batch
    assert (abs(one["val_loss"] - two["val_loss"]) < VAL_LOSS_TOLERANCE).all(), (one["val_loss"], two["val_loss"])
    assert (abs(one["f1"] - two["f1"]) < F1_TOLERANCE).all(), (one["f1"], two["f1"])


def test_exactly_one_set_of_run_files(runs):
    base, two = runs
    # no stray runs/<timestamp> from rank 1; .cache holds the decoded images both processes shared
    assert sorted(p.name for p in base.iterdir()) == [".cache", "one", "two"]
    assert len(list((base / ".cache" / "mcls" / "images").glob("*.npy"))) == 1
    files = sorted(str(p.relative_to(base / "two")) for p in (base / "two").rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(base / "one")) for p in (base / "one").rglob("*") if p.is_file())
    assert two.stdout.count('"f1"') == 1  # rank 0 alone reports


def test_resume_after_kill_under_torchrun(runs, tmp_path):
    base, _ = runs
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_torchrun(killed, port=29518), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ENV, cwd=tmp_path, start_new_session=True)
    metrics = killed / "fold0" / "metrics.csv"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and len(pd.read_csv(metrics)) >= 1):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
    proc.wait()
    assert 1 <= len(pd.read_csv(metrics)) < EPOCHS, "the run was not killed mid-training"
    done = subprocess.run(_torchrun(killed, "--resume", port=29519), capture_output=True, text=True, env=ENV,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    cols = ["epoch", "train_loss", "val_loss", "f1"]
    pd.testing.assert_frame_equal(_metrics(base / "two")[cols], _metrics(killed)[cols], atol=1e-6)


def test_external_data_under_torchrun_is_screened_once_and_pretrained_by_both_ranks(tmp_path, face_cache):
    import json

    run_dir = tmp_path / "ext"
    done = subprocess.run(_torchrun(run_dir, f"external_data={ROOT / 'data' / 'external-sample'}",
                                    "external_training=both", "external_epochs=1", "epochs=1",
                                    f"crop_cache={face_cache}", port=29520),
                          capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((run_dir / "external" / "external.json").read_text())
    assert record["n_trained"] == record["n_kept"] > 0 and record["epochs"] == 1
    assert record["leak_guard"].startswith(f"kept {record['n_kept']} of 24 external faces")
    assert (run_dir / "external" / "pretrained_face.pt").is_file() and (run_dir / "fold0" / "best.pt").is_file()
    assert (done.stdout + done.stderr).count("kept ") == 1  # rank 0 alone screened and said so
