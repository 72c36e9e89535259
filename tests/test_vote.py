"""Team ensembles from files: votes of submissions and probability files, and their disagreements."""
import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE

from mcls.cli import main
from mcls.data.table import load_eval_table
from mcls.infer.submission import probs_file
from mcls.infer.vote import VoteError, disagreements, vote
from mcls.labels import PROB_COLUMNS

INFO = load_eval_table(SAMPLE)


def submission(path, answers):
    pd.DataFrame({"ImageID": INFO["ImageID"], "ans": answers}).to_csv(path, index=False)
    return path


def probabilities(path, probs):
    pd.concat([INFO[["ImageID"]], pd.DataFrame(probs, columns=PROB_COLUMNS)], axis=1).to_csv(path, index=False)
    return path


def test_a_vote_of_identical_files_is_the_file(tmp_path):
    answers = np.arange(len(INFO)) % 18
    a = submission(tmp_path / "a.csv", answers)
    out = tmp_path / "v.csv"
    assert main(["vote", str(a), str(a), str(a), "--out", str(out), f"data_dir={SAMPLE}"]) == 0
    assert out.read_text() == a.read_text()


def test_a_hard_vote_gives_the_majority_and_a_tie_the_earliest_file(tmp_path):
    n = len(INFO)
    a = submission(tmp_path / "a.csv", np.full(n, 1))
    b = submission(tmp_path / "b.csv", np.full(n, 2))
    c = submission(tmp_path / "c.csv", np.full(n, 2))
    sub, probs, how = vote([a, b, c], INFO)
    assert (sub["ans"] == 2).all() and probs is None and "hard vote" in how
    assert (vote([a, b], INFO)[0]["ans"] == 1).all()  # 1 against 1: the earliest listed file's answer
    assert (vote([a, b, c], INFO, weights=[3, 1, 1])[0]["ans"] == 1).all()  # weights count


def test_a_soft_vote_averages_probabilities(tmp_path):
    p = np.full((len(INFO), 18), 0.01)
    p[:, 0] = 1 - 0.17
    q = np.full((len(INFO), 18), 0.01)
    q[:, 5] = 0.5
    q[:, 0] = 1 - 0.16 - 0.5
    sub, probs, how = vote([probabilities(tmp_path / "p.csv", p), probabilities(tmp_path / "q.csv", q)], INFO)
    assert (sub["ans"] == 0).all() and np.allclose(probs, (p + q) / 2) and "soft vote" in how
    with pytest.raises(VoteError, match="needs probabilities from every file"):
        vote([tmp_path / "p.csv", submission(tmp_path / "s.csv", np.zeros(len(INFO), int))], INFO, soft=True)


def test_a_shuffled_short_or_broken_input_is_refused_by_name(tmp_path):
    good = submission(tmp_path / "good.csv", np.zeros(len(INFO), int))
    shuffled = tmp_path / "shuffled.csv"
    pd.read_csv(good).iloc[::-1].to_csv(shuffled, index=False)
    short = tmp_path / "short.csv"
    pd.read_csv(good).iloc[:-1].to_csv(short, index=False)
    out_of_range = submission(tmp_path / "range.csv", np.full(len(INFO), 18))
    dupes = tmp_path / "dupes.csv"
    pd.read_csv(good).assign(ImageID=lambda d: d["ImageID"].iloc[0]).to_csv(dupes, index=False)
    for bad, says in ((shuffled, "not in info.csv's order"), (short, "20 rows, info.csv has 21"),
                      (out_of_range, "outside the classes 0..17"), (dupes, "listed twice")):
        with pytest.raises(VoteError, match=f"{bad.name}: .*{says}"):
            vote([good, bad], INFO)


def test_diff_of_a_file_with_itself_is_empty_and_counts_per_head(tmp_path, capsys):
    a = submission(tmp_path / "a.csv", np.zeros(len(INFO), int))
    assert disagreements(a, a, INFO)["n"] == 0
    other = np.zeros(len(INFO), int)
    other[:3] = 3  # wear/female/<30: gender differs on three rows
    b = submission(tmp_path / "b.csv", other)
    d = disagreements(a, b, INFO)
    assert d["n"] == 3 and d["gender"].loc["male", "female"] == 3 and d["mask"].empty and d["age"].empty
    assert main(["diff", str(a), str(b), f"data_dir={SAMPLE}", "--out", str(tmp_path / "d.csv")]) == 0
    assert "3 of 21 images answered differently" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "d.csv")) == 3


def test_every_submission_has_its_probabilities_beside_it(trained_run, tmp_path):
    from mcls.infer.submission import write_submission

    out = write_submission(SAMPLE, trained_run, out=tmp_path / "sub.csv", device="cpu")
    probs = pd.read_csv(probs_file(out))
    assert list(probs["ImageID"]) == list(INFO["ImageID"])
    assert (probs[PROB_COLUMNS].to_numpy().argmax(1) == pd.read_csv(out)["ans"].to_numpy()).mean() > 0.95
