"""`mcls compare` and the person bootstrap under it, on cases whose answer is known: hand-made run folders whose
saved validation predictions differ on a chosen set of persons."""
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mcls import bootstrap
from mcls.analysis.compare import CompareError, Side, compare, models
from mcls.cli import main
from mcls.config import Config
from mcls.io import write_csv, write_text
from mcls.labels import NUM_CLASSES, PROB_COLUMNS
from mcls.metrics import score
from mcls.runs.layout import FLIP_COLUMNS

PERSONS = 60  # per fold
PHOTOS = 7


def fold_rows(k: int, persons: int = PERSONS, seed: int = 0) -> pd.DataFrame:
    """A fold's validation rows: `persons` persons of 7 photos, each person one gender/age cell, mask per photo."""
    rng = np.random.default_rng(seed + k)
    cell = rng.integers(0, 6, persons)  # 3 * gender + band
    rows = []
    for p in range(persons):
        for photo in range(PHOTOS):
            mask = 0 if photo < 5 else photo - 4
            rows.append({"person": f"f{k}p{p:03d}", "path": f"/img/f{k}p{p:03d}/{photo}.jpg",
                         "label": 6 * mask + cell[p], "group": p})
    return pd.DataFrame(rows)


def make_run(path, folds: dict[int, pd.DataFrame], wrong_persons=(), flip_wrong_persons=None, flip_sure=None,
             sure=0.83, **keys):
    """A run folder as training leaves it, whose model answers every image right except the photos of
    `wrong_persons`, which it calls one class off, giving its answer probability `sure`; its mirror view errs on
    `flip_wrong_persons` (default: the same) and gives its answer probability `flip_sure` (default: `sure`)."""
    cfg = Config(run_dir=str(path), **keys)
    write_text(path / "config.yaml", cfg.to_yaml())
    for k, rows in folds.items():
        def probs(wrong, sure=0.83):
            answer = np.where(rows["person"].isin(wrong), (rows["label"] + 1) % NUM_CLASSES, rows["label"])
            p = np.full((len(rows), NUM_CLASSES), (1 - sure) / (NUM_CLASSES - 1))
            p[np.arange(len(rows)), answer] = sure
            return p
        table = rows.copy()
        table[PROB_COLUMNS] = probs(wrong_persons, sure)
        table[FLIP_COLUMNS] = probs(wrong_persons if flip_wrong_persons is None else flip_wrong_persons,
                                    sure if flip_sure is None else flip_sure)
        (path / f"fold{k}").mkdir(parents=True, exist_ok=True)
        (path / f"fold{k}" / "best.pt").write_bytes(b"")  # the model itself is never loaded: scoring reads the CSV
        write_csv(path / f"fold{k}" / "val_predictions.csv", table)
    return path


@pytest.fixture(scope="module")
def folds():
    return {k: fold_rows(k) for k in range(3)}


def test_bootstrap_scores_match_the_kit_metric_and_a_resample_of_every_person_once_is_the_fold():
    rows = fold_rows(0)
    rng = np.random.default_rng(1)
    pred = np.where(rng.random(len(rows)) < 0.3, rng.integers(0, NUM_CLASSES, len(rows)), rows["label"])
    _, counts = bootstrap.person_confusions(rows["label"], pred, rows["person"])
    got = bootstrap.scores(counts.sum(0))
    want = score(rows["label"].to_numpy(), np.eye(NUM_CLASSES)[pred])
    for m in bootstrap.METRICS:
        assert got[m] == pytest.approx(want[m]), m
    ones = np.ones((1, len(counts)))
    assert bootstrap.scores(ones @ counts)["f1"][0] == pytest.approx(want["f1"])


def test_a_run_against_itself_differs_by_zero_with_an_interval_at_zero(tmp_path, folds):
    run = make_run(tmp_path / "a", folds, wrong_persons={"f0p001", "f1p002"})
    c = compare(Side((run,)), Side((run,)), n_resamples=300)
    assert c.delta["f1"] == 0 and c.interval["f1"] == (0.0, 0.0)
    assert c.verdict().startswith("not told apart") and c.persons_needed() is None
    assert c.n_persons == 3 * PERSONS and c.folds == [0, 1, 2]


def test_a_model_wrong_on_known_persons_loses_exactly_their_photos_and_the_interval_says_so(tmp_path, folds):
    wrong = {f"f{k}p{p:03d}" for k in range(3) for p in range(0, PERSONS, 4)}  # 15 persons a fold
    a = make_run(tmp_path / "a", folds)
    b = make_run(tmp_path / "b", folds, wrong_persons=wrong)
    c = compare(Side((a,)), Side((b,)), n_resamples=1000)
    assert c.scores_a["acc"] == 1.0
    assert c.delta["acc"] == pytest.approx(-0.25)  # a quarter of each fold's persons, all their photos
    for k in range(3):
        assert c.per_fold["acc"][k] == pytest.approx(-0.25)
    lo, hi = c.interval["acc"]
    assert lo < -0.25 < hi < 0  # centred near the known loss, excluding 0
    assert c.verdict() == "A better" and c.p_value["f1"] < 0.01
    assert c.seed_sd["f1"] is None and "not training noise" in c.covers


def test_the_interval_is_over_persons_not_photos(tmp_path, folds):
    """Seven photos of one person move together: a loss on whole persons has a wider interval than the same
    number of photos spread over many persons would give."""
    wrong = {f"f{k}p{p:03d}" for k in range(3) for p in range(0, PERSONS, 6)}
    a, b = make_run(tmp_path / "a", folds), make_run(tmp_path / "b", folds, wrong_persons=wrong)
    c = compare(Side((a,)), Side((b,)), n_resamples=1000)
    width = c.interval["acc"][1] - c.interval["acc"][0]
    # independent photos: binomial sd of a rate of 1/6 over 3 x 420 photos, averaged over 3 folds
    photo_sd = np.sqrt((1 / 6) * (5 / 6) / (PERSONS * PHOTOS)) / np.sqrt(3)
    assert width > 2 * 1.96 * photo_sd * 2  # about sqrt(7) wider


def test_one_run_served_two_ways_is_a_valid_comparison(tmp_path, folds):
    """The image view errs on one person whom the mirror view gets right and surer: flip TTA (the mean of both
    views) wins exactly that person's photos back, on fold 0 only."""
    run = make_run(tmp_path / "a", folds, wrong_persons={"f0p000"}, flip_wrong_persons=(), flip_sure=0.95)
    c = compare(Side((run,), {"tta": False}), Side((run,), {"tta": True}), n_resamples=200)
    assert c.per_fold["acc"] == pytest.approx({0: PHOTOS / (PERSONS * PHOTOS), 1: 0, 2: 0})
    assert c.scores_b["acc"] == 1.0


def test_seeds_widen_the_interval_and_show_their_spread(tmp_path, folds):
    a1 = make_run(tmp_path / "a1", folds)
    a2 = make_run(tmp_path / "a2", folds, wrong_persons={f"f{k}p001" for k in range(3)}, train_seed=7)
    b = make_run(tmp_path / "b", folds, wrong_persons={f"f{k}p002" for k in range(3)})
    alone = compare(Side((a1,)), Side((b,)), n_resamples=500)
    seeds = compare(Side((a1, a2)), Side((b,)), n_resamples=500)
    assert seeds.seed_sd["acc"] == pytest.approx(np.std([1.0, 1 - PHOTOS / (PERSONS * PHOTOS)], ddof=1))
    assert "seed-to-seed spread" in seeds.covers and "[2 seeds]" in seeds.a.label
    person_width = np.diff(seeds.person_interval["acc"])[0]
    assert np.diff(seeds.interval["acc"])[0] > person_width
    assert seeds.scores_a["acc"] == pytest.approx((1 + 1 - PHOTOS / (PERSONS * PHOTOS)) / 2)
    assert alone.scores_a["acc"] == 1.0


def test_no_common_fold_or_other_persons_are_refused_with_one_sentence(tmp_path, folds):
    a = make_run(tmp_path / "a", {0: folds[0]})
    b = make_run(tmp_path / "b", {1: folds[1]})
    with pytest.raises(CompareError, match="share no finished fold"):
        compare(Side((a,)), Side((b,)))
    other = make_run(tmp_path / "c", {0: fold_rows(0, seed=5).assign(person=lambda d: d["person"] + "x",
                                                                        path=lambda d: d["path"] + "x")})
    with pytest.raises(CompareError, match="fold 0 holds other persons"):
        compare(Side((a,)), Side((other,)))


def test_five_folds_of_2000_resamples_take_under_ten_seconds():
    strata = []
    rng = np.random.default_rng(0)
    for k in range(5):
        rows = fold_rows(k, persons=192)
        pred = np.where(rng.random(len(rows)) < 0.3, rng.integers(0, NUM_CLASSES, len(rows)), rows["label"])
        _, ca = bootstrap.person_confusions(rows["label"], rows["label"], rows["person"])
        _, cb = bootstrap.person_confusions(rows["label"], pred, rows["person"])
        strata.append(bootstrap.Stratum((ca, cb)))
    start = time.perf_counter()
    bootstrap.resampled(strata, 2000)
    assert time.perf_counter() - start < 10


def test_the_command_prints_the_verdict_and_writes_json_and_figure(tmp_path, folds, capsys):
    a = make_run(tmp_path / "a", folds)
    b = make_run(tmp_path / "b", folds, wrong_persons={f"f{k}p{p:03d}" for k in range(3) for p in range(0, 60, 3)})
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "b.tta=false", "--resamples", "300", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "verdict (macro F1): A better" in text and "B = " in text and "tta=false" in text
    assert "per fold" in text and "fold" in text
    record = json.loads((out / "compare.json").read_text())
    assert record["verdict"] == "A better" and record["b"]["serving"] == {"tta": False}
    assert record["metrics"]["acc"]["delta"] == pytest.approx(-1 / 3)
    assert (out / "compare.png").stat().st_size > 10_000


def test_the_command_refuses_keys_that_are_not_serving_keys(tmp_path, folds, capsys):
    a = make_run(tmp_path / "a", folds)
    assert main(["compare", str(a), str(a), "c.tta=false"]) == 2
    assert main(["compare", str(a), str(a), "epochs=3"]) == 2
    err = capsys.readouterr().err
    assert "not a serving key of `mcls compare`" in err and "person_consistent" in err


def test_a_smaller_leaderboard_is_noisier_and_a_run_against_itself_reads_no_difference(tmp_path, folds):
    from mcls.analysis.compare import board_noise

    run = make_run(tmp_path / "a", folds, wrong_persons={f"f{k}p{p:03d}" for k in range(3) for p in range(0, 60, 4)})
    small, large = board_noise(Side((run,)), 30), board_noise(Side((run,)), 900)
    for noise in (small, large):
        assert noise.interval[0] < noise.cv < noise.interval[1]
    assert np.diff(small.interval)[0] > 3 * np.diff(large.interval)[0]  # ~ sqrt(30): the board's persons
    same = board_noise(Side((run,)), 120, against=Side((run,)))
    assert same.delta == 0 and same.delta_interval == (0.0, 0.0)


def test_lb_prints_the_boards_noise_beside_the_recorded_score(tmp_path, folds, capsys):
    a = make_run(tmp_path / "a", folds)
    b = make_run(tmp_path / "b", folds, wrong_persons={f"f{k}p{p:03d}" for k in range(3) for p in range(0, 60, 3)})
    assert main(["lb", str(b), "0.71", "--persons", "120", "--against", str(a)]) == 0
    text = capsys.readouterr().out
    assert "a leaderboard of 120 persons reads a model of out-of-fold macro F1" in text
    assert f"against {a}: out-of-fold difference -0." in text and "the board" in text
    assert json.loads((b / "leaderboard.json").read_text())["scores"][0]["public"] == 0.71
    assert main(["lb", str(b), "0.71", "--persons", "0"]) == 2


def test_runs_joined_by_plus_are_averaged_into_one_model(tmp_path, folds):
    """Seed 1 errs on persons 1 and 3, seed 7 (surer) on person 2: their average follows the surer model where they
    disagree, so it errs on person 2 alone, one person fewer than seed 1 on fold 0."""
    a1 = make_run(tmp_path / "a1", folds, wrong_persons={"f0p001", "f0p003"})
    a2 = make_run(tmp_path / "a2", folds, wrong_persons={"f0p002"}, sure=0.95, train_seed=7)
    average = compare(Side((a1,)), Side((Path(f"{a1}+{a2}"),)), n_resamples=100)
    assert average.per_fold["acc"] == pytest.approx({0: PHOTOS / (PERSONS * PHOTOS), 1: 0, 2: 0})
    assert average.b.runs == (Path(f"{a1}+{a2}"),) and "+" in average.b.label
    named = make_run(tmp_path / "default+external-1a2b", folds)  # a folder whose own name holds "+"
    assert compare(Side((a1,)), Side((named,)), n_resamples=100).per_fold["acc"][0] == pytest.approx(
        2 * PHOTOS / (PERSONS * PHOTOS))
    both = compare(Side((a1,)), Side((Path(f"{a1}+{named}"),)), n_resamples=100)  # averaged with a "+" folder
    assert [p.name for p in models(both.b.runs[0])] == ["a1", "default+external-1a2b"]
    with pytest.raises(FileNotFoundError, match="missing\+one"):
        compare(Side((a1,)), Side((Path(f"{a1}+{tmp_path}/missing+one"),)))
