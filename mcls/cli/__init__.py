"""`mcls <command> [--config file.yaml] [key=value ...]`: the same config the notebooks use.

The commands live by what they touch: training.py (train, demo, pipeline, sweep, calibrate, face-prior),
serving.py (predict, vote, diff), evidence.py (runs, lb, compare), data.py (folds, check, crop, leak-check, relabel,
cam); keys.py reads what a command line gives and checks it; parser.py is the grammar.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from mcls.cli.keys import validate
from mcls.cli.parser import build_parser
from mcls.errors import UserError


def describe_os_error(err: OSError) -> str:
    """One sentence for a failed read or write: which file, what happened, what to do."""
    where = f"{err.filename}: " if getattr(err, "filename", None) else ""
    if err.errno == errno.ENOSPC:
        return (f"{where}the disk is full ({err.strerror}); free space, then run the same command again (training: with --resume, "
                "which continues after the last saved epoch; files written before are intact)")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"{where}cannot write here ({err.strerror or 'read-only or not yours'}); choose another path or fix "
                "its permissions")
    return str(err)


def parse_args(argv=None) -> argparse.Namespace:
    """Options and key=value overrides in any order (`predict tta=false --run R data_dir=D` is one command):
    argparse alone takes positionals in one block only."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*getattr(args, "overrides", []), *extra]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet = int(os.environ.get("RANK", "0")) > 0  # under torchrun, rank 0 speaks for all
    logging.basicConfig(level=logging.WARNING if quiet else logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    try:
        if args.check:
            validate(args)
            print(f"mcls {args.command}: the keys and values are valid (--check: nothing was run)")
            return 0
        args.fn(args)
    # the kit's worded errors and the OS's own (a missing file, a full disk); anything else is a bug: its traceback
    except (UserError, OSError) as err:
        if args.debug or os.environ.get("MCLS_DEBUG"):
            raise
        message = describe_os_error(err) if isinstance(err, OSError) and type(err).__module__ == "builtins" \
            else str(err)
        print(f"mcls {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    return 0
