"""Joint training with external faces (mcls.train.joint): they join the batches with gender and age and no mask
state, the mask loss ignores them, and each epoch draws a set share of them."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SAMPLE, TINY

from mcls.config import Config, ConfigError
from mcls.runs.layout import Run
from mcls.train.losses import TaskLoss
from mcls.train.sampling import epoch_order, epoch_rows
from test_pretrain import EXTERNAL, needs_dlib

#                mask gender band label age
COMPETITION = [[0, 1, 2, 14, 65], [1, 0, 0, 6, 20], [2, 1, 1, 16, 40], [0, 0, 1, 1, 33]]
EXTERNAL_ROWS = [[-1, 1, 2, -1, 71], [-1, 0, 0, -1, 24]]


def _outputs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {h: torch.randn(n, k, generator=g, requires_grad=True) for h, k in (("mask", 3), ("gender", 2),
                                                                              ("age", 3))}


@pytest.mark.parametrize("loss", ["ce", "weighted_ce", "focal", "label_smoothing", "f1"])
def test_a_batch_of_only_competition_images_gives_the_same_loss_as_before(loss):
    cfg = Config(loss=loss, loss_weights=[1.0, 0.7, 1.3])
    targets = torch.tensor(COMPETITION)
    task_loss = TaskLoss(cfg, np.array(COMPETITION))
    out = _outputs(len(targets))
    expected = sum(w * f(out[h], targets[:, i]) for w, f, h, i in zip(cfg.loss_weights, task_loss.losses,
                                                                      ("mask", "gender", "age"), (0, 1, 2)))
    assert torch.equal(task_loss(out, targets), expected)
    if loss in ("weighted_ce", "focal"):  # the mask task's class weights come from the competition rows alone
        joint = TaskLoss(cfg, np.array(COMPETITION + EXTERNAL_ROWS))
        assert torch.allclose(joint.losses[0].weight, task_loss.losses[0].weight)


def test_external_faces_teach_gender_and_age_and_never_the_mask_state():
    cfg = Config(loss_weights=[1.0, 1.0, 1.0])
    targets = torch.tensor(COMPETITION + EXTERNAL_ROWS)
    loss = TaskLoss(cfg, targets.numpy())
    out = _outputs(len(targets), seed=1)
    loss(out, targets).backward()
    assert out["mask"].grad[4:].abs().sum() == 0 and out["mask"].grad[:4].abs().sum() > 0
    assert out["gender"].grad[4:].abs().sum() > 0 and out["age"].grad[4:].abs().sum() > 0
    mask_term = F.cross_entropy(out["mask"][:4], targets[:4, 0])  # the mean over the rows that have a mask state
    rest = F.cross_entropy(out["gender"], targets[:, 1]) + F.cross_entropy(out["age"], targets[:, 2])
    assert torch.allclose(loss(out, targets), mask_term + rest)
    only_external = targets[4:]
    assert torch.isfinite(loss({h: o[4:] for h, o in out.items()}, only_external))


def _rows(n_persons=30, n_external=200):
    rng = np.random.default_rng(0)
    own = [[m, rng.integers(2), rng.integers(3), 0, 40] for _ in range(n_persons) for m in (0, 0, 0, 0, 0, 1, 2)]
    external = [[-1, rng.integers(2), rng.integers(3), -1, 40] for _ in range(n_external)]
    persons = np.r_[np.repeat(np.arange(n_persons), 7), np.full(n_external, -1)]
    return np.array(own + external), persons


def test_each_epoch_draws_its_share_of_external_faces_anew_and_keeps_the_competition_rows_as_before():
    targets, persons = _rows()
    own = epoch_rows(targets[:210], persons[:210], 2, seed=5)
    rows = epoch_rows(targets, persons, 2, seed=5, external_share=0.5)
    external = rows[rows >= 210]
    assert np.array_equal(rows[rows < 210], own)  # the competition rows drawn as without external faces
    assert len(own) == 30 * 4 and len(external) == 60 and len(set(external)) == 60
    again = epoch_rows(targets, persons, 2, seed=6, external_share=0.5)
    assert not np.array_equal(again[again >= 210], external)  # redrawn each epoch
    assert np.array_equal(epoch_rows(targets, persons, 2, seed=5, external_share=0.5), rows)  # from the seed alone
    assert len(epoch_rows(targets, persons, 2, seed=5, external_share=10)) == 120 + 200  # all, when fewer
    order = epoch_order(targets, 5, "uniform", persons, 2, 0.5)
    assert sorted(order) == sorted(rows)


def test_joint_keys_are_refused_where_they_cannot_act():
    with pytest.raises(ConfigError, match=r"external_share=1.0 acts only when external faces join the batches"):
        Config(external_data="x").updated({"external_share": 1.0})
    with pytest.raises(ConfigError, match=r"external_epochs=2 acts only with pretraining"):
        Config(external_data="x").updated({"external_training": "joint", "external_epochs": 2})
    with pytest.raises(ConfigError, match=r"external_training='joint' needs three heads"):
        Config(external_data="x").updated({"external_training": "joint", "heads": "single"})
    with pytest.raises(ConfigError, match=r"external_training='mixed' is not one of \('pretrain', 'joint', 'both'\)"):
        Config(external_data="x").updated({"external_training": "mixed"})
    with pytest.raises(ConfigError, match=r"external_training='joint'.* act only with external_data"):
        Config().updated({"external_training": "joint"})


@needs_dlib
def test_joint_training_runs_end_to_end_with_the_guarded_faces(tmp_path, face_cache):
    # external_training=both (pretraining, then joint) runs in notebook 03's test
    from mcls.train.pretrain import external_lines
    from mcls.train.run import train

    cfg = Config(data_dir=str(SAMPLE), run_dir=str(tmp_path / "run"), **TINY).updated(
        {"external_data": str(EXTERNAL), "external_training": "joint", "external_share": 1.0,
         "crop_cache": face_cache, "image_cache": str(tmp_path / "images")})
    summary = train(cfg)
    run = Run(cfg.run_dir)
    record = json.loads(run.external_record.read_text())
    assert summary["per_fold"]["0"]["n_external"] == record["n_kept"] == 24 - sum(record["left_out"].values())
    assert not run.pretrained_face.exists()
    lines = external_lines(run)
    assert lines[0].startswith("external data") and "under 18" in lines[0] and "faces kept" in lines[1]
    assert "join every fold's batches (1 per competition row an epoch" in lines[1]
    assert "pretrained" not in lines[1]


def test_mixing_never_pairs_an_external_face_with_a_competition_photo():
    import torch

    from mcls.train.mixing import MASK_COLUMN, BatchMixer

    y = torch.tensor([[m, 0, 1, 6 * m + 1, 40] for m in (0, 1, 2, 0, 1)] + [[-1, 1, 1, -1, 40]] * 5)
    x = torch.arange(10).view(10, 1, 1, 1).expand(10, 3, 8, 8).clone()
    mixer = BatchMixer("cutmix", prob=1.0, seed=0)
    external = (y[:, MASK_COLUMN] < 0).numpy()
    for _ in range(50):
        _, _, y_other, _ = mixer.batch(x, y)
        assert ((y_other[:, MASK_COLUMN] < 0).numpy() == external).all()
    # a batch of competition rows alone draws exactly as before joint training existed
    a, b = BatchMixer("cutmix", prob=1.0, seed=3), BatchMixer("cutmix", prob=1.0, seed=3)
    perm = a(x[:5])[1]
    assert torch.equal(b.batch(x[:5], y[:5])[2], y[:5][perm])
