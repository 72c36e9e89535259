"""The suspect finder on a sample copy with planted errors, and decisions that round-trip through the relabel file."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE

from mcls.analysis.relabel import PROB_COLUMNS, find_suspects, load_oof, person_strip, run_finder
from mcls.analysis.relabel_decisions import apply_decisions, decide, record_decision
from mcls.config import Config
from mcls.data.table import DataError, load_train_table
from mcls.labels import encode


def plant_errors(data: Path, seed: int = 0) -> tuple[set, set]:
    """Flips the gender of three persons in train.csv and swaps normal / incorrect_mask files of three others."""
    csv = data / "train" / "train.csv"
    persons = pd.read_csv(csv, dtype=str, keep_default_na=False)
    pick = np.random.default_rng(seed).choice(len(persons), 6, replace=False)
    flip, swap = pick[:3], pick[3:]
    persons.loc[flip, "gender"] = persons.loc[flip, "gender"].map({"male": "female", "female": "male"})
    persons.to_csv(csv, index=False)
    for i in swap:
        folder = data / "train" / "images" / persons.loc[i, "path"]
        normal, incorrect = next(folder.glob("normal.*")), next(folder.glob("incorrect_mask.*"))
        normal.rename(folder / "tmp")
        incorrect.rename(folder / f"normal{incorrect.suffix}")
        (folder / "tmp").rename(folder / f"incorrect_mask{normal.suffix}")
    return set(persons.loc[flip, "id"]), set(persons.loc[swap, "id"])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    import shutil

    data = tmp_path_factory.mktemp("planted") / "data"
    shutil.copytree(SAMPLE, data)
    flipped, swapped = plant_errors(data)
    out = data.parent / "finder"
    cfg = Config(data_dir=str(data), n_folds=4, device="cpu")
    queue, table, probs = run_finder(cfg, out_dir=out)
    return queue, table, probs, flipped, swapped, out


def test_planted_errors_rank_near_the_top(planted):
    queue, table, probs, flipped, swapped, out = planted
    assert list(queue.columns) == ["person", "field", "given", "suggested", "score", "reason", "check"]
    assert (out / "queue.csv").is_file() and len(pd.read_csv(out / "oof.csv")) == len(table) == 336
    persons = list(dict.fromkeys(queue["person"]))  # in queue order
    top10 = set(persons[:10])
    # swapped files are unmistakable for a mask-state model: they lead the queue, suggesting the swap
    swaps = queue[queue["check"] == "swap"]
    assert set(persons[:5]) >= swapped and set(swaps.head(3)["person"]) == swapped
    assert (swaps.head(3)["suggested"] == "true").all()
    # gender from frozen ImageNet features and 36 training persons is weak: ask that the planted flips outrank the
    # typical person and that the ten persons to review first hold most of the planted errors (chance: 1.25 of 6)
    per = table.groupby("person", sort=False)["gender"].first()
    p = probs.reshape(-1, 3, 2, 3).sum((1, 3))[:, 1]
    p_female = pd.Series(p).groupby(table["person"].to_numpy(), sort=False).mean()
    p_other = np.where(per == 1, 1 - p_female[per.index], p_female[per.index])
    rank = pd.Series(p_other, index=per.index).rank(ascending=False)
    assert rank[list(flipped)].mean() < len(per) / 2
    assert len(top10 & (flipped | swapped)) >= 4
    edges = queue[queue["check"] == "edge"]
    assert len(edges) and (queue.index[queue["check"] == "edge"].min() > queue.index[queue["check"] != "edge"]).all()
    ages = edges["given"].astype(int)
    assert ages.isin([28, 29, 30, 31, 58, 59, 60, 61]).all()


def test_person_strip_shows_given_and_predicted(planted):
    queue, table, probs, flipped, swapped, _ = planted
    person = sorted(swapped)[0]
    strip = person_strip(table, person, probs)
    assert list(strip["stem"]) == ["mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"]
    assert strip["path"].map(lambda p: Path(p).is_file()).all()
    assert strip.loc[5, "given_mask"] == "incorrect" and strip.loc[5, "pred_mask"] == "not wear"  # files swapped
    assert {"pred_gender", "pred_age", "p_pred"} <= set(strip.columns)


def test_finder_logic_on_known_probabilities():
    """Hand-made probabilities: one swap, one confident gender error, one far age error, one edge age."""
    table = load_train_table(SAMPLE)
    probs = np.zeros((len(table), 18))
    probs[np.arange(len(table)), table["label"]] = 0.9
    probs[np.arange(len(table)), (table["label"] + 1) % 18] = 0.1
    persons = table["person"].unique()
    young = table[(table["age"] < 25)]["person"].iloc[0]
    edge = table[table["age"].isin([29, 30])]["person"].iloc[0]
    a, b = [p for p in persons if p not in (young, edge)][:2]
    rows = table["person"] == a  # files look swapped
    mask = table.loc[rows, "mask"].replace({1: 2, 2: 1})
    probs[rows.to_numpy()] = 0
    probs[rows.to_numpy(), encode(mask, table.loc[rows, "gender"], table.loc[rows, "age_band"])] = 1
    rows = table["person"] == b  # looks the other gender
    probs[rows.to_numpy()] = 0
    t = table[rows]
    probs[rows.to_numpy(), encode(t["mask"], 1 - t["gender"], t["age_band"])] = 1
    rows = table["person"] == young  # looks old
    probs[rows.to_numpy()] = 0
    probs[rows.to_numpy(), encode(table.loc[rows, "mask"], table.loc[rows, "gender"], 2)] = 1
    rows = table["person"] == edge
    probs[rows.to_numpy()] = np.nan  # unscored: still listed as an edge age, with no score
    q = find_suspects(table, probs)
    head = q.head(3).set_index("person")
    assert head.loc[a, "field"] == "swap_normal_incorrect" and head.loc[a, "suggested"] == "true"
    assert head.loc[b, "field"] == "gender" and head.loc[b, "suggested"] != head.loc[b, "given"]
    assert head.loc[young, "field"] == "age" and head.loc[young, "suggested"] == "60"  # nearest age in the band
    assert len(q[q["check"] != "edge"]) == 3
    assert q.loc[q["person"] == edge, "check"].tolist() == ["edge"] and q.loc[q["person"] == edge, "score"].isna().all()


def test_decisions_round_trip_and_change_nothing_else(sample_copy, tmp_path):
    base = load_train_table(sample_copy)
    log = tmp_path / "relabel.csv"
    pid, other, third = base["person"].unique()[:3]
    given = ("male", "female")[base.loc[base["person"] == pid, "gender"].iloc[0]]
    other_gender = ("male", "female")[1 - ("male", "female").index(given)]
    row = {"person": pid, "field": "gender", "given": given, "suggested": other_gender, "reason": "looks other"}
    decide(log, row, "keep")
    first = log.read_bytes()
    decide(log, row, "accept")  # a later decision on the same label wins ...
    assert log.read_bytes().startswith(first)  # ... and the earlier one stays in the log
    record_decision(log, other, "swap_normal_incorrect", "false", "true", "files swapped")
    decisions = pd.DataFrame([
        {"person": third, "field": "age", "given": "25", "suggested": "30", "reason": "edge", "decision": "set",
         "value": "41"},
        {"person": pid, "field": "age", "given": "x", "suggested": "x", "reason": "", "decision": ""},  # unreviewed
    ])
    decisions.to_csv(tmp_path / "decisions.csv", index=False)
    written = apply_decisions(tmp_path / "decisions.csv", log)
    assert len(written) == 1 and list(written.columns) == ["id", "field", "old", "new", "reason", "time"]
    log_df = pd.read_csv(log, dtype=str)
    assert list(log_df.columns) == ["id", "field", "old", "new", "reason", "time"] and len(log_df) == 4
    after = load_train_table(sample_copy, relabel_file=log)
    assert (after.loc[after["person"] == pid, "gender"] == ("male", "female").index(other_gender)).all()
    o = after["person"] == other
    assert (after.loc[o & (after["stem"] == "normal"), "mask"] == 1).all()
    assert (after.loc[after["person"] == third, "age"] == 41).all()
    untouched = ~after["person"].isin([pid, other, third])
    assert after.loc[untouched, base.columns].equals(base[untouched])  # given_* columns keep the data's labels
    changed_cols = [c for c in base.columns if not after[c].equals(base[c])]
    assert set(changed_cols) <= {"gender", "age", "mask", "label", "age_band", "age_band_train"}


def test_bad_decisions_never_reach_the_log(tmp_path):
    log = tmp_path / "relabel.csv"
    record_decision(log, "000045", "gender", "male", "female", "ok")
    before = log.read_bytes()
    for field, value in (("gender", "robot"), ("age", "old"), ("age", 200), ("swap_normal_incorrect", "maybe"),
                         ("race", "x")):
        with pytest.raises(ValueError):
            record_decision(log, "000045", field, "", value)
    bad = pd.DataFrame([{"person": "000045", "field": "gender", "given": "male", "decision": "set", "value": ""}])
    with pytest.raises(DataError, match="row 2"):
        apply_decisions(bad, log)
    assert log.read_bytes() == before


def test_relabel_command_queue_and_apply(planted, tmp_path, mcls_cli):
    _, table, _, _, _, out = planted
    data = Path(table["path"][0]).parents[3]

    def mcls(*args):
        return mcls_cli("relabel", *args)

    r = mcls(f"data_dir={data}", "--run", str(out / "oof.csv"), "--out", str(tmp_path / "q"))
    assert r.returncode == 0, r.stderr
    queue = pd.read_csv(tmp_path / "q" / "queue.csv", dtype=str, keep_default_na=False)
    assert "suspect label(s)" in r.stdout and len(queue)
    oof = pd.read_csv(tmp_path / "q" / "oof.csv")
    np.testing.assert_allclose(oof[PROB_COLUMNS].to_numpy(), load_oof(out / "oof.csv", table), atol=1e-6)
    queue["decision"] = ["accept"] + [""] * (len(queue) - 1)
    queue.to_csv(tmp_path / "reviewed.csv", index=False)
    r = mcls(f"data_dir={data}", "--apply", str(tmp_path / "reviewed.csv"), "--relabel-file", str(tmp_path / "r.csv"))
    assert r.returncode == 0, r.stderr
    assert "appended 1 decision(s)" in r.stdout and len(pd.read_csv(tmp_path / "r.csv")) == 1
    r = mcls(f"data_dir={data}", f"relabel_file={tmp_path / 'r.csv'}", "--run", str(out / "oof.csv"),
             "--out", str(tmp_path / "q2"))
    assert r.returncode == 0, r.stderr
    again = pd.read_csv(tmp_path / "q2" / "queue.csv", dtype=str, keep_default_na=False)
    decided = (again["person"] == queue["person"][0]) & (again["field"] == queue["field"][0])
    assert not decided.any() and len(again) < len(queue)  # a decided label is not asked about again
