"""Hostile input and faults: each case fails with one sentence that names the file or key and the fix, before long
work starts; after a fault, every file the user had is intact and the retry works."""
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, SAMPLE, TINY
from PIL import Image

from mcls.cli import main
from mcls.config import ConfigError
from mcls.data.table import DataError


def cli(capsys, *argv) -> tuple[int, str]:
    """(exit code, stderr) of `mcls ...` in this process."""
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_sentence(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A writable copy of the shared trained run, for tests that damage it."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


# ------------------------------------------------------------------------------ config checked before any work
@pytest.mark.parametrize("key, value, says", [
    ("lr", 0, "lr=0.0 must be positive"),
    ("device", "tpu", "device='tpu' is not one of auto, cpu, cuda"),
    ("img_size", 8, "img_size=8 must be at least 32"),
    ("patience", 0, "patience=0 must be at least 1"),
])
def test_out_of_range_values_are_refused_with_the_key(key, value, says, tmp_path, capsys):
    code, err = cli(capsys, "train", f"run_dir={tmp_path / 'r'}", f"{key}={value}")
    assert code == 2 and says in one_sentence(err.replace("\n  ", " "))
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_one_sentence(tmp_path, capsys):
    code, err = cli(capsys, "train", f"run_dir={tmp_path / 'r'}", "device=cuda", *[f"{k}={v}" for k, v in TINY.items()])
    assert code == 2 and "sees no CUDA GPU on this machine; use device=auto" in err
    assert not (tmp_path / "r").exists()


def test_every_reference_is_checked_before_the_first_epoch_and_a_fixed_retry_starts(tiny_cfg, tmp_path):
    from mcls.train.run import train

    not_weights = tmp_path / "weights.pt"
    not_weights.write_text("hello")
    bad = tiny_cfg.updated({"members": ["nosuchmember"], "pretrained": str(not_weights),
                            "relabel_file": str(tmp_path / "missing.csv")})
    start = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        train(bad)
    message = str(caught.value)
    assert "nosuchmember" in message and "config file not found" in message
    assert f"pretrained={str(not_weights)!r} is not a saved state_dict" in message
    assert "missing.csv" in message and "relabel file not found" in message
    assert time.perf_counter() - start < 20 and not Path(tiny_cfg.run_dir).exists()  # nothing trained, nothing left
    train(tiny_cfg)  # the same run_dir, fixed: starts, not "already holds a run"


def _read_only_folder(tmp_path, monkeypatch):
    """A folder on which writing fails as on a read-only mount (tests run as root here, for whom chmod 555 would
    not lock anything): the OS's own error, raised where the kit first tries to write."""
    import tempfile

    locked = tmp_path / "locked"
    locked.mkdir()
    real = tempfile.TemporaryFile

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == locked:
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    return locked


def test_a_read_only_run_folder_is_refused_before_anything_starts(tiny_cfg, tmp_path, monkeypatch):
    from mcls.train.run import train

    locked = _read_only_folder(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match=r"run_dir=.*: cannot write in .*locked \(Read-only file system\)"):
        train(tiny_cfg.updated({"run_dir": str(locked / "run")}))


def test_a_run_that_fails_before_its_first_epoch_leaves_nothing_that_blocks_the_retry(tiny_cfg):
    from mcls.train.run import train

    with pytest.raises(ValueError, match="n_folds=60 is more than the 48 persons"):
        train(tiny_cfg.updated({"n_folds": 60, "fold": 0}))
    assert not Path(tiny_cfg.run_dir).exists()
    train(tiny_cfg)


# ------------------------------------------------------------------------------------------- relabel decisions
def test_a_hand_edited_relabel_age_out_of_range_is_refused_on_read(sample_copy, tmp_path):
    from mcls.data.table import load_train_table

    person = pd.read_csv(sample_copy / "train" / "train.csv", dtype=str)["id"][0]
    for age in ("-5", "520"):
        path = tmp_path / f"relabel{age}.csv"
        path.write_text(f"id,field,old,new,reason,time\n{person},age,30,{age},typo,\n")
        with pytest.raises(DataError, match=rf"row 2 .*age '{age}' is not a whole number of years in 0..120"):
            load_train_table(sample_copy, relabel_file=path)


def test_relabel_apply_refuses_an_unknown_person_and_writes_nothing(tmp_path, capsys):
    log = tmp_path / "relabel.csv"
    reviewed = tmp_path / "reviewed.csv"
    pd.DataFrame([{"person": "999999", "field": "gender", "given": "male", "suggested": "female",
                   "decision": "accept"}]).to_csv(reviewed, index=False)
    code, err = cli(capsys, "relabel", f"data_dir={SAMPLE}", "--apply", reviewed, "--relabel-file", log)
    assert code == 2 and "no such person in train.csv: 999999; nothing was written" in err
    assert not log.exists()


# ------------------------------------------------------------------------------------------------- outputs
def test_predict_folder_keeps_an_earlier_output_it_would_replace(run_copy, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in sorted(os.listdir(SAMPLE / "eval" / "images"))[:3]:
        shutil.copy(SAMPLE / "eval" / "images" / name, folder / name)
    out = tmp_path / "p.csv"
    out.write_text("mine,not yours\n")
    assert cli(capsys, "predict", "--run", run_copy, "--folder", folder, "--out", out)[0] == 0
    kept = [p for p in tmp_path.glob("p.*.csv")]
    assert len(kept) == 1 and kept[0].read_text() == "mine,not yours\n" and "class" in out.read_text()


def test_a_full_disk_while_writing_a_submission_leaves_the_old_one(run_copy, monkeypatch):
    from mcls.infer.submission import write_submission

    old = run_copy / "submission.csv"
    old.write_text("ImageID,ans\nold,1\n")

    def half_then_full(self, path, *args, **kwargs):
        Path(path).write_text("ImageID,ans\nhalf")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        write_submission(SAMPLE, run_copy, device="cpu")
    assert old.read_text() == "ImageID,ans\nold,1\n"
    assert not list(run_copy.glob(".submission.csv.*"))  # no half-written file left beside it
    monkeypatch.undo()
    write_submission(SAMPLE, run_copy, device="cpu")  # the retry works, and keeps the old one beside it
    assert len(pd.read_csv(old)) == 21 and len(list(run_copy.glob("submission.*.csv"))) == 1


def test_out_naming_a_folder_is_refused_before_predicting(run_copy, tmp_path, capsys, monkeypatch):
    import mcls.infer.submission as submission

    monkeypatch.setattr(submission, "predict_paths", lambda *a, **k: pytest.fail("predicted before the check"))
    code, err = cli(capsys, "predict", "--run", run_copy, "--folder", SAMPLE / "eval" / "images", "--out", tmp_path)
    assert code == 2 and f"--out {tmp_path} is a folder; give a file name" in one_sentence(err)


def test_an_unwritable_output_folder_is_refused_before_predicting(run_copy, tmp_path, capsys, monkeypatch):
    import mcls.infer.submission as submission

    monkeypatch.setattr(submission, "predict_paths", lambda *a, **k: pytest.fail("predicted before the check"))
    locked = _read_only_folder(tmp_path, monkeypatch)
    code, err = cli(capsys, "predict", "--run", run_copy, "--out", locked / "s.csv", f"data_dir={SAMPLE}")
    assert code == 2 and f"cannot write in {locked} (Read-only file system)" in one_sentence(err)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_written_files_get_the_users_umask_not_0600(tmp_path, umask, mode):
    from mcls.io import write_json

    old = os.umask(umask)
    try:
        write_json(tmp_path / "shared.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "shared.json").stat().st_mode & 0o777 == mode


# ----------------------------------------------------------------------------------------- person grouping
def test_person_grouping_takes_duplicates_single_images_and_blank_images():
    from mcls.infer.persons import cosine_distances, group_images

    rng = np.random.default_rng(0)
    a = rng.normal(size=8)
    twins = np.stack([a, a]) - a  # two identical photos: both centre to the zero vector
    assert list(group_images(twins, 0.4)) == [0, 0]
    mixed = np.stack([np.zeros(8), np.zeros(8), a / np.linalg.norm(a)])
    groups = group_images(mixed, 0.4)
    assert groups[0] == groups[1] != groups[2]
    assert np.isfinite(cosine_distances(mixed)).all()
    assert list(group_images(np.zeros((1, 8)), 0.4)) == [0] and len(group_images(np.zeros((0, 8)), 0.4)) == 0


def test_predict_folder_of_identical_and_black_photos(run_copy, tmp_path, capsys):
    for files in (["a.jpg", "b.jpg"], ["only.jpg"]):
        folder = tmp_path / files[0]
        folder.mkdir()
        for name in files:
            shutil.copy(SAMPLE / "eval" / "images" / sorted(os.listdir(SAMPLE / "eval" / "images"))[0], folder / name)
        assert cli(capsys, "predict", "--run", run_copy, "--folder", folder, "--out", tmp_path / f"{files[0]}.csv",
                   "device=cpu")[0] == 0
    black = tmp_path / "black"
    black.mkdir()
    for k in range(3):
        Image.new("RGB", (64, 64)).save(black / f"{k}.png")
    assert cli(capsys, "predict", "--run", run_copy, "--folder", black, "--out", tmp_path / "black.csv")[0] == 0
    assert len(pd.read_csv(tmp_path / "black.csv")) == 3


# -------------------------------------------------------------------------------------- damaged checkpoints
def test_a_truncated_best_pt_is_one_sentence_on_predict(run_copy, capsys):
    best = run_copy / "fold0" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    code, err = cli(capsys, "predict", "--run", run_copy, f"data_dir={SAMPLE}")
    assert code == 2 and f"{best}: not a readable checkpoint, truncated or not written by mcls" in one_sentence(err)


def test_a_truncated_last_pt_on_resume_says_how_to_go_on(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", f"run_dir={run}", f"data_dir={SAMPLE}", *[f"{k}={v}" for k, v in TINY.items()]]
    assert cli(capsys, *args)[0] == 0
    last = run / "fold0" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    code, err = cli(capsys, *args, "--resume")
    assert code == 2 and "last.pt: not a readable checkpoint" in err and "delete it and resume again" in err
    last.unlink()  # what the sentence says to do
    assert cli(capsys, *args, "--resume")[0] == 0


def test_a_full_disk_during_training_keeps_the_last_epoch_and_resume_finishes(tiny_cfg, monkeypatch):
    from mcls.train.run import train

    cfg = tiny_cfg.updated({"epochs": 2})
    real_save, calls = torch.save, []

    def full_on_the_third_save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:  # epoch 1 wrote its two checkpoints; epoch 2's first one hits the full disk
            Path(path).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")  # as a failed write raises it: naming nothing
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_on_the_third_save)
    with pytest.raises(OSError, match="No space left") as raised:
        train(cfg)
    named = Path(raised.value.filename)  # the checkpoint itself, not its hidden temporary file
    assert named.parent == Path(cfg.run_dir) / "fold0" and named.name in ("best.pt", "last.pt")
    from mcls.cli import describe_os_error

    assert describe_os_error(raised.value).startswith(f"{raised.value.filename}: the disk is full (No space left on "
                                                      "device); free space, then run the same command again")
    last = Path(cfg.run_dir) / "fold0" / "last.pt"
    assert torch.load(last, weights_only=False)["state"]["epoch"] == 1  # the last saved epoch is intact
    monkeypatch.undo()
    summary = train(cfg, resume=True)
    assert summary["per_fold"]["0"]["epochs_run"] == 2


def test_the_cli_turns_a_full_disk_into_what_to_do(capsys, monkeypatch):
    from mcls.cli import evidence

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/fold0/last.pt")

    monkeypatch.setattr(evidence, "cmd_runs", full)
    code, err = cli(capsys, "runs")
    assert code == 2 and "runs/x/fold0/last.pt: the disk is full (No space left on device); free space" in err


# ----------------------------------------------------------------------------------------- damaged records
def test_a_truncated_summary_json_is_named_and_the_other_runs_still_listed(run_copy, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(run_copy, runs / "good")
    shutil.copytree(run_copy, runs / "damaged")
    summary = runs / "damaged" / "summary.json"
    summary.write_text(summary.read_text()[:40])
    assert main(["runs", str(runs)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "good" in out and f"{summary}: not valid JSON" in out


def test_a_damaged_image_cache_is_rebuilt(tmp_path):
    from mcls.data.cache import cached_images

    paths = sorted((SAMPLE / "eval" / "images").iterdir())[:4]
    first, _ = cached_images(paths, 32, cache_dir=tmp_path)
    array_file = next(tmp_path.glob("*.npy"))
    array_file.write_bytes(array_file.read_bytes()[:100])
    again, _ = cached_images(paths, 32, cache_dir=tmp_path)
    assert np.array_equal(np.asarray(again), np.asarray(first))
    next(tmp_path.glob("*.json")).write_text("{not json")
    assert np.array_equal(np.asarray(cached_images(paths, 32, cache_dir=tmp_path)[0]), np.asarray(first))


def test_an_info_csv_with_a_header_only_is_one_sentence(run_copy, sample_copy, capsys):
    (sample_copy / "eval" / "info.csv").write_text("ImageID,ans\n")
    code, err = cli(capsys, "predict", "--run", run_copy, f"data_dir={sample_copy}")
    assert code == 2 and "info.csv" in err and "lists no images (a header only)" in err


def test_a_decompression_bomb_is_refused_from_its_header_and_the_limit_is_a_key(tmp_path, sample_copy, capsys):
    from mcls.config import Config
    from mcls.data.images import BadImageError, decode_image

    Image.new("L", (200, 200)).save(tmp_path / "bomb.png")
    with pytest.raises(BadImageError, match=r"bomb.png: 200x200 pixels is more than the 0.01 megapixels accepted for "
                                            r"one face photo \(max_image_megapixels\); resize it, leave it out, or "
                                            r"raise max_image_megapixels"):
        decode_image(tmp_path / "bomb.png", max_pixels=Config(max_image_megapixels=0.01).max_pixels)
    # the key reaches the data check: the sample's 200 x 200 photos over a tiny limit are counted unreadable
    with pytest.raises(SystemExit):  # the check fails where photos cannot be read
        main(["check", f"data_dir={sample_copy}", "max_image_megapixels=0.01"])
    assert "336 training images, 21 eval images, 357 unreadable" in capsys.readouterr().out
    code, err = cli(capsys, "check", f"data_dir={sample_copy}", "max_image_megapixels=500")
    assert code == 2 and "max_image_megapixels=500.0 must be in (0, 178]" in err


def _png_header(path, width, height):
    """A PNG that claims width x height pixels and holds none: what a bomb shows before it is decoded."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side, shown", [(10_000, "10000x10000 pixels"), (30_000, "900,000,000 pixels")])
def test_a_bomb_past_pillows_own_limits_is_one_sentence_and_no_warning(tmp_path, side, shown):
    import warnings

    from mcls.data.images import BadImageError, decode_image

    bomb = _png_header(tmp_path / "huge.png", side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would print beside our sentence
        with pytest.raises(BadImageError, match=rf"huge.png: {shown} is more than the 64 megapixels accepted"):
            decode_image(bomb)


def test_overrides_on_both_sides_of_run_are_one_command(run_copy, tmp_path, capsys):
    out = tmp_path / "s.csv"
    code = main(["predict", "tta=false", "--run", str(run_copy), "person_consistent=false", "--out", str(out),
                 f"data_dir={SAMPLE}"])
    assert code == 0 and len(pd.read_csv(out)) == 21
    with pytest.raises(SystemExit):
        main(["predict", "--run", str(run_copy), "--nosuchflag"])


# ------------------------------------------------------------------------------------------------- kill -9
def test_kill_9_during_predict_leaves_the_old_submission_and_the_retry_works(run_copy):
    old = run_copy / "submission.csv"
    old.write_text("ImageID,ans\nold,1\n")
    cmd = [sys.executable, "-m", "mcls", "predict", "--run", str(run_copy), f"data_dir={SAMPLE}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    time.sleep(3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    text = old.read_text()
    assert text == "ImageID,ans\nold,1\n" or len(pd.read_csv(old)) == 21  # the old file or the whole new one
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT, timeout=300)
    assert len(pd.read_csv(old)) == 21

