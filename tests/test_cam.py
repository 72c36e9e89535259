"""CAM maps have the input's size for CNN, ViT and Swin backbones; the energy share is exact; a run is inspected."""
import json

import numpy as np
import pytest
import timm
import torch

from mcls.analysis.cam import (
    METHODS,
    HeadView,
    cam_maps,
    central_box,
    energy_share,
    get_method,
    lower_half,
    overlay,
    regions,
)
from mcls.analysis.cam_inspect import inspect_run
from mcls.model.classifier import MaskClassifier


def tiny_model(backbone: str, heads: str = "multi", **kwargs) -> MaskClassifier:
    net = timm.create_model(backbone, pretrained=False, num_classes=0, **kwargs)
    return MaskClassifier(net, heads, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()


TINY_SWIN = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=4, dynamic_img_size=True)


@pytest.mark.parametrize("backbone, kwargs, layout", [
    ("test_efficientnet", {}, "NCHW"),
    ("test_vit", {}, "tokens"),
    ("swin_tiny_patch4_window7_224", TINY_SWIN, "NHWC"),
])
@pytest.mark.parametrize("hw", [(48, 48), (64, 32)])
def test_maps_have_the_input_size(backbone, kwargs, layout, hw):
    torch.manual_seed(0)
    model = tiny_model(backbone, **kwargs)
    assert HeadView(model, "mask", input_size=hw).layout == layout
    maps = cam_maps(model, torch.rand(3, 3, *hw), "mask", classes=[0, 1, 2])
    assert maps.shape == (3, *hw) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and 0 <= maps.min() and maps.max() <= 1 and maps.max() > 0.5


def test_vit_grid_follows_the_input_not_a_fixed_14x14():
    view = HeadView(tiny_model("test_vit"), "class", input_size=(64, 32))
    view.input_hw = (64, 32)
    tokens = torch.arange(1 + 4 * 2, dtype=torch.float32).view(1, 9, 1)  # a class token, then a 4 x 2 grid
    grid = view.reshape_transform(tokens)
    assert grid.shape == (1, 1, 4, 2) and grid[0, 0].flatten().tolist() == list(range(1, 9))


def test_single_head_model_and_uint8_images():
    model = tiny_model("test_efficientnet", heads="single")
    images = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    for head, n in (("class", 18), ("mask", 3), ("gender", 2), ("age", 3)):
        assert HeadView(model, head)(torch.rand(1, 3, 40, 40)).shape == (1, n)
        assert cam_maps(model, images, head).shape == (2, 40, 40)
    with pytest.raises(ValueError, match="0..1"):
        cam_maps(model, images, "gender", classes=2)
    assert overlay(images[0], np.zeros((40, 40))).shape == (40, 40, 3)


def test_method_registry():
    assert get_method("gradcam") is METHODS["gradcam"] and get_method("GradCAM++") is METHODS["gradcam++"]
    with pytest.raises(ValueError, match="valid: gradcam, gradcam\\+\\+"):
        get_method("gradcam3000")
    model = tiny_model("test_efficientnet")
    for name in METHODS:
        if name != "scorecam":  # a forward pass per channel: right but slow
            assert cam_maps(model, torch.rand(1, 3, 32, 32), "age", 1, method=name).shape == (1, 32, 32), name


def test_energy_share_is_exact_on_a_synthetic_map():
    cam = np.zeros((10, 20))
    cam[2:4, 5:10] = 1.0  # 10 units inside the box below
    cam[8, 0] = 3.0  # 3 units outside
    cam[0, 19] = -5.0  # negative values carry no energy
    assert energy_share(cam, (5, 2, 10, 4)) == pytest.approx(10 / 13, abs=1e-12)
    assert energy_share(cam, (0, 0, 20, 10)) == 1.0
    assert energy_share(cam, lower_half((0, 0, 20, 10))) == pytest.approx(3 / 13, abs=1e-12)
    assert np.isnan(energy_share(np.zeros((4, 4)), (0, 0, 2, 2)))
    stack = np.stack([cam, np.ones((10, 20))])
    np.testing.assert_allclose(energy_share(stack, (0, 0, 10, 5)), [10 / 13, 0.25])
    assert central_box((0, 0, 100, 100), 0.64) == (10, 10, 90, 90)
    boxes = regions(100, 100)
    assert boxes["face"] == (0, 0, 100, 100) and boxes["face_lower"] == (0, 50, 100, 100)
    assert energy_share(np.ones((100, 100)), boxes["center"]) == pytest.approx(0.6, abs=0.01)


def test_inspect_run_writes_grids_and_energy(trained_run, sample_dir):
    result = inspect_run(trained_run, data_dir=sample_dir, n=6, per_class=2, max_images=30, device="cpu")
    names = set(result["paths"])
    assert {"misclassified_mask", "misclassified_gender", "misclassified_age", "per_class_mask", "per_class_gender",
            "per_class_age", "energy"} <= names and any(n.startswith("person_") for n in names)
    for name, path in result["paths"].items():
        assert path.parent == trained_run and path.stat().st_size > 0
        assert path.suffix == (".json" if name == "energy" else ".png")
    saved = json.loads((trained_run / "cam_energy.json").read_text())["gradcam"]
    assert saved == json.loads(json.dumps(result["energy"]))
    assert saved["n_images"] == 30 and saved["folds"] == [0] and saved["img_size"] == 48
    assert saved["area_share"]["face"] == 1.0 and saved["area_share"]["face_lower"] == 0.5
    for head in ("mask", "gender", "age"):
        shares = saved["heads"][head]
        assert shares["face"] == pytest.approx(1.0)
        assert 0 <= shares["center_lower"] <= shares["center"] <= 1 and 0 <= shares["face_lower"] <= 1
    import matplotlib.pyplot as plt

    plt.close("all")


def test_cli_cam_adds_its_method_to_the_energy_file(trained_run, sample_dir, capsys):
    from mcls.cli import main

    (trained_run / "cam_energy.json").write_text(json.dumps({"layercam": {"method": "layercam"}}))
    assert main(["cam", "--run", str(trained_run), "--max-images", "10", "cam_method=eigencam", "cam_images=2",
                 f"data_dir={sample_dir}", "device=cpu"]) == 0
    saved = json.loads((trained_run / "cam_energy.json").read_text())
    assert set(saved) == {"layercam", "eigencam"} and saved["eigencam"]["n_images"] == 10
    assert (trained_run / "cam_eigencam_misclassified_mask.png").is_file()
    assert "cam_energy.json" in capsys.readouterr().out
    assert main(["cam", "--run", str(trained_run), "cam_method=nope"]) == 2


def test_mistakes_come_most_confident_first_and_are_counted_per_class():
    import pandas as pd

    from mcls.analysis.cam_inspect import _plan_grids, head_class_names, mistakes_by_class

    table = pd.DataFrame({"person": ["a", "b", "c", "d"], "path": [f"p/{k}.jpg" for k in "abcd"],
                          "mask_true": 0, "mask_pred": 0, "mask_conf": 0.9, "age_true": 1, "age_pred": 1,
                          "age_conf": 0.9, "gender_true": [0, 0, 0, 1], "gender_pred": [1, 1, 1, 1],
                          "gender_conf": [0.6, 0.9, 0.7, 0.8]})
    grids = _plan_grids(table, head_class_names((30, 60)), 8, 1, "a", np.random.default_rng(0))
    assert [c[0] for c in grids["misclassified_gender"]["cells"]] == [1, 2, 0]  # 0.9, 0.7, 0.6
    assert grids["misclassified_gender"]["pairs"] and not grids["misclassified_mask"]["cells"]
    m = mistakes_by_class(table).set_index(["head", "true class"])
    assert m.loc[("gender", "male"), "wrong"] == 3 and m.loc[("gender", "male"), "most often taken for"] == "female"
    assert m.loc[("gender", "female"), "error rate"] == 0


def test_browser_shows_a_grid_at_once_and_its_controls_redraw_it(trained_run, monkeypatch):
    import IPython.display
    import matplotlib.figure

    from mcls.analysis.cam_browser import browser

    class Handle:
        def __init__(self, obj):
            self.shown = [obj]

        def update(self, obj):
            self.shown.append(obj)

    handles = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, display_id=None: handles.append(Handle(obj)) or
                        handles[-1])
    panel = browser(trained_run, n=4)
    assert len(handles) == 1 and isinstance(handles[0].shown[0], matplotlib.figure.Figure)
    head = panel.children[0].children[0]
    head.value = "gender"  # new class options, then the grid for the new head
    titles = [fig.get_suptitle() for fig in handles[0].shown]
    assert titles[0].startswith("mask = wear,") and titles[-1].startswith("gender = male,")
    assert len(handles) == 1  # redrawn in place, never a second output
