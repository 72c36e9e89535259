"""What the face prior buys on a run's own persons: its out-of-fold scores served at each face weight."""
from __future__ import annotations

import numpy as np
import pandas as pd

from mcls.infer.face_expert import WEIGHTS
from mcls.infer.serving import Serving
from mcls.metrics import score


def weight_scores(run_dir, weights=WEIGHTS, overrides: dict | None = None) -> pd.DataFrame:
    """Out-of-fold scores of a run served with each face weight (its other serving keys as configured, without the
    age bias, which was fitted without the expert): what the prior buys on this run's persons."""
    rows = []
    for w in weights:
        folds = Serving.resolve(run_dir, {**(overrides or {}), "face_weight": w, "calibrate_age": False}).oof()
        per_fold = [score(f.labels, f.probs) for f in folds.values()]
        rows.append({"face_weight": w, "folds": len(per_fold),
                     **{k: float(np.mean([s[k] for s in per_fold]))
                        for k in ("f1", "f1_gender", "acc_gender", "f1_age", "acc_age", "f1_old")}})
    return pd.DataFrame(rows)
