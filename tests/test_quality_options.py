"""The quality options each do what they say: exact-age head, mixing, balanced order, EMA, person grouping,
robustness shifts, and every augmentation step really changes an image (albumentations 2.x ignores old names)."""
import albumentations as A
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SAMPLE, TINY
from sklearn.metrics import adjusted_rand_score

from mcls.analysis.robustness import SHIFTS, shifted
from mcls.config import Config, ConfigError
from mcls.infer.persons import face_embeddings, group_images, share_within_groups
from mcls.model.checkpoint import load_checkpoint
from mcls.model.classifier import AGE_BINS, class_log_probs, create_model
from mcls.runtime import distributed
from mcls.train.augment import AUGMENTATIONS
from mcls.train.losses import AgeDistributionLoss, known_rows
from mcls.train.mixing import MIXES, BatchMixer
from mcls.train.run import load_training_data, train
from mcls.train.sampling import epoch_order


@pytest.fixture(scope="module")
def sample_data():
    return load_training_data(Config(data_dir=str(SAMPLE), img_size=64, n_folds=4))


@pytest.mark.parametrize("age_head", ["dist", "both"])
def test_exact_age_heads_band_their_distribution(age_head):
    model = create_model("test_efficientnet", "multi", pretrained="none", age_head=age_head).eval()
    out = model(torch.randint(0, 255, (3, 3, 48, 48), dtype=torch.uint8))
    assert out["age_dist"].shape == (3, AGE_BINS) and ("age_band" in out) == (age_head == "both")
    assert torch.allclose(out["age"].exp().sum(1), torch.ones(3), atol=1e-5)
    if age_head == "dist":  # band probabilities are sums of the yearly bins on each side of 30 and 60
        p = out["age_dist"].softmax(-1)
        expected = torch.stack([p[:, :30].sum(1), p[:, 30:60].sum(1), p[:, 60:].sum(1)], 1)
        assert torch.allclose(out["age"].exp(), expected, atol=1e-5)
    assert torch.allclose(class_log_probs(out).exp().sum(1), torch.ones(3), atol=1e-5)


def test_age_distribution_loss_peaks_at_the_true_age():
    logits = torch.zeros(2, AGE_BINS, requires_grad=True)
    ages = torch.tensor([25, 63])
    fn, opt = AgeDistributionLoss(AGE_BINS, sigma=3.0), torch.optim.Adam([logits], lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        fn(logits, ages).backward()
        opt.step()
    p = logits.softmax(-1)
    assert torch.allclose((p * torch.arange(AGE_BINS)).sum(1), ages.float(), atol=0.5)
    assert (abs(logits.argmax(1) - ages) <= 1).all()


def test_vertical_cutmix_joins_left_and_right_parts():
    x = torch.stack([torch.full((3, 8, 8), v, dtype=torch.uint8) for v in (10, 20, 30, 40)])
    mixer = BatchMixer("vcutmix", prob=1.0, seed=3)
    mixed, perm, lam = mixer(x)
    cut = round(lam * 8)
    assert torch.equal(mixed[..., :cut], x[..., :cut]) and torch.equal(mixed[..., cut:], x[perm][..., cut:])
    assert torch.equal(x[:, 0, 0, 0], torch.tensor([10, 20, 30, 40], dtype=torch.uint8))  # input untouched


@pytest.mark.parametrize("kind", MIXES)
def test_mixing_repeats_with_its_seed(kind):
    x = torch.randint(0, 255, (6, 3, 16, 16), dtype=torch.uint8)
    a, b = BatchMixer(kind, prob=1.0, seed=7)(x), BatchMixer(kind, prob=1.0, seed=7)(x)
    assert torch.equal(a[0], b[0]) and a[2] == b[2] and 0.0 <= a[2] <= 1.0
    if kind == "none":
        assert a[1] is None and a[0] is x
    if kind == "mixup":  # floats in [0, 1], the model's other input convention
        assert a[0].dtype == torch.float32 and a[0].max() <= 1.0


def test_balanced_order_draws_the_old_cells_as_often_as_the_others():
    counts = [300, 250, 30, 350, 370, 40]  # persons x 7 per gender x age-band cell, utkmask-like
    cell = np.repeat(np.arange(6), counts)
    targets = np.zeros((len(cell), 5), dtype=np.int64)
    targets[:, 1], targets[:, 2] = cell // 3, cell % 3
    drawn = np.bincount(cell[epoch_order(targets, seed=1, sampler="balanced")], minlength=6) / len(cell)
    assert np.allclose(drawn, 1 / 6, atol=0.03)
    uniform = epoch_order(targets, seed=1)
    assert sorted(uniform) == list(range(len(targets))) and np.array_equal(uniform, epoch_order(targets, seed=1))


def test_global_batches_split_between_ranks_without_loss_or_overlap(monkeypatch):
    order = np.random.default_rng(0).permutation(37)

    def rows(world, rank):
        monkeypatch.setattr(distributed, "world", lambda: world)
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        sampler = distributed.GlobalBatchSampler(8)
        sampler.set_epoch(order, seed=5)
        items = list(sampler)
        assert {seed for _, seed in items} == {5}  # the epoch's augmentation seed rides with every row
        return [row for row, _ in items]

    assert rows(1, 0) == order.tolist()
    parts = [rows(2, 0), rows(2, 1)]
    assert len(parts[0]) == len(parts[1])  # every rank steps the same number of times
    for b in range(5):  # each global batch of 8 is rank 0's 4 then rank 1's 4
        joined = parts[0][4 * b:4 * b + 4] + parts[1][4 * b:4 * b + 4]
        assert joined[:len(order[8 * b:8 * b + 8])] == order[8 * b:8 * b + 8].tolist()


def test_images_group_into_persons_without_ids(sample_data):
    table, images = sample_data
    val = (table["fold"] == 0).to_numpy()
    groups = group_images(face_embeddings(images[val]), Config().group_threshold)
    assert adjusted_rand_score(table.loc[val, "person"], groups) > 0.8


def test_sharing_keeps_mask_per_image_and_person_answers_per_group():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(18), size=6)
    groups = np.array([0, 0, 0, 1, 1, 2])
    shared = share_within_groups(probs, groups)
    assert np.allclose(shared.sum(1), 1)
    p, s = probs.reshape(6, 3, 2, 3), shared.reshape(6, 3, 2, 3)
    assert np.allclose(p.sum((2, 3)), s.sum((2, 3)))  # mask marginal untouched
    gender = s.sum((1, 3))
    assert np.allclose(gender[0], gender[1]) and np.allclose(gender[3], gender[4])
    assert np.allclose(gender[0], p.sum((1, 3))[:3].mean(0))


@pytest.mark.parametrize("name", [n for n in SHIFTS if n != "none"])
def test_every_robustness_shift_changes_images_the_same_way_twice(name, sample_data):
    _, images = sample_data
    a, b = shifted(images[:4], name), shifted(images[:4], name)
    assert a.shape == images[:4].shape and a.dtype == np.uint8 and np.array_equal(a, b)
    assert np.abs(a.astype(int) - images[:4]).mean() > 2


@pytest.mark.parametrize("step", AUGMENTATIONS["robust"](), ids=lambda t: type(t).__name__)
def test_every_augmentation_step_acts(step, sample_data):
    _, images = sample_data
    step.p = 1.0
    compose = A.Compose([step])
    compose.set_random_seed(0)
    changed = [np.abs(compose(image=img)["image"].astype(int) - img).mean() for img in images[:8]]
    assert max(changed) > 1.0, f"{type(step).__name__} left every image unchanged"


def test_training_with_every_option_on_resumes_and_predicts(tmp_path):
    cfg = Config(data_dir=str(SAMPLE), run_dir=str(tmp_path / "run"), **{**TINY, "epochs": 2, "ema_decay": 0.9,
                 "wear_per_person": 2}, age_head="both", mix="vcutmix", mix_prob=1.0, sampler="balanced", train_old_age=58)
    summary = train(cfg)
    assert {"pc_f1", "group_ari"} <= set(summary)
    last = torch.load(tmp_path / "run" / "fold0" / "last.pt", weights_only=False)
    assert last["ema"] is not None
    model, saved = load_checkpoint(tmp_path / "run" / "fold0" / "best.pt")
    assert saved.age_head == "both" and "age_dist" in model.heads


def test_pseudo_targets_keep_confident_rows_without_an_exact_age():
    from mcls.train.pseudo import pseudo_targets

    probs = np.full((3, 18), 0.01)
    probs[0, 7], probs[1, 7], probs[2, 16] = 0.83, 0.5, 0.95
    keep, targets = pseudo_targets(probs, 0.8)
    assert keep.tolist() == [0, 2]
    assert targets.tolist() == [[1, 0, 1, 7, -1], [2, 1, 1, 16, -1]]  # mask, gender, band, label, age
    loss = AgeDistributionLoss(AGE_BINS)
    assert known_rows(loss, torch.zeros(2, AGE_BINS, requires_grad=True), torch.tensor([-1, -1])).item() == 0.0


@pytest.mark.parametrize("source", ["validation", "eval"])
def test_pseudo_labelled_images_join_training(trained_run, tmp_path, source):
    cfg = Config(data_dir=str(SAMPLE), run_dir=str(tmp_path / "student"), **TINY, age_head="both",
                 pseudo_label=source, pseudo_run=str(trained_run), pseudo_threshold=0.0)
    summary = train(cfg)
    fold = summary["per_fold"]["0"]
    assert fold["n_pseudo"] == (fold["n_val_images"] if source == "validation" else 21)


def test_pseudo_teacher_must_have_the_fold(trained_run, tmp_path):
    cfg = Config(data_dir=str(SAMPLE), run_dir=str(tmp_path / "student"), **{**TINY, "fold": 2},
                 pseudo_label="validation", pseudo_run=str(trained_run))
    with pytest.raises(ConfigError, match=r"pseudo_run=.* has no model for fold\(s\) \[2\]; train those folds"):
        train(cfg)  # refused before the student's run folder is made
    assert not (tmp_path / "student").exists()


def test_an_epoch_keeps_every_person_and_k_of_their_masked_photos():
    from mcls.train.sampling import epoch_rows

    persons = np.repeat(np.arange(10), 7)
    mask = np.tile([0, 0, 0, 0, 0, 1, 2], 10)
    targets = np.zeros((70, 5), dtype=np.int64)
    targets[:, 0] = mask
    persons = np.r_[persons, [-1, -1]]  # two pseudo-labelled wear images, always kept
    targets = np.r_[targets, np.zeros((2, 5), dtype=np.int64)]
    a, b = epoch_rows(targets, persons, 2, seed=1), epoch_rows(targets, persons, 2, seed=2)
    assert len(a) == len(b) == 10 * 4 + 2
    for rows in (a, b):
        kept = pd.DataFrame({"p": persons[rows], "m": targets[rows, 0]})
        assert (kept[kept.p >= 0].groupby("p")["m"].apply(lambda m: sorted(m)) == [[0, 0, 1, 2]] * 10).all()
    assert set(a) != set(b)  # redrawn each epoch
    assert len(epoch_rows(targets, persons, 5, seed=1)) == 72


def test_custom_augmentations_follow_the_compose_seed(sample_data):
    from mcls.train.augment import create_train_transform

    _, images = sample_data
    t = create_train_transform("robust")
    outs = []
    for seed in (3, 3, 4):
        t.set_random_seed(seed)
        outs.append(np.stack([t(image=img)["image"] for img in images[:6]]))
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])


def test_single_head_trains_with_mixing(tmp_path):
    """The 18-way head's loss takes tensors end to end (it once turned targets into numpy and failed)."""
    cfg = Config(data_dir=str(SAMPLE), run_dir=str(tmp_path / "run"), **TINY).updated(
        {"heads": "single", "mix": "cutmix", "mix_prob": 1.0})
    summary = train(cfg)
    assert 0 <= summary["f1"] <= 1
