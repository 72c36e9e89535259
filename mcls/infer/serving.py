"""How a run is served: one frozen policy (flip TTA, person sharing and its threshold, the models averaged, the
age-band bias), resolved once from the run's own config plus the overrides a user gave, and used by everything
that predicts or scores a run: `mcls predict`, notebook 05, out-of-fold scoring, calibration, pseudo-labels and
the quality bench.

An override given beats the run's config; one not given never does (None means "not given").
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mcls.config import Config, ConfigError, serving_keys
from mcls.errors import UserError
from mcls.infer.calibration import apply_age_bias
from mcls.infer.face_expert import blend, descriptor_settings, mean_expert_probs
from mcls.infer.persons import face_embeddings, group_images, share_within_groups
from mcls.runs.layout import Fold, Run

# Config keys that change how a trained run predicts; any other key means nothing to prediction.
SERVING_KEYS = serving_keys()


@dataclass(frozen=True)
class OutOfFold:
    """One fold's validation rows and their probabilities as served."""

    table: pd.DataFrame  # person, path, label, group, ...
    probs: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return self.table["label"].to_numpy()


@dataclass(frozen=True)
class Serving:
    runs: tuple[Run, ...]  # every run averaged with equal weight: a run and its members, or several runs
    tta: bool
    person_consistent: bool
    group_threshold: float
    age_bias: tuple[float, ...] | None = None  # log-prior offsets per age band, applied last
    checkpoint: Path | None = None  # serve this one checkpoint instead of the runs' fold ensembles
    several_runs: bool = False  # runs named together (not one run and its members): no run folder owns the output
    face_weight: float = 0.0  # the first run's face experts' share of the gender and age heads
    face_settings: object = None  # where the face boxes for the expert's descriptors come from (CropSettings)

    @classmethod
    def resolve(cls, run, overrides: dict | None = None, members: bool = True) -> "Serving":
        """The policy for one run (a folder, or a single fold checkpoint) or several runs averaged, from the first
        run's config.yaml with `overrides` (serving keys; None values are not given) applied. members=False serves
        the named runs' own models without their ensemble members (to explain or probe one model)."""
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        unknown = sorted(set(given) - set(SERVING_KEYS))
        if unknown:
            raise ConfigError(f"{', '.join(unknown)}: not a serving key; prediction takes {', '.join(SERVING_KEYS)}")
        named = [run] if isinstance(run, (str, Path, Run)) else list(run)
        paths = [r.path if isinstance(r, Run) else Path(r) for r in named]
        if not paths:
            raise UserError("no run given")
        checkpoint = paths[0] if paths[0].is_file() else None
        if checkpoint is not None and len(paths) > 1:
            raise UserError(f"{checkpoint}: a single checkpoint is served alone, not with other runs")
        runs = [Run.of_checkpoint(checkpoint)] if checkpoint else [Run(p) for p in paths]
        # a folder of fold checkpoints without config.yaml (copied models) is served by its first model's config
        cfg = runs[0].config if runs[0].config_file.is_file() else \
            _checkpoint_config(checkpoint or runs[0].checkpoints()[0])
        cfg = cfg.updated(given, source="serving overrides")
        bias = None
        if len(runs) > 1:
            if given.get("calibrate_age"):
                raise UserError("calibration.json is fitted for one run's predictions; predict an ensemble of runs "
                                "with calibration off")
        elif cfg.calibrate_age:
            bias = age_bias_of(runs[0], cfg.person_consistent)
        averaged = runs if checkpoint or not members else list(dict.fromkeys(r for run in runs
                                                                              for r in run.with_members))
        serving = cls(tuple(averaged), cfg.tta, cfg.person_consistent, cfg.group_threshold,
                      None if bias is None else tuple(float(b) for b in bias), checkpoint, len(runs) > 1,
                      cfg.face_weight, descriptor_settings(cfg))
        if serving.face_weight and not serving.expert_files():
            raise ConfigError(f"face_weight={cfg.face_weight}: {runs[0].path} has no fold*/face_expert.npz; train with "
                              f"face_weight set, or fit them for this run: mcls face-prior --run {runs[0].path}")
        return serving

    @classmethod
    def of_config(cls, cfg: Config, runs=()) -> "Serving":
        """The policy a config describes, without a fitted age bias: how a fold is scored while it trains."""
        return cls(tuple(runs), cfg.tta, cfg.person_consistent, cfg.group_threshold, face_weight=cfg.face_weight,
                   face_settings=descriptor_settings(cfg))

    def expert_files(self, folds=None) -> list[Path]:
        """The first run's face experts: of the given folds, or every fold's (served as their average). A single
        checkpoint is served with its own fold's expert."""
        if self.checkpoint is not None:
            files = [self.checkpoint.parent / Fold.EXPERT]
        elif folds is not None:
            files = [self.runs[0].fold(k).face_expert for k in folds]
        else:
            files = [f.face_expert for f in self.runs[0].folds]
        return [f for f in files if f.is_file()]

    def with_face(self, probs: np.ndarray, paths, folds=None) -> np.ndarray:
        """Probabilities with the face experts blended into gender and age (unchanged when face_weight is 0)."""
        if not self.face_weight:
            return probs
        from mcls.data.embeddings import face_descriptors

        files = self.expert_files(folds)
        if not files:
            raise FileNotFoundError(f"{self.runs[0].path}: no face expert for fold(s) {folds} (mcls face-prior --run "
                                    f"{self.runs[0].path} fits them)")
        descriptors = face_descriptors(list(paths), self.face_settings)
        return blend(probs, mean_expert_probs(files, descriptors), self.face_weight).astype(probs.dtype)

    def record(self) -> dict:
        """The policy as plain values, for metrics.json and logs."""
        checkpoints = [self.checkpoint] if self.checkpoint else [c for r in self.runs for c in r.checkpoints()]
        return {"runs": [str(r.path.resolve()) for r in self.runs], "checkpoints": [str(c) for c in checkpoints],
                "tta": self.tta,
                "person_consistent": self.person_consistent, "group_threshold": self.group_threshold,
                "face_weight": self.face_weight, "age_log_bias": list(self.age_bias) if self.age_bias is not None else None}

    def describe(self) -> str:
        """What a person reads before predictions are made: which models, and how they are served."""
        models = f"checkpoint {self.checkpoint}" if self.checkpoint else \
            f"{len(self.runs)} run(s) averaged: " + ", ".join(str(r.path) for r in self.runs)
        persons = f"on (group_threshold {self.group_threshold})" if self.person_consistent else "off"
        bias = "none" if self.age_bias is None else ", ".join(f"{b:+.1f}" for b in self.age_bias)
        face = f", face expert weight {self.face_weight}" if self.face_weight else ""
        return (f"{models}\nflip TTA {'on' if self.tta else 'off'}, person sharing {persons}{face}, age-band log bias "
                f"{bias}")

    # ------------------------------------------------------------------ the steps after the models
    def groups(self, images: np.ndarray) -> np.ndarray | None:
        """Blind person groups of the images (None when the policy does not share)."""
        return group_images(face_embeddings(images), self.group_threshold) if self.person_consistent else None

    def finish(self, probs: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
        """Models' averaged probabilities -> served: shared within person groups, then the age bias."""
        if self.person_consistent:
            if groups is None:
                raise ValueError("person-consistent serving needs the images' person groups")
            probs = share_within_groups(probs, groups)
        return probs if self.age_bias is None else apply_age_bias(probs, self.age_bias)

    # ------------------------------------------------------------------ scoring from saved predictions
    def oof_table(self) -> tuple[pd.DataFrame, np.ndarray]:
        """Every served fold's validation rows (with a `fold` column) and probabilities, stacked."""
        folds = self.oof()
        if not folds:
            raise FileNotFoundError(f"{self.runs[0].path}: no fold*/val_predictions.csv beside a best.pt (train the "
                                    "run first)")
        table = pd.concat([f.table.assign(fold=k) for k, f in folds.items()], ignore_index=True)
        return table, np.concatenate([f.probs for f in folds.values()])

    def oof(self) -> dict[int, OutOfFold]:
        """{fold: validation rows and probabilities as this policy serves them}, from each fold's saved
        predictions, over the folds every averaged run finished; shared within the first run's blind groups."""
        common = sorted(set.intersection(*({f.k for f in r.scored_folds} for r in self.runs)))
        out = {}
        for k in common:
            table, probs = self.runs[0].fold(k).oof(self.tta)
            probs = [probs]
            for run in self.runs[1:]:
                other, p = run.fold(k).oof(self.tta)
                order = pd.Series(np.arange(len(other)), index=other["path"]).reindex(table["path"])
                if order.isna().any():
                    raise UserError(f"{run.fold(k).predictions}: validation images differ from "
                                    f"{self.runs[0].fold(k).predictions}; members must share data and folds")
                probs.append(p[order.to_numpy(int)])
            mean = self.with_face(np.mean(probs, axis=0), table["path"], [k])
            if self.person_consistent and "group" not in table:
                raise UserError(f"{self.runs[0].fold(k).predictions}: no 'group' column (written before person "
                                "groups were saved); re-run the fold, or serve with person_consistent=false")
            out[k] = OutOfFold(table, self.finish(mean, table["group"].to_numpy() if self.person_consistent else None))
        return out


def _checkpoint_config(path: Path) -> Config:
    import torch

    return Config.from_dict(torch.load(path, map_location="cpu", weights_only=False)["config"], source=str(path))


def age_bias_of(run: Run, persons: bool | None = None) -> np.ndarray | None:
    """The bias fitted for a run; None if never fitted. `persons`: whether the predictions it is applied to are
    shared within person groups; a bias fitted the other way is still returned, with a warning."""
    record = run.calibration
    if record is None:
        return None
    try:
        bias = np.asarray(record["age_log_bias"], dtype=np.float64)
    except (KeyError, TypeError) as err:
        raise UserError(f"{run.calibration_file}: not a calibration record ({err})") from None
    fitted = record.get("person_consistent")
    if persons is not None and fitted is not None and fitted != persons:
        warnings.warn(f"{run.calibration_file}: the age bias was fitted with person_consistent={fitted} and is "
                      f"applied with {persons}: an approximation there (refit with `mcls calibrate --run {run.path} "
                      f"person_consistent={str(persons).lower()}`)", stacklevel=2)
    return bias
