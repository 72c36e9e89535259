import os
import shutil
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
            num_workers=0, tta=True, ema_decay=0.0, wear_per_person=5, mask_backbone="", mask_size=0)


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
