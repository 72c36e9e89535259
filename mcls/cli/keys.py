"""What a command line gives: the config keys a user set, each command's accepted keys, and the checks a command
makes before any work (`--check`)."""
from __future__ import annotations

from pathlib import Path

from mcls.config import Config, ConfigError, load_config, parse_overrides, read_yaml_keys


def config_of(args):
    return load_config(args.config, args.overrides)


def given_keys(args) -> dict:
    """The keys the user set, and only those: --config's, then key=value's."""
    return {**(read_yaml_keys(args.config)[1] if args.config else {}), **parse_overrides(args.overrides)}


# Keys `mcls predict` takes besides the serving keys: where the images are and how to read and run them.
PREDICT_KEYS = ("data_dir", "device", "on_bad_image")


SWITCHES = {"tta": "tta", "persons": "person_consistent", "calibration": "calibrate_age"}


def prediction_keys(args, accepted: tuple[str, ...]) -> tuple[dict, dict]:
    """(serving overrides, other keys) from --config, key=value and the on/off switches; a key that means nothing
    here is refused with the list of those that do, and a switch may not contradict its key."""
    from mcls.infer.serving import SERVING_KEYS

    values = given_keys(args)
    valid = (*SERVING_KEYS, *accepted)
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: mean(s) nothing to `mcls {args.command}`; it takes "
                          f"{', '.join(valid)}")
    for flag, key in SWITCHES.items():
        given = getattr(args, flag, None)
        if given is None:
            continue
        if key in values and values[key] != (given == "on"):
            raise ConfigError(f"--{flag} {given} contradicts {key}={values[key]}; give one of them")
        values[key] = given == "on"
    return ({k: v for k, v in values.items() if k in SERVING_KEYS},
            {k: v for k, v in values.items() if k not in SERVING_KEYS})


def compare_sides(args):
    """(Side A, Side B) from `mcls compare A B [key=value] [a.key=value] [b.key=value]`: a key without a prefix
    serves both sides; a side is a run folder, or several (one per train_seed) joined by commas."""
    from mcls.analysis.compare import Side
    from mcls.infer.serving import SERVING_KEYS

    values = {"a": {}, "b": {}}
    for key, value in parse_overrides(args.overrides).items():
        side, _, name = key.rpartition(".")
        if side not in ("", "a", "b") or name not in SERVING_KEYS:
            raise ConfigError(f"{key}: not a serving key of `mcls compare`; it takes {', '.join(SERVING_KEYS)}, "
                              "each for both sides or prefixed a. or b. for one")
        for s in ([side] if side else ["a", "b"]):
            values[s][name] = value
    return tuple(Side(tuple(Path(r) for r in spec.split(",") if r), values[s]) for s, spec in
                 (("a", args.a), ("b", args.b)))


# the keys the leak guard reads: the two sets, its threshold and how faces are found for the descriptors
LEAK_CHECK_KEYS = ("data_dir", "external_data", "external_min_age", "external_threshold", "crop_cache",
                  "crop_min_confidence", "device")


def leak_check_config(args) -> Config:
    unknown = sorted(set(given_keys(args)) - set(LEAK_CHECK_KEYS))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: mean(s) nothing to `mcls leak-check`; it takes "
                          f"{', '.join(LEAK_CHECK_KEYS)}")
    return config_of(args)


def check_scores(args) -> None:
    """`mcls lb`'s numbers: the scores as records.check_scores reads them, and the board's size."""
    from mcls.runs.records import check_scores as scores_in_range

    scores_in_range(args.public, args.private)
    if args.persons is not None and args.persons < 1:
        raise ConfigError(f"--persons {args.persons}: a leaderboard scores at least 1 person")


def validate(args) -> None:
    """The checks a command makes before any work, alone (`--check`): its keys, their values, and the config a
    training resolves to (what a switch such as smoke derives included)."""
    if args.command in ("predict", "calibrate", "face-prior"):
        prediction_keys(args, PREDICT_KEYS if args.command == "predict" else ())
    elif args.command == "compare":
        compare_sides(args)
    elif args.command == "leak-check":
        leak_check_config(args)
    elif args.command == "pipeline":
        from mcls.pipeline import pipeline_settings

        pipeline_settings(given_keys(args))
    elif args.command == "lb":
        check_scores(args)
    elif args.command != "runs":
        cfg = config_of(args)
        Config.from_dict(cfg.resolved().to_dict(), source="the resolved config")
