"""The run folder's layout: `Run` and `Fold` name every file a run keeps, and read them back; nothing else builds
these paths.

    <run>/config.yaml  run_info.json  summary.json  calibration.json  submission.csv
    <run>/fold<k>/best.pt  last.pt  metrics.csv  val_predictions.csv  summary.json  *.png
    <run>/members/<name>/  a run of its own per ensemble member
    <run>/external/external.json  leak_pairs.csv  leak_pairs.png  nearest_distance.png  external_kept.csv
                   pretrained_face.pt  (external_data: the leak guard's findings, and the backbone pretrained)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from mcls.config import Config, read_yaml_keys
from mcls.errors import UserError
from mcls.labels import NUM_CLASSES, PROB_COLUMNS

CONFIG = "config.yaml"
RUN_INFO = "run_info.json"
SUMMARY = "summary.json"
CALIBRATION = "calibration.json"
SUBMISSION = "submission.csv"
LEADERBOARD = "leaderboard.json"  # the scores the competition gave this run's submissions, oldest first
MEMBERS_DIR = "members"
EXTERNAL_DIR = "external"
# val_predictions.csv keeps the model's probabilities for each validation image (p*) and for its mirror image (f*):
# flip TTA is their mean, so every way of serving a run can be scored from the file without predicting again.
FLIP_COLUMNS = [f"f{k}" for k in range(NUM_CLASSES)]


@dataclass(frozen=True)
class Fold:
    """One fold of a run: its checkpoints, per-epoch metrics and out-of-fold predictions."""

    run: "Run"
    k: int
    EXPERT = "face_expert.npz"

    @property
    def dir(self) -> Path:
        return self.run.path / f"fold{self.k}"

    @property
    def best(self) -> Path:
        """The best epoch's weights with the config inside (rebuilds its model alone)."""
        return self.dir / "best.pt"

    @property
    def last(self) -> Path:
        """Everything needed to resume: model, optimizer, scheduler, scaler, EMA, history."""
        return self.dir / "last.pt"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.csv"

    @property
    def predictions(self) -> Path:
        return self.dir / "val_predictions.csv"

    @property
    def summary(self) -> Path:
        return self.dir / SUMMARY

    @property
    def face_expert(self) -> Path:
        """The fold's face-prior expert (mcls.infer.face_expert), fitted on the fold's training persons."""
        return self.dir / self.EXPERT

    def figure(self, name: str) -> Path:
        return self.dir / f"{name}.png"

    def oof(self, tta: bool) -> tuple[pd.DataFrame, np.ndarray]:
        """(the validation rows: person, path, label, group, ...; their (N, 18) probabilities with or without flip
        TTA): the one reader of a fold's out-of-fold predictions."""
        table = _read_predictions(self.predictions)
        if FLIP_COLUMNS[0] in table:
            plain = table[PROB_COLUMNS].to_numpy(np.float32)
            probs = (plain + table[FLIP_COLUMNS].to_numpy(np.float32)) / 2 if tta else plain
        else:  # written before both views were kept: p* hold the run's own serving only
            trained = self.run.config.tta
            if tta != trained:
                raise UserError(f"{self.predictions}: holds predictions {'with' if trained else 'without'} flip TTA "
                                f"only (written before both were kept); serve it with tta={str(trained).lower()} "
                                "or train the fold again")
            probs = table[PROB_COLUMNS].to_numpy(np.float32)
        return table, probs


def read_json(path: Path, fix: str) -> dict:
    """A run record ({} when absent), or one sentence naming the damaged file and `fix`."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path}: not valid JSON (truncated or edited by hand); {fix}") from None


@lru_cache(maxsize=64)
def _cached_csv(path: str, mtime: float) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"person": str})


def _read_predictions(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no out-of-fold predictions (the fold has not finished training)")
    return _cached_csv(str(path), path.stat().st_mtime).copy()


class Run:
    """A run folder. `Run.open(path)` for one that exists; `Run(path)` names the files of one being made."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Run) and self.path.resolve() == other.path.resolve()

    def __hash__(self) -> int:
        return hash(self.path.resolve())

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        run = cls(path)
        if not run.config_file.is_file():
            raise FileNotFoundError(f"{run.path}: not a run folder (no {CONFIG}); give a folder made by `mcls train`")
        return run

    @classmethod
    def of_checkpoint(cls, path: str | Path) -> "Run":
        """The run a fold checkpoint (<run>/fold<k>/best.pt) belongs to."""
        path = Path(path)
        return cls(path.parent.parent if path.parent.name.startswith("fold") else path.parent)

    # ------------------------------------------------------------------ files
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def info_file(self) -> Path:
        return self.path / RUN_INFO

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY

    @property
    def calibration_file(self) -> Path:
        return self.path / CALIBRATION

    @property
    def submission_file(self) -> Path:
        return self.path / SUBMISSION

    @property
    def leaderboard_file(self) -> Path:
        return self.path / LEADERBOARD

    @property
    def external_dir(self) -> Path:
        """The leak guard's report on the run's external data (mcls.analysis.leak_report.save_report) and the backbone
        pretrained on the faces it kept."""
        return self.path / EXTERNAL_DIR

    @property
    def pretrained_face(self) -> Path:
        return self.external_dir / "pretrained_face.pt"

    @property
    def external_record(self) -> Path:
        """What the run did with its external data: the guard's line and counts, the pretraining's or the joint
        training's figures (mcls.train.pretrain.external_lines reads it)."""
        return self.external_dir / "external.json"

    def notebook_dir(self, notebook: str) -> Path:
        return self.path / notebook

    # ------------------------------------------------------------------ contents
    @cached_property
    def config(self) -> Config:
        return Config.from_yaml(self.config_file)

    def fold(self, k: int) -> Fold:
        return Fold(self, int(k))

    @property
    def folds(self) -> list[Fold]:
        """The folds with a best checkpoint, in fold order."""
        found = [Fold(self, int(d.name.removeprefix("fold"))) for d in self.path.glob("fold*")
                 if d.name.removeprefix("fold").isdigit()]
        return sorted((f for f in found if f.best.is_file()), key=lambda f: f.k)

    @property
    def scored_folds(self) -> list[Fold]:
        """The folds that finished: out-of-fold predictions written."""
        return [f for f in self.folds if f.predictions.is_file()]

    def checkpoints(self) -> list[Path]:
        """Every fold's best.pt: the run's fold ensemble."""
        found = [f.best for f in self.folds]
        if not found:
            raise FileNotFoundError(f"{self.path}: no fold*/best.pt checkpoints (is it a run folder from `mcls train`?)")
        return found

    @property
    def member_names(self) -> list[str]:
        return [read_yaml_keys(m)[0].stem for m in self.config.members] if self.config_file.is_file() else []

    def member(self, name: str) -> "Run":
        return Run(self.path / MEMBERS_DIR / name)

    @property
    def members(self) -> list["Run"]:
        """The ensemble members' runs, in config order; an untrained one is an error that says how to finish it."""
        members = [self.member(n) for n in self.member_names]
        missing = [m.path.name for m in members if not m.config_file.is_file()]
        if missing:
            raise FileNotFoundError(f"{self.path}: member run(s) {missing} not trained yet (train the run again with "
                                    "--resume)")
        return members

    @property
    def with_members(self) -> list["Run"]:
        return [self, *self.members]

    @property
    def summary(self) -> dict:
        return read_json(self.summary_file, "run `mcls train --resume` with this run_dir to write it again")

    @property
    def leaderboard(self) -> list[dict]:
        """Every leaderboard score recorded for the run (`mcls lb`), oldest first."""
        return read_json(self.leaderboard_file, "fix the JSON or delete the file and record the scores again"
                         ).get("scores", [])

    @property
    def calibration(self) -> dict | None:
        if not self.calibration_file.is_file():
            return None
        try:
            return json.loads(self.calibration_file.read_text())
        except ValueError as err:
            raise UserError(f"{self.calibration_file}: not a calibration record ({err})") from None
