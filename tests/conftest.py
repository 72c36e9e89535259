import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
# A tiny random-init timm model: the same code path as real backbones, seconds per epoch on the sample. Its runs
# ship the plain weights (tests that exercise the EMA turn it on), and every photo is used so the one epoch gives
# GradCAM a model with gradients to show.
# The default's two backbones are both the tiny one, the mask task's at the input's size.
TINY = dict(backbone="test_efficientnet", pretrained="none", img_size=48, batch_size=16, n_folds=4, epochs=1,
            num_workers=0, tta=True, person_consistent=True, ema_decay=0.0, wear_per_person=5, mask_backbone="",
            mask_size=0)


@pytest.fixture
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture
def sample_copy(tmp_path) -> Path:
    """A writable copy of data/sample for tests that break or relabel it."""
    dst = tmp_path / "data"
    shutil.copytree(SAMPLE, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


@pytest.fixture
def mcls_cli(capsys):
    """`mcls ...` run in this process, as a completed process (returncode, stdout, stderr): the command line's own
    parsing and error handling without paying a fresh interpreter and torch import for every call (the subprocess
    path is tested in test_cli.py)."""
    import subprocess

    from mcls.cli import main

    def run(*args):
        capsys.readouterr()
        try:
            code = main([str(a) for a in args]) or 0
        except SystemExit as done:  # argparse's refusals and `mcls check`'s failure
            code = done.code if isinstance(done.code, int) else 1
            if isinstance(done.code, str):  # what the interpreter would print on its way out
                print(done.code, file=sys.stderr)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


@pytest.fixture(scope="session")
def face_cache(tmp_path_factory) -> str:
    """One crop cache (MTCNN detections and dlib descriptors, keyed by file content) for the tests that screen
    external faces: the sample's competition photos are described once for all of them. Tests of the cache itself
    keep their own."""
    return str(tmp_path_factory.mktemp("face-cache"))


@pytest.fixture
def tiny_cfg(tmp_path, sample_dir):
    from mcls.config import Config

    return Config(data_dir=str(sample_dir), run_dir=str(tmp_path / "run"), **TINY)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One tiny trained run (fold 0 of 4) shared by the tests that only read it or add their own outputs."""
    from mcls.config import Config
    from mcls.train.run import train

    run = tmp_path_factory.mktemp("shared") / "run"
    train(Config(data_dir=str(SAMPLE), run_dir=str(run), **TINY))
    return run


@pytest.fixture(scope="session")
def members_run(tmp_path_factory) -> tuple[Path, dict]:
    """(run folder, train()'s summary) of a tiny run with one member, `small` (img_size 40, train_seed 3), on all
    4 folds, its age calibration fitted on their average: trained once for the ensemble tests and notebook 05."""
    from mcls.config import Config
    from mcls.train.run import train

    base = tmp_path_factory.mktemp("members")
    member = base / "small.yaml"
    member.write_text("img_size: 40\ntrain_seed: 3\n")
    run = base / "run"
    summary = train(Config(data_dir=str(SAMPLE), run_dir=str(run), **TINY).updated(
        {"members": [str(member)], "fold": -1, "calibrate_age": True}))
    return run, summary
