"""`mcls compare A B`: is B better than A on these persons? The paired difference of two runs (or of one run served
two ways) on the folds both have, with 95 % intervals from the person bootstrap (mcls.bootstrap), per-fold
differences, a verdict in words, and the seed-to-seed spread where a side names several seeds.

A side is one or more models trained on the same folds with different `train_seed`s, plus serving keys
(mcls.infer.serving.SERVING_KEYS); its score is the mean of its seeds' scores. A model is a run folder, or several
joined by "+" whose probabilities are averaged (a seed ensemble, served as `mcls predict --run A --run B` serves it:
every person is out of fold for each of them). Out-of-fold predictions come from the runs' saved validation
predictions, served as the side asks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from mcls import bootstrap
from mcls.bootstrap import METRICS, Stratum
from mcls.errors import UserError
from mcls.infer.serving import OutOfFold, Serving
from mcls.io import write_json
from mcls.runs.layout import Run

LEVEL = 0.95
Z = 1.959964  # the normal quantile of LEVEL, for the seed term
NAMES = {"f1": "macro F1 (18 classes)", "acc": "accuracy (18 classes)", "acc_mask": "mask accuracy",
         "acc_gender": "gender accuracy", "acc_age": "age-band accuracy", "f1_old": "F1 of the >=60 band"}


class CompareError(UserError):
    """Two sides that cannot be compared: no common fold, or folds that hold other persons."""


@dataclass(frozen=True)
class Side:
    """What one side of a comparison serves: its seeds' run folders and the serving keys given for it."""

    runs: tuple[Path, ...]  # one per seed; a path "a+b" is the average of run folders a and b
    overrides: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        keys = " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in self.overrides.items())
        runs = ", ".join(str(r) for r in self.runs)
        return f"{runs}{f' ({keys})' if keys else ''}" + (f" [{len(self.runs)} seeds]" if len(self.runs) > 1 else "")

    @cached_property
    def servings(self) -> list[Serving]:
        return [Serving.resolve([Run.open(p) for p in models(r)], self.overrides) for r in self.runs]

    def served(self) -> list[dict[int, OutOfFold]]:
        """Each seed's {fold: out-of-fold rows and probabilities as this side serves them}."""
        return [s.oof() for s in self.servings]

    def how(self) -> str:
        """How the side is served, the run's own config and the keys given together (its first seed's)."""
        return self.servings[0].describe().splitlines()[-1]


def models(spec) -> list[Path]:
    """The run folders one model of a side averages: "a+b" is a and b, where a folder's own name may hold "+" too
    (the longest run of pieces that names a folder is one run); what names none is kept whole, for its error."""
    spec = str(spec)
    if Path(spec).exists() or "+" not in spec:
        return [Path(spec)]
    pieces, out, i = spec.split("+"), [], 0
    while i < len(pieces):
        for j in range(len(pieces), i, -1):
            if Path("+".join(pieces[i:j])).exists():
                out.append(Path("+".join(pieces[i:j])))
                i = j
                break
        else:
            return [*out, Path("+".join(pieces[i:]))]
    return out


def _aligned(a: OutOfFold, b: OutOfFold, k: int, name_a: str, name_b: str) -> np.ndarray:
    """Row order of `b` that matches `a`'s images, or one sentence when fold k holds other images."""
    pos = pd.Series(np.arange(len(b.table)), index=b.table["path"].to_numpy())
    order = pos.reindex(a.table["path"].to_numpy())
    if order.isna().any() or len(a.table) != len(b.table):
        raise CompareError(f"fold {k} holds other persons in {name_a} than in {name_b} (trained with another seed, "
                           "n_folds or data); compare runs whose folds were split the same way")
    return order.to_numpy(int)


def strata(sides: list[Side]) -> tuple[list[int], list[Stratum]]:
    """(common folds, one Stratum per fold holding every seed of every side in that order)."""
    served = [(side, i, oof) for side in sides for i, oof in enumerate(side.served())]
    folds = [set(oof) for _, _, oof in served]
    common = sorted(set.intersection(*folds))
    if not common:
        have = "; ".join(f"{side.runs[i]} has fold(s) {sorted(oof) or 'none'}" for side, i, oof in served)
        raise CompareError(f"the runs share no finished fold ({have}); train them on a common fold first")
    out = []
    for k in common:
        first = served[0][2][k]
        order = None
        systems = []
        for side, i, oof in served:
            fold = oof[k]
            rows = _aligned(first, fold, k, str(served[0][0].runs[0]), str(side.runs[i]))
            labels = fold.labels[rows]
            if not np.array_equal(labels, first.labels):
                raise CompareError(f"fold {k}: {side.runs[i]} has other labels for the same images than "
                                   f"{served[0][0].runs[0]} (relabel_file differs?); compare runs trained on one "
                                   "labelling")
            order, counts = bootstrap.person_confusions(labels, fold.probs[rows].argmax(1),
                                                        first.table["person"].to_numpy(), order)
            systems.append(counts)
        out.append(Stratum(tuple(systems)))
    return common, out


@dataclass
class Comparison:
    a: Side
    b: Side
    folds: list[int]
    n_persons: int
    n_resamples: int
    seed: int
    scores_a: dict  # metric -> the side's mean over seeds of its fold-mean score
    scores_b: dict
    delta: dict  # metric -> B - A
    person_interval: dict  # metric -> (lo, hi) over persons
    interval: dict  # metric -> (lo, hi): the person interval, widened by the seed spread where there is one
    p_value: dict
    per_fold: dict  # metric -> {fold: B - A}
    seed_sd: dict  # metric -> the seed-to-seed standard deviation of one model's score, None without seeds
    deltas_f1: np.ndarray  # the bootstrap's B - A macro F1, for the figure

    @property
    def covers(self) -> str:
        text = (f"persons: a paired bootstrap of {self.n_persons} persons (a person's photos move together), "
                f"{self.n_resamples} resamples, stratified by fold {self.folds}")
        if self.seed_sd["f1"] is not None:
            text += (f"; seeds: widened by the seed-to-seed spread (sd {self.seed_sd['f1']:.3f} of one model's "
                     f"macro F1, {len(self.a.runs)} vs {len(self.b.runs)} seed(s))")
        else:
            text += "; not training noise (one seed a side: retrain with other train_seed values to count it)"
        return text

    def verdict(self, metric: str = "f1") -> str:
        lo, hi = self.interval[metric]
        if lo > 0:
            return "B better"
        if hi < 0:
            return "A better"
        return f"not told apart with {self.n_persons} persons"

    def persons_needed(self, metric: str = "f1") -> int | None:
        lo, hi = self.interval[metric]
        return bootstrap.persons_to_resolve(self.delta[metric], (hi - lo) / 2, self.n_persons)

    def lines(self) -> list[str]:
        """What `mcls compare` prints."""
        out = [f"A = {self.a.label}: {self.a.how()}", f"B = {self.b.label}: {self.b.how()}",
               f"{int(LEVEL * 100)} % intervals over {self.covers}", "",
               f"{'':<24}{'A':>8}{'B':>8}{'B - A':>9}  {'interval':<18}{'p':>6}  per fold (B - A)"]
        for m in METRICS:
            lo, hi = self.interval[m]
            folds = " ".join(f"{k}:{d:+.3f}" for k, d in self.per_fold[m].items())
            out.append(f"{NAMES[m]:<24}{self.scores_a[m]:8.3f}{self.scores_b[m]:8.3f}{self.delta[m]:+9.3f}  "
                       f"[{lo:+.3f}, {hi:+.3f}]{'':<2}{self.p_value[m]:6.3f}  {folds}")
        verdict = self.verdict()
        out += ["", f"verdict (macro F1): {verdict}"]
        needed = self.persons_needed()
        if verdict.startswith("not told") and needed:
            out.append(f"about {needed} persons would resolve a difference of {self.delta['f1']:+.3f} "
                       f"({needed / self.n_persons:.1f}x these); with fewer, keep the simpler option")
        elif needed is None:
            out.append("no difference to resolve: the two serve the same answers")
        return out

    def record(self) -> dict:
        """compare.json's content."""
        return {"a": {"runs": [str(r) for r in self.a.runs], "serving": self.a.overrides, "served": self.a.how()},
                "b": {"runs": [str(r) for r in self.b.runs], "serving": self.b.overrides, "served": self.b.how()},
                "folds": self.folds, "n_persons": self.n_persons, "n_resamples": self.n_resamples,
                "bootstrap_seed": self.seed, "level": LEVEL, "covers": self.covers, "verdict": self.verdict(),
                "persons_to_resolve": self.persons_needed(),
                "metrics": {m: {"a": self.scores_a[m], "b": self.scores_b[m], "delta": self.delta[m],
                                "interval": list(self.interval[m]),
                                "person_interval": list(self.person_interval[m]), "p_value": self.p_value[m],
                                "seed_sd": self.seed_sd[m], "per_fold": {str(k): v
                                                                          for k, v in self.per_fold[m].items()}}
                            for m in METRICS}}


def compare(a: Side, b: Side, n_resamples: int = 2000, seed: int = 0) -> Comparison:
    """B against A on the folds both have; refuses (CompareError) where no fold is common or folds differ."""
    folds, layers = strata([a, b])
    ka = len(a.runs)
    resamples = bootstrap.resampled(layers, n_resamples, seed)
    per_system = [{m: np.array([bootstrap.scores(st.systems[s].sum(0))[m] for st in layers]) for m in METRICS}
                  for s in range(len(layers[0].systems))]

    def side_mean(values, part):  # the mean over a side's seeds
        chosen = values[:ka] if part == "a" else values[ka:]
        return np.mean(chosen, axis=0)

    out = {key: {} for key in ("scores_a", "scores_b", "delta", "person_interval", "interval", "p_value",
                               "per_fold", "seed_sd")}
    for m in METRICS:
        sa = side_mean([s[m] for s in per_system], "a")  # per fold
        sb = side_mean([s[m] for s in per_system], "b")
        deltas = side_mean([r[m] for r in resamples], "b") - side_mean([r[m] for r in resamples], "a")
        delta = float(sb.mean() - sa.mean())
        out["person_interval"][m] = lo, hi = bootstrap.interval(deltas, LEVEL)
        sd = _seed_sd([s[m].mean() for s in per_system[:ka]], [s[m].mean() for s in per_system[ka:]])
        if sd is not None:  # the seed term of a difference of two seed means, added in quadrature
            term = Z * sd * np.sqrt(1 / ka + 1 / len(b.runs))
            lo, hi = delta - np.hypot(delta - lo, term), delta + np.hypot(hi - delta, term)
        out["scores_a"][m], out["scores_b"][m], out["delta"][m] = float(sa.mean()), float(sb.mean()), delta
        out["interval"][m] = (float(lo), float(hi))
        out["p_value"][m] = bootstrap.two_sided_p(deltas)
        out["per_fold"][m] = {k: float(d) for k, d in zip(folds, sb - sa)}
        out["seed_sd"][m] = sd
        if m == "f1":
            f1_deltas = deltas
    return Comparison(a, b, folds, sum(st.n_persons for st in layers), n_resamples, seed, deltas_f1=f1_deltas, **out)


def _seed_sd(a: list[float], b: list[float]) -> float | None:
    """The pooled seed-to-seed standard deviation of one model's score, from the sides with 2+ seeds."""
    parts = [np.asarray(v) for v in (a, b) if len(v) >= 2]
    if not parts:
        return None
    dof = sum(len(v) - 1 for v in parts)
    return float(np.sqrt(sum(((v - v.mean()) ** 2).sum() for v in parts) / dof))


def figure(c: Comparison):
    """The bootstrap distribution of B - A macro F1 with 0 and the interval marked, and the per-fold differences."""
    from mcls.analysis.plots import plt

    fig, (ax, folds) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [3, 1.2]})
    ax.hist(c.deltas_f1, bins=50, color="#8da0cb", alpha=0.85)
    lo, hi = c.interval["f1"]
    ax.axvspan(lo, hi, color="#fc8d62", alpha=0.18, label=f"{int(LEVEL * 100)} % interval [{lo:+.3f}, {hi:+.3f}]")
    ax.axvline(0, color="k", lw=1, label="no difference")
    ax.axvline(c.delta["f1"], color="#d95f02", lw=2, label=f"B - A = {c.delta['f1']:+.3f}")
    ax.set_xlabel("B - A, macro F1 over 18 classes (resampled persons)")
    ax.set_ylabel("resamples")
    ax.set_title(f"{c.verdict()} (folds {', '.join(map(str, c.folds))})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    per = c.per_fold["f1"]
    folds.axhline(0, color="k", lw=1)
    folds.scatter(range(len(per)), list(per.values()), color="#d95f02", zorder=3)
    folds.set_xticks(range(len(per)), [f"fold {k}" for k in per], fontsize=8)
    folds.set_ylim(*ax.get_xlim())  # the same scale as the distribution: a fold's difference against the noise
    folds.set_xlim(-0.5, len(per) - 0.5)
    folds.set_title("B - A per fold", fontsize=9)
    fig.tight_layout()
    fig.suptitle(f"A = {c.a.label}\nB = {c.b.label}", fontsize=8, y=1.05)
    return fig


def save_comparison(c: Comparison, out_dir: str | Path) -> dict[str, Path]:
    """Writes compare.json and compare.png into out_dir."""
    from mcls.analysis.plots import save

    out_dir = Path(out_dir)
    write_json(out_dir / "compare.json", c.record())
    return {"json": out_dir / "compare.json", "figure": save(figure(c), out_dir / "compare.png")}


@dataclass(frozen=True)
class BoardNoise:
    """How far a leaderboard of `n_persons` unseen persons may read a model from its true score."""

    n_persons: int
    cv: float  # the run's out-of-fold macro F1 on all its validation persons pooled
    interval: tuple[float, float]  # where a board of n_persons puts that model's score, 95 % of the time
    delta: float | None = None  # against another run: this run - the other, pooled out-of-fold
    delta_interval: tuple[float, float] | None = None  # a board's reading of that difference

    def lines(self, public: float | None = None, other: str | None = None) -> list[str]:
        lo, hi = self.interval
        persons = f"{self.n_persons} person{'s' * (self.n_persons != 1)}"
        out = [f"a leaderboard of {persons} reads a model of out-of-fold macro F1 {self.cv:.3f} anywhere in "
               f"[{lo:.3f}, {hi:.3f}] (95 %, person bootstrap of the run's validation persons)"]
        if public is not None and not lo <= public <= hi:
            out.append(f"the public score {public:.4f} lies outside it: the board's persons differ from the "
                       "validation's (data shift), or the submission is not the model the folds scored")
        if self.delta is not None:
            dlo, dhi = self.delta_interval
            told = ("the board cannot tell the two apart: a public gain or loss inside that is noise" if dlo < 0 < dhi
                    else "the board tells the two apart")
            out.append(f"against {other}: out-of-fold difference {self.delta:+.3f}; a board of {self.n_persons} "
                       f"persons reads it anywhere in [{dlo:+.3f}, {dhi:+.3f}]: {told}")
        return out


def board_noise(run: Side, n_persons: int, against: Side | None = None, n_resamples: int = 2000,
                seed: int = 0) -> BoardNoise:
    """The spread a leaderboard of n_persons gives a run's score (and its difference from `against`, scored on the
    same board), from the same bootstrap: the run's out-of-fold persons, pooled over folds, drawn n_persons at a
    time."""
    if n_persons < 1:
        raise UserError(f"a leaderboard of {n_persons} persons: give a positive number of persons")
    _, layers = strata([run] if against is None else [run, against])
    pooled = Stratum(tuple(np.concatenate([st.systems[s] for st in layers])
                           for s in range(len(layers[0].systems))))
    k = len(run.runs)
    draws = bootstrap.resampled([pooled], n_resamples, seed, draws=n_persons)
    own = np.mean([d["f1"] for d in draws[:k]], axis=0)
    point = [bootstrap.scores(c.sum(0))["f1"] for c in pooled.systems]
    cv = float(np.mean(point[:k]))
    if against is None:
        return BoardNoise(n_persons, cv, bootstrap.interval(own, LEVEL))
    other = np.mean([d["f1"] for d in draws[k:]], axis=0)
    return BoardNoise(n_persons, cv, bootstrap.interval(own, LEVEL), float(cv - np.mean(point[k:])),
                      bootstrap.interval(own - other, LEVEL))
