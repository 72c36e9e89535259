"""Does the validation track the leaderboard? Cross-validated F1 against the recorded leaderboard scores of every
run, with their correlation, so a team sees whether its CV can be trusted to choose between models."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def cv_lb_agreement(runs: pd.DataFrame, board: str = "lb_public") -> dict:
    """{n, pearson, spearman, mean_gap} over the runs that have both a CV score and a `board` score (a table from
    mcls.runs.records.list_runs); correlations are None with fewer than 3 such runs."""
    both = runs.dropna(subset=["cv", board]) if len(runs) and board in runs else pd.DataFrame(columns=["cv", board])
    out = {"n": int(len(both)), "board": board, "pearson": None, "spearman": None, "mean_gap": None}
    if len(both):
        out["mean_gap"] = float((both["cv"] - both[board]).mean())  # > 0: the CV is optimistic
    if len(both) >= 3 and both["cv"].nunique() > 1 and both[board].nunique() > 1:
        out["pearson"] = float(stats.pearsonr(both["cv"], both[board])[0])
        out["spearman"] = float(stats.spearmanr(both["cv"], both[board])[0])
    return out


def describe_agreement(a: dict) -> str:
    if a["n"] == 0:
        return f"no run has both a CV score and a {a['board']} score yet (record one with `mcls lb RUN SCORE`)"
    text = f"CV vs {a['board']} over {a['n']} run(s): mean CV - leaderboard {a['mean_gap']:+.3f} (> 0: CV optimistic)"
    if a["pearson"] is None:
        return text + "; correlations need 3 or more runs with different scores"
    return text + f"; Pearson {a['pearson']:.2f}, Spearman {a['spearman']:.2f}"


def cv_lb_figure(runs: pd.DataFrame, board: str = "lb_public"):
    """Each run as a point (CV, leaderboard), named, with the diagonal where the two agree."""
    from mcls.analysis.plots import plt

    both = runs.dropna(subset=["cv", board])
    a = cv_lb_agreement(runs, board)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(both["cv"], both[board])
    for r in both.itertuples():
        ax.annotate(r.run, (r.cv, getattr(r, board)), fontsize=7, xytext=(3, 3), textcoords="offset points")
    lo = float(np.nanmin([both["cv"].min(), both[board].min()])) - 0.02 if len(both) else 0
    hi = float(np.nanmax([both["cv"].max(), both[board].max()])) + 0.02 if len(both) else 1
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="CV = leaderboard")
    ax.set_xlabel("cross-validated macro F1 (as served)")
    ax.set_ylabel(f"leaderboard macro F1 ({board.removeprefix('lb_')})")
    ax.set_title(describe_agreement(a).replace(": ", ":\n", 1) if a["n"] else "no leaderboard scores yet",
                 fontsize=8)
    ax.legend(fontsize=7)
    return fig
