"""`mcls runs | lb | compare`: what the runs scored, against each other and the leaderboard."""
from __future__ import annotations

from pathlib import Path

from mcls.cli.keys import check_scores, compare_sides
from mcls.config import ConfigError


def cmd_runs(args) -> None:
    from mcls.analysis.leaderboard import cv_lb_agreement, cv_lb_figure, describe_agreement
    from mcls.runs.records import list_runs

    df = list_runs(args.runs_dir)
    print(df.to_string(index=False) if len(df) else f"no runs in {args.runs_dir}")
    if len(df) and df["lb_public"].notna().any():
        for board in ("lb_public", "lb_private"):
            if df[board].notna().any():
                print(describe_agreement(cv_lb_agreement(df, board)))
    if args.figure:
        from mcls.analysis.plots import save

        print(f"figure: {save(cv_lb_figure(df), args.figure)}")


def cmd_lb(args) -> None:
    """Records a leaderboard score of a run's submission beside its CV."""
    from mcls.runs.layout import Run
    from mcls.runs.records import cv_score, record_leaderboard

    from mcls.analysis.compare import Side, board_noise

    check_scores(args)
    run = Run.open(args.run)
    persons = args.persons or board_persons(run)
    entry = record_leaderboard(args.run, args.public, args.private, args.note or "")
    cv = cv_score(run.summary, run.config)
    private = f", private {entry['private']:.4f}" if entry["private"] is not None else ""
    print(f"{run.path}: public {entry['public']:.4f}{private} recorded beside CV "
          f"{'%.4f' % cv if cv is not None else '(none yet)'} in {run.leaderboard_file}")
    if not run.scored_folds:
        print("(no fold has out-of-fold predictions yet: the leaderboard's noise needs them)")
        return
    if persons is None:
        print("(how noisy the board is: give --persons, the number of persons the public board scores)")
        return
    against = Side((Path(args.against),)) if args.against else None
    noise = board_noise(Side((run.path,)), persons, against)
    print("\n".join(noise.lines(entry["public"], args.against)))


def board_persons(run) -> int | None:
    """The public board's persons for a run's data: half of its eval images' persons (7 photos each), as the
    competition scored half of eval publicly; None when the run's data_dir has no eval/info.csv here."""
    info = Path(run.config.data_dir) / "eval" / "info.csv"
    if not info.is_file():
        return None
    with info.open() as f:
        images = sum(1 for _ in f) - 1
    return max(1, images // 7 // 2)


def cmd_compare(args) -> None:
    """B against A on their common folds, with paired person-bootstrap intervals; writes compare.json + figure."""
    from mcls.analysis.compare import compare, save_comparison

    a, b = compare_sides(args)
    if args.resamples < 100:
        raise ConfigError(f"--resamples {args.resamples}: use at least 100 (2000 gives stable 95 % intervals)")
    result = compare(a, b, args.resamples, args.seed)
    print("\n".join(result.lines()))
    out = Path(args.out or Path("runs") / "compare" / f"{_slug(a)}--vs--{_slug(b)}")
    paths = save_comparison(result, out)
    print(f"\n{paths['json']}\n{paths['figure']}")


def _slug(side) -> str:
    """A folder name for one side: its runs' names and serving keys."""
    keys = "".join(f"-{k}={str(v).lower()}" for k, v in side.overrides.items())
    from mcls.analysis.compare import models

    return ",".join("+".join(p.resolve().name for p in models(r)) for r in side.runs) + keys
