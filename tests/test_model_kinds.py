"""Every kind of model the kit serves (heads = single, multi, separate, mask_apart) takes the same path: it trains a
step, is saved and reloaded to the same predictions, and GradCAM explains each of its heads."""
import numpy as np
import pytest
import torch

from mcls.analysis.cam import cam_maps
from mcls.config import Config
from mcls.labels import HEAD_SIZES, NUM_CLASSES
from mcls.model.checkpoint import load_checkpoint, save_best
from mcls.model.classifier import class_log_probs, model_from_config
from mcls.runtime.device import Runtime, seed_everything
from mcls.train.steps import train_one_epoch
from mcls.train.losses import TaskLoss
from mcls.train.mask_view import MaskView
from mcls.train.mixing import BatchMixer

ONE_BACKBONE = dict(mask_size=0, mix="none", mix_tasks="all", mask_view="none")
# a model with a mask backbone of its own trains it as the default does: its own size, the left/right cut, reframing
OWN_MASK = dict(mask_size=48, mix="vcutmix_fixed", mix_prob=1.0, mix_tasks="mask", mask_view="reframe")
KINDS = {"single": ONE_BACKBONE, "multi": ONE_BACKBONE, "separate": OWN_MASK, "mask_apart": OWN_MASK}
HEAD_NAMES = {"single": ("class", "mask", "gender", "age"), "multi": ("mask", "gender", "age"),
              "separate": ("mask", "gender", "age"), "mask_apart": ("mask", "gender", "age")}


def kind_config(heads: str) -> Config:
    return Config().updated({"heads": heads, **KINDS[heads], "backbone": "test_efficientnet", "pretrained": "none",
                             "img_size": 64, "device": "cpu", "ema_decay": 0.0})


def test_the_kinds_tested_are_every_kind_the_config_accepts():
    from mcls.model.classifier import HEAD_TYPES

    assert set(KINDS) == set(HEAD_TYPES)


@pytest.mark.parametrize("heads", list(KINDS))
def test_a_model_kind_trains_a_step_reloads_to_the_same_predictions_and_has_a_cam_per_head(heads, tmp_path):
    cfg = kind_config(heads)
    seed_everything(0)
    model = model_from_config(cfg)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (8, 3, 64, 64), dtype=np.uint8))
    # targets: mask, gender, training age band, label, age (dataset.TARGET_COLUMNS)
    mask, gender, band = rng.integers(0, 3, 8), rng.integers(0, 2, 8), rng.integers(0, 3, 8)
    y = torch.from_numpy(np.stack([mask, gender, band, 6 * mask + 3 * gender + band, 20 + 20 * band], 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    mixer = BatchMixer(cfg.mix, cfg.mix_prob, tasks=cfg.mix_tasks) if cfg.mix != "none" else None
    view = MaskView(cfg.mask_view) if cfg.mask_view != "none" else None
    stats = train_one_epoch(model, [(x, y, None)], TaskLoss(cfg, y.numpy()), optimizer, scheduler,
                            Runtime.from_config(cfg), mixer=mixer, mask_view=view)
    assert np.isfinite(stats["train_loss"])
    moved = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    # the step reached every backbone of the model's table
    assert {k.split(".")[1] for k in moved if k.startswith("backbones.")} == set(model.groups.values())

    save_best(tmp_path / "best.pt", model, cfg, {"epoch": 1})
    loaded, saved = load_checkpoint(tmp_path / "best.pt")
    assert saved.heads == heads and saved.mask_size == cfg.mask_size
    with torch.no_grad():
        assert torch.allclose(class_log_probs(model.eval()(x)), class_log_probs(loaded(x)), atol=1e-5)
    for head in HEAD_NAMES[heads]:
        # a one-step model's map for one class may be all negative (zero after GradCAM's ReLU): some class shows
        maps = [cam_maps(loaded, x[:2], head, classes=c) for c in range(HEAD_SIZES.get(head, NUM_CLASSES))]
        assert all(m.shape == (2, 64, 64) and np.isfinite(m).all() for m in maps), head
        assert max(m.max() for m in maps) > 0, head


def test_the_default_model_has_a_mask_backbone_and_one_for_gender_and_age():
    cfg = Config().updated({"backbone": "test_efficientnet", "pretrained": "none"})
    model = model_from_config(cfg)
    assert set(model.backbones) == {"mask", "face"} and not hasattr(model, "backbone")
    assert model.backbone_for("gender") is model.backbone_for("age") is model.backbones["face"]
    assert model.backbone_for("mask") is not model.backbones["face"]
    # the mask backbone reads the face at its own size, gender and age at the config's
    assert 0 < cfg.mask_size < cfg.img_size and cfg.mask_view == "reframe" and cfg.mix_tasks == "mask"
    seen = {}
    for name, net in model.backbones.items():
        net.register_forward_hook(lambda m, i, o, name=name: seen.update({name: tuple(i[0].shape[-2:])}))
    model.eval()(torch.zeros(1, 3, cfg.img_size, cfg.img_size, dtype=torch.uint8))
    assert seen == {"mask": (cfg.mask_size, cfg.mask_size), "face": (cfg.img_size, cfg.img_size)}


def test_in_a_mask_apart_model_the_mask_loss_reaches_only_the_mask_backbone():
    model = model_from_config(kind_config("mask_apart")).train()
    out = model(torch.rand(2, 3, 64, 64))
    out["mask"].sum().backward()
    grads = {k: any(p.grad is not None and p.grad.abs().sum() > 0 for p in b.parameters())
             for k, b in model.backbones.items()}
    assert grads == {"mask": True, "face": False}


def test_one_backbone_heads_take_the_one_backbone_mask_keys_unless_given():
    from mcls.config import ONE_BACKBONE, ConfigError, load_config

    for heads in ("multi", "single"):
        cfg = load_config(None, [f"heads={heads}"])
        assert {k: getattr(cfg, k) for k in ONE_BACKBONE} == ONE_BACKBONE
        assert model_from_config(cfg.updated({"backbone": "test_efficientnet", "pretrained": "none"})).backbones["all"]
    # a mask key given with such heads means something that cannot act: refused, naming it
    with pytest.raises(ConfigError, match="mask_view='reframe' needs a mask backbone of its own"):
        load_config(None, ["heads=multi", "mask_view=reframe"])
    # one given for a model that has the backbone keeps its value; a later override of another key changes nothing
    cfg = load_config(None, ["heads=separate", "mask_size=96"])
    assert cfg.mask_size == 96 and cfg.mask_view == "reframe" and cfg.updated({"epochs": 2}).mask_size == 96
    # heads of the same kind again leave the mask keys alone; the other kind and back gives the defaults back
    assert cfg.updated({"heads": "mask_apart"}).mask_size == 96
    from mcls.config import Config

    back = Config().updated({"heads": "multi"}).updated({"heads": "mask_apart"})
    assert {k: getattr(back, k) for k in ONE_BACKBONE} == {k: getattr(Config(), k) for k in ONE_BACKBONE}


def test_every_kind_is_one_table_over_one_module_dict_and_old_one_backbone_checkpoints_load():
    from mcls.model.classifier import create_model

    for heads in ("multi", "single", "mask_apart", "separate"):
        model = create_model("test_efficientnet", heads=heads, pretrained="none")
        assert set(model.groups.values()) == set(model.backbones) and not hasattr(model, "backbone")
    model = create_model("test_efficientnet", heads="multi", pretrained="none")
    assert model.groups == {"mask": "all", "gender": "all", "age": "all"}
    # a checkpoint written before the one table named the network `backbone.`
    old = {k.replace("backbones.all.", "backbone."): v for k, v in model.state_dict().items()}
    assert any(k.startswith("backbone.") for k in old)
    again = create_model("test_efficientnet", heads="multi", pretrained="none")
    again.load_state_dict(old)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
