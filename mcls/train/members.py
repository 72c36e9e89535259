"""Ensembles of diverse models in one run: the config's `members` name override files (presets or YAML), each
trained as its own run inside <run>/members/<name>/ on the same folds, and averaged at prediction.

Members may change how a model trains (size, backbone, heads, mixing, seed of training) but never which persons
land in which fold, or their out-of-fold predictions could not be averaged and scored honestly.
"""
from __future__ import annotations

import pandas as pd

from mcls.config import Config, ConfigError, read_yaml_keys
from mcls.metrics import score
from mcls.runs.layout import Run

# Keys that decide the folds, the labels or the run layout: a member inherits them from the run.
FIXED = ("data_dir", "relabel_file", "age_bounds", "n_folds", "fold", "seed", "on_bad_image", "run_dir", "members")



def member_configs(cfg: Config) -> list[tuple[str, Config]]:
    """(name, config) per member: the run's config with the member file's keys applied, in <run>/members/<name>."""
    out, names = [], set()
    for entry in cfg.members:
        path, values = read_yaml_keys(entry)
        name = path.stem
        if name in names:
            raise ConfigError(f"members: {name!r} is named twice; each member needs its own file name")
        names.add(name)
        fixed = sorted(set(values) & set(FIXED))
        if fixed:
            raise ConfigError(f"{path}: a member cannot set {', '.join(fixed)}: members train on the run's data and "
                              "folds, so their validation predictions can be averaged")
        run_dir = str(Run(cfg.run_dir).member(name).path) if cfg.run_dir else ""
        out.append((name, cfg.updated({**values, "members": [], "run_dir": run_dir}, source=str(path))))
    return out



def ensemble_scores(serving) -> dict:
    """Out-of-fold scores (prefixed ens_) of the averaged validation probabilities of the runs `serving` averages
    (a run and its members), served as it says."""
    folds = serving.oof()
    if not folds:
        return {}
    df = pd.DataFrame([score(f.labels, f.probs) for f in folds.values()])
    out = {f"ens_{c}": float(df[c].mean()) for c in df.columns}
    out["ens_f1_std"] = float(df["f1"].std(ddof=0))
    out["ens_folds"] = list(folds)
    out["ens_members"] = [str(r.path) for r in serving.runs]
    return out
