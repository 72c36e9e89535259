"""Decisions with intervals: each choice the kit ships, judged by `mcls compare` on the folds both sides trained.

    .venv/bin/python bench/decide.py                        # every decision whose runs are under runs/quality
    .venv/bin/python bench/decide.py --only serving-tta-persons,heads

A side names bench/quality.py variants (their run folders under --runs) and serving keys; variants joined by ","
are one recipe's seeds, joined by " & " an average of models. A decision whose runs share no finished fold is
listed as not measured, with the command that trains what it needs. The rule (docs/quality.md): a choice leaves the
simpler option only when B - A's interval excludes 0.

Writes bench/results/decisions.{md,json} and one compare figure per decision under bench/results/decisions/.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import quality  # noqa: E402
from common import machine  # noqa: E402

from mcls.analysis.compare import CompareError, Side, compare, figure  # noqa: E402
from mcls.analysis.plots import save  # noqa: E402

AS_IS = {"tta": False, "person_consistent": False}
TTA = {"tta": True, "person_consistent": False}
SERVED = {"tta": True, "person_consistent": True}


@dataclass(frozen=True)
class Decision:
    key: str
    question: str
    a: str  # variants: "x", "x,y" (seeds), "x & y" (averaged)
    b: str
    a_serving: dict
    b_serving: dict
    simpler: str  # "A" or "B": the side kept when the two are not told apart
    note: str = ""


DECISIONS = [
    Decision("serving-tta-persons", "the default served with flip TTA + person sharing, or as is",
             "default+served", "default+served", AS_IS, SERVED, "A"),
    Decision("serving-tta", "flip TTA alone on the default", "default+served", "default+served", AS_IS, TTA, "A"),
    Decision("serving-persons", "person sharing on top of flip TTA", "default+served", "default+served", TTA, SERVED,
             "A"),
    Decision("heads", "the mask task's own backbone (heads=mask_apart, the default) or one backbone (multi), on the "
             "18 classes", "multi-default", "default+served", SERVED, SERVED, "A",
             "the default keeps mask_apart for real photos' mask state (realmask-dev 0.901 against 0.647), which "
             "this 18-class comparison on synthetic masks does not see"),
    Decision("seed-noise", "the default trained again with train_seed=7 (the same recipe: any difference is training "
             "noise)", "default+served", "default+train-seed7", SERVED, SERVED, "A"),
    Decision("serving-seeds", "the default's serving judged over two seeds (their spread counted)",
             "default+served,default+train-seed7", "default+served,default+train-seed7", AS_IS, SERVED, "A"),
    Decision("heads-seeds", "mask_apart with two seeds against multi with one", "multi-default",
             "default+served,default+train-seed7", SERVED, SERVED, "A"),
    Decision("average-serving", "the default's fold average (two seeds, no scored person trained either) served with "
             "TTA + person sharing, or as is", "default+served & default+train-seed7",
             "default+served & default+train-seed7", AS_IS, SERVED, "A"),
    Decision("average-vs-single", "two seeds averaged against one model, both served", "default+served",
             "default+served & default+train-seed7", SERVED, SERVED, "A"),
    Decision("external-serving", "the external preset served with TTA + person sharing, or as is", "default+external",
             "default+external", AS_IS, SERVED, "A"),
    Decision("external-joint", "external faces as pretraining or in every fold's batches (joint)", "default+external",
             "default+external-joint", SERVED, SERVED, "A"),
]


def variant_path(spec: str, data: str, runs: Path) -> Path:
    """A side's run folders: variants joined by " & " (averaged) become run folders joined by "+"."""
    return Path("+".join(str(quality.run_folder(v, data, runs)) for v in spec.split(" & ")))


def side(spec: str, serving: dict, data: str, runs: Path) -> Side:
    return Side(tuple(variant_path(s, data, runs) for s in spec.split(",")), dict(serving))


def minutes(spec: str, recorded: pd.DataFrame) -> str:
    """Training minutes a fold, measured alone (bench/results/quality.csv), for each variant of a side."""
    parts = []
    for v in spec.replace(" & ", ",").split(","):
        row = recorded[recorded["variant"].str.fullmatch(rf"{re.escape(v)}({re.escape(quality.DEFAULT_MARK)})?")] if len(recorded) \
            else recorded
        parts.append(f"{row['train_min_per_fold'].iloc[0]:.1f}" if len(row) and pd.notna(
            row["train_min_per_fold"].iloc[0]) else "?")
    return " & ".join(parts) if " & " in spec else ", ".join(parts)


def describe(spec: str, serving: dict) -> str:
    how = "as is" if not serving["tta"] and not serving["person_consistent"] else \
        "TTA" if not serving["person_consistent"] else "TTA + persons"
    return f"{spec} ({how})"


def interval_text(c, metric: str) -> str:
    lo, hi = c.interval[metric]
    return f"{c.delta[metric]:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def choice(d: Decision, c) -> str:
    verdict = c.verdict()
    if verdict == "B better":
        return "B"
    if verdict == "A better":
        return "A"
    return f"{d.simpler} (the simpler; not told apart)"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/utkmask")
    ap.add_argument("--runs", default="runs/quality")
    ap.add_argument("--only", help="comma list of decision keys")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    runs, out = Path(args.runs), Path(args.out)
    chosen = [d for d in DECISIONS if not args.only or d.key in args.only.split(",")]
    recorded = pd.read_csv(out / "quality.csv") if (out / "quality.csv").is_file() else pd.DataFrame()
    rows, records, missing = [], {}, []
    for d in chosen:
        a, b = side(d.a, d.a_serving, args.data, runs), side(d.b, d.b_serving, args.data, runs)
        try:
            c = compare(a, b, args.resamples)
        except (CompareError, FileNotFoundError) as err:
            variants = sorted({v for s in (d.a, d.b) for v in s.replace(" & ", ",").split(",")})
            missing.append(f"- `{d.key}` ({d.question}): not measured here ({str(err).split(';')[0]}); train with "
                           f"`.venv/bin/python bench/quality.py --variants {','.join(variants)} --folds 0,1`")
            continue
        print(f"\n== {d.key}: {d.question}\n" + "\n".join(c.lines()))
        save(figure(c), out / "decisions" / f"{d.key}.png")
        records[d.key] = {"question": d.question, "note": d.note, **c.record()}
        rows.append({"decision": d.key, "question": d.question, "A": describe(d.a, d.a_serving),
                     "B": describe(d.b, d.b_serving), "folds": ",".join(map(str, c.folds)), "persons": c.n_persons,
                     "B - A macro F1 [95 %]": interval_text(c, "f1"), "B - A age acc": interval_text(c, "acc_age"),
                     "B - A F1 >=60": interval_text(c, "f1_old"),
                     "per fold (F1)": " ".join(f"{v:+.3f}" for v in c.per_fold["f1"].values()),
                     "seed sd (F1)": "" if c.seed_sd["f1"] is None else f"{c.seed_sd['f1']:.3f}",
                     "min / fold (A; B)": f"{minutes(d.a, recorded)}; {minutes(d.b, recorded)}",
                     "verdict": c.verdict(), "keeps": choice(d, c)})
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decisions.json").write_text(json.dumps(records, indent=2) + "\n")
    command = "python bench/decide.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (f"# Decisions with intervals\n\nmachine: {machine()}\n\ncommand: `{command.strip()}` (runs under "
            f"{runs}, trained by bench/quality.py)\n\n"
            "Each row: B - A with its 95 % interval over persons (paired bootstrap, stratified by fold, "
            f"{args.resamples} resamples; `mcls compare`), widened by the seed-to-seed spread where a side has seeds. "
            "`a,b` is one recipe's seeds; `a & b` their models averaged. `min / fold`: training minutes measured alone "
            "(bench/results/quality.csv; `?` where not recorded). The rule: a choice leaves the simpler option only "
            "when its interval excludes 0.\n\n"
            + (table.to_markdown(index=False) if len(table) else "(no decision could be measured)") + "\n")
    notes = [f"- `{d.key}`: {d.note}" for d in chosen if d.note and d.key in records]
    if notes:
        text += "\nNotes:\n" + "\n".join(notes) + "\n"
    if missing:
        text += "\nNot measured (their runs are not under the runs folder):\n" + "\n".join(missing) + "\n"
    (out / "decisions.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
