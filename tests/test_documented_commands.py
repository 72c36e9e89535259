"""Every `mcls ...` and `make ...` line in README.md and docs/*.md, as typed, goes through the CLI's own parser and
checks (`--check`: nothing is trained or written), with its data and run paths pointed at the sample and a temporary
folder. A documented command that the kit refuses fails here."""
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLE

from mcls.cli import main

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MCLS = re.compile(r"^(?:\.venv/bin/python -m )?mcls\s")
# A user's own file named in a documented line: stands in as an empty config or a folder that exists.
USER_FILES = {"my.yaml": "", "space.yaml": "lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"}


def documented_lines() -> list[tuple[str, str]]:
    """(where, command) for each command line in a fenced block; a line ending in \\ continues on the next."""
    found = []
    for doc in DOCS:
        block, pending = False, ""
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            if line.startswith("```"):
                block = not block
                continue
            if not block:
                continue
            text = pending + line.strip()
            if text.endswith("\\"):
                pending = text[:-1] + " "
                continue
            pending = ""
            if MCLS.match(text) or text.startswith("make "):
                found.append((f"{doc.relative_to(ROOT)}:{n}", text))
    return found


LINES = documented_lines()


def as_run_here(words: list[str], tmp: Path) -> list[str]:
    """The command with its data at the sample, its outputs in `tmp`, and a user's own files standing in."""
    out = []
    for word in words:
        if word == "...":  # "and more keys": the line is checked without them
            continue
        key, eq, value = word.partition("=")
        if eq and key == "data_dir":
            word = f"data_dir={SAMPLE}"
        elif eq and key == "run_dir":
            word = f"run_dir={tmp / 'run'}"
        elif word in USER_FILES:
            (tmp / word).write_text(USER_FILES[word])
            word = str(tmp / word)
        out.append(word)
    return out


def test_the_docs_hold_the_commands_a_user_types():
    assert len(LINES) >= 40
    commands = {words[words.index("mcls") + 1] for words in (shlex.split(c, comments=True) for _, c in LINES)
                if "mcls" in words}
    assert {"train", "predict", "compare", "lb", "vote", "leak-check", "pipeline"} <= commands


@pytest.mark.parametrize("where,line", LINES, ids=[w for w, _ in LINES])
def test_a_documented_command_is_accepted_as_typed(where, line, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    words = shlex.split(line, comments=True)
    if words[0] == "make":
        targets = [w for w in words[1:] if "=" not in w]
        for w in words[1:]:  # a variable naming a file names one that exists
            if "=" in w and w.split("=", 1)[1].endswith((".yaml", ".yml")):
                assert (ROOT / w.split("=", 1)[1]).is_file(), f"{where}: {w} names no file"
        dry = subprocess.run(["make", "-n", *targets], cwd=ROOT, capture_output=True, text=True)
        assert dry.returncode == 0, f"{where}: `{line}` -> {dry.stderr.strip()}"
        return
    argv = as_run_here(words[words.index("mcls") + 1:], tmp_path)
    try:
        code = main([*argv, "--check"])
    except SystemExit as stop:  # argparse's own refusal
        code = stop.code
    err = capsys.readouterr().err
    assert code == 0, f"{where}: `{line}` is refused: {err.strip()}"
