"""`mcls predict | vote | diff`: a run's predictions and a team's submissions."""
from __future__ import annotations

from pathlib import Path

from mcls.cli.keys import PREDICT_KEYS, config_of, prediction_keys
from mcls.config import Config
from mcls.errors import UserError


def cmd_predict(args) -> None:
    from mcls.infer.serving import Serving
    from mcls.infer.submission import predict_folder, write_submission

    overrides, other = prediction_keys(args, PREDICT_KEYS)
    cfg = Config().updated(other)
    if len(args.run) > 1 and not args.out:
        raise UserError("an ensemble of runs (--run given more than once) needs --out: no single run folder owns it")
    serving = Serving.resolve(args.run, overrides)
    if args.folder:
        out = args.out or str(Path(args.run[0]) / "predictions.csv")
        print(predict_folder(args.folder, serving, out, device=cfg.device, on_bad_image=cfg.on_bad_image))
    else:
        print(write_submission(cfg.data_dir, serving, args.out, device=cfg.device))


def cmd_vote(args) -> None:
    """Combines teammates' submissions or probability files into one checked submission."""
    from mcls.data.table import load_eval_table
    from mcls.infer.submission import probs_file, save_submission
    from mcls.infer.vote import vote
    from mcls.io import writable_output

    # `files` is greedy: key=value words among them are overrides
    args.overrides += [f for f in args.files if "=" in f and not Path(f).exists()]
    files = [f for f in args.files if f not in args.overrides]
    cfg = config_of(args)
    out = writable_output(args.out, "--out")
    info = load_eval_table(cfg.data_dir)
    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    soft = {"soft": True, "hard": False, "auto": None}[args.mode]
    sub, probs, how = vote(files, info, weights, soft)
    save_submission(out, info, sub["ans"], probs)
    print(f"{how}\nwrote {out}" + (f" and {probs_file(out)}" if probs is not None else ""))


def cmd_diff(args) -> None:
    """Where two submissions (or two runs' submissions) disagree, per head."""
    from mcls.data.table import load_eval_table
    from mcls.infer.vote import HEADS, answers_file, disagreements

    cfg = config_of(args)
    info = load_eval_table(cfg.data_dir)
    d = disagreements(args.a, args.b, info)
    print(f"A = {answers_file(args.a)}\nB = {answers_file(args.b)}\n"
          f"{d['n']} of {d['of']} images answered differently ({d['n'] / max(d['of'], 1):.1%})")
    for head in HEADS:
        if len(d[head]):
            print(f"\n{head}: A's answer (rows) vs B's (columns), where they differ\n{d[head].to_string()}")
    if args.out and d["n"]:
        from mcls.io import write_csv

        rows = info.iloc[d["rows"]][["ImageID"]].copy()
        rows["a"], rows["b"] = d["a"][d["rows"]], d["b"][d["rows"]]
        write_csv(args.out, rows)
        print(f"\nthe {d['n']} differing rows: {args.out}")
