"""Bad input: each case gets a clear error naming the file (or is converted), and nothing is lost."""

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image

from mcls.config import Config
from mcls.data.cache import load_images
from mcls.data.images import BadImageError, decode_image
from mcls.data.table import load_train_table
from mcls.io import atomic_path, write_text
from mcls.model.checkpoint import load_checkpoint
from mcls.model.classifier import create_model
from mcls.train.run import train


def _save(path, img, **kw):
    img.save(path, **kw)
    return path


def test_corrupt_truncated_and_empty_files_name_the_file(tmp_path):
    good = _save(tmp_path / "good.jpg", Image.new("RGB", (40, 40), (200, 10, 10)))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 10)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for bad, words in ((corrupt, "cannot decode"), (truncated, "cannot decode"), (empty, "empty file")):
        with pytest.raises(BadImageError, match=words) as err:
            decode_image(bad)
        assert str(bad) in str(err.value)
    with pytest.raises(BadImageError) as err:  # all bad files are listed at once
        load_images([good, corrupt, truncated, empty], 16)
    assert all(str(p) in str(err.value) for p in (corrupt, truncated, empty)) and "on_bad_image=skip" in str(err.value)
    images, bad = load_images([good, corrupt, empty], 16, on_bad_image="skip")
    assert bad == [1, 2] and images[0].mean() > 0


def test_image_modes_are_converted_to_rgb(tmp_path):
    gray = _save(tmp_path / "gray.png", Image.new("L", (8, 8), 128))
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red -> white background
    rgba = _save(tmp_path / "rgba.png", rgba)
    palette = _save(tmp_path / "pal.png", Image.new("RGB", (8, 8), (0, 0, 255)).convert("P"))
    deep = _save(tmp_path / "deep.png", Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)))
    assert (decode_image(gray) == 128).all()
    assert (decode_image(rgba) == 255).all()
    assert tuple(decode_image(palette)[0, 0]) == (0, 0, 255)
    assert Image.open(deep).mode.startswith("I") and (decode_image(deep) == 255).all()
    for p in (gray, rgba, palette, deep):
        assert decode_image(p).shape == (8, 8, 3) and decode_image(p).dtype == np.uint8


def test_extension_that_lies_is_read_by_content(tmp_path):
    liar = tmp_path / "actually_png.jpg"
    Image.new("RGB", (10, 6), (0, 255, 0)).save(liar, format="PNG")
    assert decode_image(liar).shape == (6, 10, 3)


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (10, 20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(tmp_path / "rot.jpg", img, exif=exif)
    assert decode_image(path).shape == (20, 10, 3)


def test_mixed_extensions_in_a_folder_warn_and_load(sample_copy):
    person = sorted((sample_copy / "train" / "images").iterdir())[0]
    src = next(person.glob("normal.*"))
    Image.open(src).save(person / "normal.png")
    src.unlink()
    with pytest.warns(UserWarning, match="mix file extensions"):
        table = load_train_table(sample_copy)
    assert len(table) == 336


def test_unreadable_training_image_stops_before_training_or_is_skipped(sample_copy, tmp_path):
    victim = next((sample_copy / "train" / "images").iterdir()) / "mask2.jpg"
    victim = victim if victim.exists() else next(victim.parent.glob("mask2.*"))
    victim.write_bytes(b"")
    cfg = Config(data_dir=str(sample_copy), run_dir=str(tmp_path / "err"), **TINY)
    with pytest.raises(BadImageError, match="empty file"):
        train(cfg)
    assert not (tmp_path / "err" / "fold0").exists()  # nothing trained on a broken data set
    summary = train(cfg.updated({"run_dir": str(tmp_path / "skip"), "on_bad_image": "skip"}))
    fold = summary["per_fold"]["0"]
    assert fold["n_val_images"] in (83, 84)


def test_checkpoint_from_another_backbone_is_refused(tmp_path):
    model = create_model("test_efficientnet", pretrained="none")
    cfg = Config(backbone="test_resnet", pretrained="none")
    ckpt = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "config": cfg.to_dict()}, ckpt)
    with pytest.raises(ValueError, match=r"best.pt: weights do not fit backbone 'test_resnet'"):
        load_checkpoint(ckpt)
    weights = tmp_path / "other.pth"
    torch.save(create_model("test_resnet", pretrained="none").face_backbone().state_dict(), weights)
    with pytest.raises(ValueError, match="other.pth"):
        create_model("test_efficientnet", pretrained=str(weights))


def test_atomic_write_keeps_the_old_file_on_a_crash(tmp_path):
    target = tmp_path / "metrics.csv"
    write_text(target, "epoch,f1\n1,0.5\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("epoch,f1\n1,0.5\n2,")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "epoch,f1\n1,0.5\n" and list(tmp_path.iterdir()) == [target]
