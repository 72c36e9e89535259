"""Training levers of the documented winner and an honest CV figure: near-edge ages, fixed-cut CutMix, and the
score of an epoch not chosen on the persons it is scored on."""
import numpy as np
import pandas as pd
import pytest
import torch

from mcls.config import Config, ConfigError
from mcls.labels import near_edge
from mcls.metrics import epoch_choice_scores
from mcls.train.mixing import FIXED_CUT, BatchMixer


def test_near_edge_ages_are_those_just_below_each_edge():
    ages = np.array([26, 27, 29, 30, 31, 56, 57, 59, 60, 61])
    assert list(ages[near_edge(ages, (30, 60), 3)]) == [27, 29, 57, 59]
    assert not near_edge(ages, (30, 60), 0).any()
    with pytest.raises(ConfigError, match="near_edge_drop=25"):
        Config().updated({"near_edge_drop": 25})


def test_near_edge_drop_leaves_training_only(tiny_cfg):
    from mcls.train.run import train

    plain = train(tiny_cfg)
    dropped = train(tiny_cfg.updated({"run_dir": tiny_cfg.run_dir + "-drop", "near_edge_drop": 3}))
    assert dropped["per_fold"]["0"]["n_val_images"] == plain["per_fold"]["0"]["n_val_images"]  # validation keeps all


def test_fixed_cut_vcutmix_cuts_between_46_and_54_percent():
    mixer = BatchMixer("vcutmix_fixed", prob=1.0, seed=0)
    x = torch.arange(8).view(8, 1, 1, 1).expand(8, 3, 10, 100).clone()
    for _ in range(20):
        mixed, perm, lam = mixer(x)
        assert FIXED_CUT[0] <= lam <= FIXED_CUT[1]
        cut = int(round(lam * 100))
        assert torch.equal(mixed[..., :cut], x[..., :cut]) and torch.equal(mixed[..., cut:], x[perm][..., cut:])


def test_mask_only_mixing_feeds_the_mixed_batch_to_the_mask_backbone_alone():
    from mcls.model.classifier import create_model
    from mcls.train.losses import TaskLoss

    x = torch.randint(0, 255, (6, 3, 48, 48), dtype=torch.uint8)
    y = torch.tensor([[i % 3, i % 2, i % 3, 0, 20 + i] for i in range(6)])
    torch.manual_seed(0)
    mixed_all = BatchMixer("vcutmix_fixed", prob=1.0, seed=1).batch(x, y)
    x_in, task_inputs, y_other, lam = BatchMixer("vcutmix_fixed", prob=1.0, seed=1, tasks="mask").batch(x, y)
    # the clean batch goes in; the mask task gets the very batch a shared model would see
    assert torch.equal(x_in, x) and torch.equal(task_inputs["mask"], mixed_all[0]) and lam == mixed_all[3]
    # the partner differs in the mask column only, so gender's and age's two loss terms add up to the plain loss
    assert torch.equal(y_other[:, 1:], y[:, 1:]) and torch.equal(y_other[:, 0], mixed_all[2][:, 0])

    model = create_model("test_efficientnet", heads="separate", pretrained="none").eval()
    seen = {}
    for task, net in model.backbones.items():
        net.register_forward_hook(lambda m, i, o, task=task: seen.update({task: i[0]}))
    out = model(x_in, task_inputs)
    assert torch.equal(seen["mask"], model.normalise(task_inputs["mask"], "mask"))
    assert torch.equal(seen["age"], model.normalise(x, "age")) and torch.equal(seen["gender"], seen["age"])
    loss_fn = TaskLoss(Config().updated({"heads": "separate"}), y.numpy())
    mixed_loss = lam * loss_fn(out, y) + (1 - lam) * loss_fn(out, y_other)
    ce = torch.nn.functional.cross_entropy
    expected = (lam * ce(out["mask"], y[:, 0]) + (1 - lam) * ce(out["mask"], y_other[:, 0])
                + ce(out["gender"], y[:, 1]) + ce(out["age"], y[:, 2]))
    assert mixed_loss.item() == pytest.approx(expected.item(), rel=1e-5)

    with pytest.raises(ValueError, match="need a mask backbone of its own"):
        create_model("test_efficientnet", pretrained="none")(x, task_inputs)
    with pytest.raises(ConfigError, match="mix_tasks='mask' needs a mask backbone of its own"):
        Config().updated({"heads": "multi", "mix_tasks": "mask", "mix": "vcutmix_fixed"})
    with pytest.raises(ConfigError, match="mix_tasks"):
        Config().updated({"heads": "separate", "mix": "vcutmix", "mix_tasks": "gender"})


def test_reframing_shrinks_each_face_inside_its_frame_and_repeats_per_seed():
    from mcls.train.mask_view import REFRAME_SCALE, MaskView

    x = torch.zeros((16, 3, 64, 64), dtype=torch.uint8)
    x[..., 32:] = 255  # left half dark, right half bright: the fill is their mean, 0.5
    out = MaskView("reframe", seed=3)(x)
    assert out.shape == x.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, MaskView("reframe", seed=3)(x)) and not torch.equal(out, MaskView("reframe", seed=4)(x))
    fill = (out[:, 0] == 0.5).float().mean(dim=(1, 2))
    # the new border is at most what the smallest face leaves free (edge pixels blend, hence the slack)
    assert (fill <= 1 - REFRAME_SCALE[0] ** 2 + 0.05).all() and fill.mean() > 0.05
    # the face keeps its orientation: its left stays dark, its right bright
    rows = out[:, 0, 32]
    assert (rows[:, :16] <= 0.5).all() and (rows[:, -16:] >= 0.5).all()
    assert MaskView("none")(x) is x


def test_lowres_blurs_about_half_the_reframed_faces_and_keeps_the_reframing():
    from mcls.train.mask_view import LOWRES_P, MaskView

    x = torch.zeros((64, 3, 64, 64), dtype=torch.uint8)
    x[..., ::2] = 255  # one-pixel stripes: any shrinking smears them to grey
    framed, low = MaskView("reframe", seed=3)(x), MaskView("reframe_lowres", seed=3)(x)
    assert low.shape == x.shape and 0 <= low.min() and low.max() <= 1
    changed = (low - framed).abs().amax(dim=(1, 2, 3)) > 0.05
    assert abs(changed.float().mean().item() - LOWRES_P) < 0.2
    # the reframing draws come first and are the same; an untouched face is exactly the reframed one
    assert torch.equal(low[~changed], framed[~changed])
    def contrast(t):  # stripes left in the middle of the face
        return (t[:, 0, 24:40, 24:40] - 0.5).abs().mean(dim=(1, 2))

    assert (contrast(low[changed]) < contrast(framed[changed])).all()
    assert torch.equal(low, MaskView("reframe_lowres", seed=3)(x))


def test_a_reframed_batch_reaches_the_mask_backbone_alone():
    from mcls.model.classifier import create_model
    from mcls.runtime.device import Runtime
    from mcls.train.steps import train_one_epoch
    from mcls.train.losses import TaskLoss
    from mcls.train.mask_view import MaskView

    cfg = Config().updated({"heads": "separate", "mask_view": "reframe", "device": "cpu"})
    x = torch.randint(0, 255, (6, 3, 48, 48), dtype=torch.uint8)
    y = torch.tensor([[i % 3, i % 2, i % 3, 0, 20 + i] for i in range(6)])
    model = create_model("test_efficientnet", heads="separate", pretrained="none")
    seen = {}
    for task, net in model.backbones.items():
        net.register_forward_hook(lambda m, i, o, task=task: seen.update({task: i[0].detach()}))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    rt = Runtime.from_config(cfg)
    train_one_epoch(model, [(x, y, None)], TaskLoss(cfg, y.numpy()), optimizer, scheduler, rt,
                    mask_view=MaskView("reframe", seed=5))
    # the reference view is cut from the batch as the runtime hands it over (channels_last resizes round differently)
    assert torch.allclose(seen["mask"], model.normalise(MaskView("reframe", seed=5)(rt.to_input(x)), "mask"))
    assert torch.equal(seen["age"], model.normalise(x, "age")) and torch.equal(seen["gender"], seen["age"])
    with pytest.raises(ConfigError, match="mask_view='reframe' needs a mask backbone of its own"):
        Config().updated({"heads": "multi", "mask_view": "reframe"})


def test_an_epoch_chosen_on_the_other_folds_is_scored_honestly():
    # fold 0 peaks at epoch 2 by luck; the other folds agree that epoch 3 is best
    histories = {0: pd.DataFrame({"epoch": [1, 2, 3], "f1": [0.5, 0.9, 0.7]}),
                 1: pd.DataFrame({"epoch": [1, 2, 3], "f1": [0.5, 0.55, 0.9]}),
                 2: pd.DataFrame({"epoch": [1, 2, 3], "f1": [0.4, 0.5, 0.8]})}
    s = epoch_choice_scores(histories)
    assert s["sel_own_f1"] == pytest.approx((0.9 + 0.9 + 0.8) / 3)
    assert s["sel_last_f1"] == pytest.approx((0.7 + 0.9 + 0.8) / 3)
    assert s["sel_other_epochs"] == {"0": 3, "1": 3, "2": 3}
    assert s["sel_other_f1"] == pytest.approx((0.7 + 0.9 + 0.8) / 3) and s["sel_other_f1"] < s["sel_own_f1"]
    assert "sel_other_f1" not in epoch_choice_scores({0: histories[0]})  # one fold has no others to ask


def test_real_mask_scores_of_a_checkpoint(trained_run, tmp_path):
    import shutil

    from conftest import SAMPLE

    from mcls.analysis.robustness import real_mask_scores
    from mcls.data.table import load_train_table

    table = load_train_table(SAMPLE).groupby("mask").head(4)
    rows = []
    for k, r in enumerate(table.itertuples()):
        shutil.copy(r.path, tmp_path / f"{k}.jpg")
        rows.append({"path": f"{k}.jpg", "mask": r.mask, "source": "a" if k % 2 else "b"})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    s = real_mask_scores(trained_run / "fold0" / "best.pt", tmp_path / "labels.csv")
    assert {"real_mask_f1", "real_f1_wear", "real_f1_incorrect", "real_f1_not_wear", "real_mask_f1_a",
            "real_mask_f1_b"} <= set(s) and all(0 <= v <= 1 for v in s.values())


def test_competition_preset_mirrors_the_winner_and_trains_at_tiny_size(tiny_cfg):
    from conftest import TINY

    from mcls.config import read_yaml_keys
    from mcls.runs.layout import Run
    from mcls.train.run import train

    _, keys = read_yaml_keys("competition")
    assert keys["backbone"] == "tf_efficientnet_b4" and keys["img_size"] == 380 and keys["loss"] == "f1"
    assert keys["heads"] == "separate" and keys["train_old_age"] == 59 and keys["near_edge_drop"] == 3 and keys["mix"] == "vcutmix_fixed"
    # the same recipe smoke-tested on CPU: the tiny backbone and size, everything else as the preset says
    cfg = Config().updated({**keys, **TINY, "data_dir": tiny_cfg.data_dir, "run_dir": tiny_cfg.run_dir, "epochs": 1})
    assert cfg.loss == "f1" and cfg.mix == "vcutmix_fixed" and cfg.members == ["member-seed7"]
    summary = train(cfg)
    assert 0 <= summary["ens_f1"] <= 1 and len(summary["ens_members"]) == 2
    assert Run(cfg.run_dir).member("member-seed7").fold(0).best.is_file()


def test_separate_heads_give_each_task_its_own_backbone_and_mask_size():
    from mcls.model.classifier import create_model

    model = create_model("test_efficientnet", heads="separate", pretrained="none", mask_backbone="test_resnet",
                         mask_size=32)
    assert set(model.backbones) == {"mask", "gender", "age"} and not hasattr(model, "backbone")
    assert type(model.backbone_for("mask")).__name__ == "ResNet" and model.backbone_for("age_dist") is model.backbones["age"]
    # each backbone gets the normalisation its own weights were trained with
    assert model.mask_mean.flatten().tolist() != model.mean.flatten().tolist()
    seen = {}
    model.backbones["mask"].register_forward_hook(lambda m, i, o: seen.update(hw=i[0].shape[-2:]))
    out = model.eval()(torch.randint(0, 255, (2, 3, 48, 48), dtype=torch.uint8))
    assert seen["hw"] == (32, 32) and {k: tuple(v.shape) for k, v in out.items()} == {
        "mask": (2, 3), "gender": (2, 2), "age": (2, 3)}
    # the gender head's gradient reaches only the gender backbone: the tasks share nothing
    out = model.train()(torch.rand(2, 3, 48, 48))
    out["gender"].sum().backward()
    grads = {t: any(p.grad is not None and p.grad.abs().sum() > 0 for p in b.parameters())
             for t, b in model.backbones.items()}
    assert grads == {"mask": False, "gender": True, "age": False}
    with pytest.raises(ValueError, match="has one for each of the tasks"):
        model.backbone_for("class")


def test_mask_backbone_and_size_are_refused_without_separate_heads():
    with pytest.raises(ConfigError, match="mask_size=96 act only with a mask backbone of its own"):
        Config().updated({"heads": "multi", "mask_size": 96})
    assert Config().updated({"heads": "separate", "mask_size": 96, "mask_backbone": "test_resnet"}).mask_size == 96


def test_a_per_task_run_trains_saves_and_serves_as_one_run(tiny_cfg):
    from mcls.infer.predictor import predict_paths
    from mcls.infer.serving import Serving
    from mcls.model.checkpoint import load_checkpoint
    from mcls.train.run import train

    cfg = tiny_cfg.updated({"heads": "separate", "mask_size": 32, "age_head": "both", "mix": "vcutmix_fixed",
                            "mix_prob": 1.0, "mix_tasks": "mask", "mask_view": "reframe"})
    summary = train(cfg)
    assert 0 <= summary["per_fold"]["0"]["f1"] <= 1
    model, saved = load_checkpoint(f"{cfg.run_dir}/fold0/best.pt")
    assert saved.heads == "separate" and saved.mask_size == 32 and "age_dist" in model.heads
    assert saved.mix_tasks == "mask" and saved.mask_view == "reframe"
    from conftest import SAMPLE

    from mcls.data.table import load_eval_table
    paths = list(load_eval_table(SAMPLE)["path"][:4])
    probs = predict_paths(paths, Serving.resolve(cfg.run_dir))[0]
    assert probs.shape == (4, 18) and np.allclose(probs.sum(1), 1, atol=1e-4)


def test_the_mask_screen_trains_each_candidate_and_keeps_earlier_rows(tmp_path, sample_dir, monkeypatch):
    import sys

    import pandas as pd
    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "bench"))
    import mask_screen

    for overrides in mask_screen.CANDIDATES.values():  # each candidate is a valid per-task config
        Config().updated({**mask_screen.PER_TASK, **overrides})
    # stand-in "real photos": sample images with their mask state, two sources
    table = pd.read_csv(sample_dir / "train" / "train.csv").head(4)
    rows = [(str(next((sample_dir / "train" / "images" / p).glob(f"{stem}.*"))), m, src)
            for p, src in zip(table["path"], "abab") for stem, m in (("mask1", 0), ("incorrect_mask", 1), ("normal", 2))]
    real = tmp_path / "real.csv"
    pd.DataFrame(rows, columns=["path", "mask", "source"]).to_csv(real, index=False)
    tiny = ["backbone=test_efficientnet", "pretrained=none", "img_size=48", "mask_size=32", "epochs=2",
            "batch_size=16", "n_folds=4", "image_cache="]
    out = tmp_path / "screen"
    args = ["--data", str(sample_dir), "--real", str(real), "--folds", "0", "--out", str(out),
            "--probs", str(tmp_path / "probs"), "--set", *tiny]
    trained = []
    screen_fold = mask_screen.screen_fold
    monkeypatch.setattr(mask_screen, "screen_fold", lambda cfg, *a: trained.append(cfg) or screen_fold(cfg, *a))
    mask_screen.main(["--candidates", "reframe,lowres", *args])
    mask_screen.main(["--candidates", "nomix", *args])  # a later command adds its candidates to the table
    # --set beats the candidates' own mask size (96 px); their other keys still act
    assert [(c.mask_size, c.mask_view) for c in trained] == [(32, "reframe"), (32, "reframe_lowres"), (32, "reframe")]
    # a vote of two candidates' saved probabilities, twice: the second replaces the first's row
    for _ in range(2):
        mask_screen.main(["--candidates", "", "--vote", "reframe+nomix", *args])
    epochs = pd.read_csv(tmp_path / "screen_epochs.csv")
    assert sorted(epochs.groupby(["candidate", "fold"]).size().items()) == [
        (("lowres", 0), 2), (("nomix", 0), 2), (("reframe", 0), 2), (("reframe+nomix", 0), 1)]
    last = epochs[epochs["epoch"] == 2].set_index("candidate")
    assert last.loc["reframe+nomix", "train_s"] == pytest.approx(last.loc[["reframe", "nomix"], "train_s"].sum())
    summary = pd.read_csv(out.with_suffix(".csv"))
    assert list(summary["candidate"]) == ["reframe", "lowres", "nomix", "reframe+nomix"]
    scores = summary[["val_acc_mask", "real_mask_f1", "real_mask_f1_a", "real_mask_f1_b"]]
    assert scores.apply(lambda c: c.between(0, 1)).all().all()
    assert "| reframe+nomix" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit, match="unknown candidate"):  # a vote of an unknown candidate fails before work
        mask_screen.main(["--candidates", "", "--vote", "reframe+big", *args])
