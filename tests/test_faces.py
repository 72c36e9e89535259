"""MTCNN crops: faces found and cut with room below, a recorded fallback, a content-keyed cache, the same crop at
training and prediction."""
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT
from PIL import Image

from mcls.config import Config, ConfigError
from mcls.data import faces
from mcls.data.faces import CropSettings, crop_paths, detection_rate
from mcls.data.cache import load_images
from mcls.data.images import load_resized

FACES = ["000045_male_Indian_52/normal.jpg", "000120_female_White_18/mask1.jpeg", "000065_female_Indian_59/normal.jpg"]
OFFSET = (150, 60)  # where the 200 px face photo sits on a 400 x 400 gray canvas


@pytest.fixture(scope="module")
def canvases(tmp_path_factory):
    """Sample faces pasted off-centre onto a larger gray photo, so a crop is a real cut, plus two faceless images."""
    folder = tmp_path_factory.mktemp("faces")
    paths = []
    for k, rel in enumerate(FACES):
        canvas = Image.new("RGB", (400, 400), (128, 128, 128))
        canvas.paste(Image.open(ROOT / "data" / "sample" / "train" / "images" / rel).convert("RGB"), OFFSET)
        paths.append(folder / f"face{k}.png")
        canvas.save(paths[-1])
    Image.new("RGB", (300, 200), (128, 128, 128)).save(folder / "gray.png")
    noise = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noise.png")
    (folder / "empty.jpg").write_bytes(b"")
    return paths, [folder / "gray.png", folder / "noise.png"], folder / "empty.jpg"


@pytest.fixture
def count_detections(monkeypatch):
    calls = []
    real = faces._detect_batch

    def counted(device, arrays):
        calls.append(len(arrays))
        return real(device, arrays)

    monkeypatch.setattr(faces, "_detect_batch", counted)
    return calls


def test_faces_are_found_and_cut_with_room_below(canvases, tmp_path):
    paths, _, _ = canvases
    report = crop_paths(paths, CropSettings(cache_dir=str(tmp_path), device="cpu"))
    assert report["detected"].all() and (report["confidence"] >= 0.9).all() and detection_rate(report) == 1.0
    x0, y0 = OFFSET
    for r in report.itertuples():
        assert 0 <= r.x1 < r.x2 <= 400 and 0 <= r.y1 < r.y2 <= 400
        assert r.x2 - r.x1 == r.y2 - r.y1  # square
        assert r.x1 <= x0 + 60 and r.x2 >= x0 + 140 and r.y1 <= y0 + 40  # the face's middle is inside
        assert r.y2 >= y0 + 200  # extended down to the photo's bottom (the chin)
        assert r.x2 - r.x1 < 400  # a real cut, not the whole canvas


def test_no_face_falls_back_to_a_recorded_centre_crop(canvases, tmp_path):
    paths, faceless, empty = canvases
    report = crop_paths([*faceless, empty, paths[0]], CropSettings(cache_dir=str(tmp_path), device="cpu"))
    gray, noise, bad, face = report.itertuples()
    for r in (gray, noise):  # 300 x 200: centred square of 0.8 * 200 = 160 px
        assert not r.detected and (r.reason == "no face" or r.reason.startswith("low confidence"))
        assert (r.x1, r.y1, r.x2, r.y2) == (70, 20, 230, 180)
    assert bad.reason.startswith("unreadable") and bad.x1 == -1  # one bad file does not stop the run
    assert face.detected and detection_rate(report) == pytest.approx(1 / 3)


def test_second_run_is_served_from_the_cache(canvases, tmp_path, count_detections):
    paths, faceless, _ = canvases
    settings = CropSettings(cache_dir=str(tmp_path / "cache"), device="cpu")
    first = crop_paths(paths + faceless, settings)
    assert sum(count_detections) == 5
    again = crop_paths(paths + faceless, settings)
    assert sum(count_detections) == 5  # nothing detected twice
    pd.testing.assert_frame_equal(first, again)
    wider = crop_paths(paths, CropSettings(**{**settings.__dict__, "margin": 0.4}))
    assert sum(count_detections) == 5  # a crop parameter re-cuts from the cached faces
    assert ((wider["x2"] - wider["x1"]).to_numpy() > (first["x2"] - first["x1"]).to_numpy()[:3]).all()
    copy = tmp_path / "same_bytes.png"
    shutil.copy(paths[0], copy)
    crop_paths([copy], settings)
    assert sum(count_detections) == 5  # keyed by content, not by path
    crop_paths(paths[:1], CropSettings(cache_dir=str(tmp_path / "other"), device="cpu"))
    assert sum(count_detections) == 6


def test_training_and_prediction_see_the_same_crop(canvases, tmp_path):
    from mcls.data.dataset import ImageArrayDataset, make_loader
    from mcls.infer.predictor import predict_paths, predict_probs
    from mcls.infer.serving import Serving
    from mcls.model.classifier import model_from_config
    from mcls.runtime.device import Runtime

    paths, _, _ = canvases
    cfg = Config(crop="mtcnn", crop_cache=str(tmp_path), img_size=48, backbone="test_efficientnet",
                 pretrained="none", tta=False, device="cpu")
    settings = CropSettings.from_config(cfg)
    assert CropSettings.from_config(Config()) is None
    images, bad = load_images(paths, 48, crop=settings)
    box = crop_paths(paths[:1], settings).iloc[0][["x1", "y1", "x2", "y2"]]
    assert not bad and np.array_equal(images[0], load_resized(paths[0], 48, tuple(box)))
    assert not np.array_equal(images[0], load_resized(paths[0], 48))

    torch.manual_seed(0)
    model = model_from_config(cfg).eval()
    ckpt = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, ckpt)
    probs = predict_paths(paths, Serving.resolve(ckpt), device="cpu")[0]
    expected = predict_probs(model, make_loader(ImageArrayDataset(images), 8, train=False), Runtime.from_config(cfg))
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_crop_settings_are_checked():
    with pytest.raises(ConfigError, match="crop='dlib'"):
        Config().updated({"crop": "dlib"})
    with pytest.raises(ConfigError, match="crop_fallback"):
        Config().updated({"crop_fallback": 1.5})


def test_crop_command_reports_the_detection_rate(sample_dir, tmp_path):
    data = tmp_path / "data"
    persons = pd.read_csv(sample_dir / "train" / "train.csv", dtype=str).head(1)
    (data / "train" / "images").mkdir(parents=True)
    persons.to_csv(data / "train" / "train.csv", index=False)
    folder = persons["path"][0]
    shutil.copytree(sample_dir / "train" / "images" / folder, data / "train" / "images" / folder)
    out = tmp_path / "report.csv"
    r = subprocess.run([sys.executable, "-m", "mcls", "crop", f"data_dir={data}", f"crop_cache={tmp_path / 'c'}",
                        "device=cpu", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    report = pd.read_csv(out)
    assert len(report) == 7 and "faces found" in r.stdout and f"{report['detected'].mean():.1%}" in r.stdout


def test_a_detector_failure_falls_back_and_is_not_cached(canvases, tmp_path, monkeypatch):
    paths, faceless, _ = canvases

    def fake(device, arrays):
        if any(a.std() == 0 for a in arrays):  # the flat gray image
            raise RuntimeError("out of memory")
        return [[[10.0, 10.0, 110.0, 130.0, 0.99]] for _ in arrays]

    monkeypatch.setattr(faces, "_detect_batch", fake)
    settings = CropSettings(cache_dir=str(tmp_path), device="cpu")
    report = crop_paths([faceless[0], faceless[1]], settings)
    assert report["reason"].tolist() == ["detector failed", ""]
    assert len(list(tmp_path.rglob("*.json"))) == 1  # only the good detection is cached


def test_a_bug_in_detection_is_not_hidden_as_a_fallback_crop(canvases, tmp_path, monkeypatch):
    """Only the detector's own failures fall back; a programming error shows its traceback."""
    paths, faceless, _ = canvases

    def buggy(device, arrays):
        raise TypeError("a bug, not an odd image")

    monkeypatch.setattr(faces, "_detect_batch", buggy)
    with pytest.raises(TypeError, match="a bug"):
        crop_paths([faceless[0]], CropSettings(cache_dir=str(tmp_path), device="cpu"))
