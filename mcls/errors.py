"""The one kind of error the kit words for its user.

A UserError is input the user can fix: a key, a file, a run folder, a value. Its message is one sentence that
names the thing, what is wrong and what to do, and the command line prints it alone. Every other exception is a
bug or something unforeseen, and shows its traceback: a plain ValueError from deep inside is not dressed up as
advice. The kit's named errors (ConfigError, DataError, CheckpointError, ...) are UserErrors; it subclasses
ValueError, so code that catches bad values still catches them.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input, told in one sentence: which file or key, what is wrong, what to do."""
