"""What every benchmark table records beside its figures: the machine and the command."""
from __future__ import annotations

import platform
import threading
import time
from pathlib import Path

import pandas as pd
import torch


def machine() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU {platform.processor() or ''}".strip()
    return (f"{platform.node()} ({dev}, {torch.get_num_threads()} torch threads), torch {torch.__version__}, "
            f"python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}")


def write_result(out: str | Path, name: str, per_row: pd.DataFrame, title: str, command: str, body: str) -> str:
    """Writes `name`.csv (the rows) and `name`.md (title, machine, command, then `body`) under `out`; returns the
    markdown, which the benchmark also prints."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_row.to_csv(out / f"{name}.csv", index=False)
    text = f"# {title}\n\nmachine: {machine()}\n\ncommand: `{command}`\n\n{body}"
    (out / f"{name}.md").write_text(text)
    return text


class ActiveClock:
    """Wall seconds while this process was allowed to run: a gap between two ticks of a background thread longer
    than `max_gap` is a stop (SIGSTOP, suspend) and does not count. Lets a long benchmark be paused for other work
    without inflating its figures."""

    def __init__(self, tick: float = 0.25, max_gap: float = 2.0):
        self.tick, self.max_gap, self.stopped = tick, max_gap, 0.0
        self._last = time.monotonic()
        self._start = self._last
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            time.sleep(self.tick)
            now = time.monotonic()
            if now - self._last > self.max_gap:
                self.stopped += now - self._last - self.tick
            self._last = now

    def seconds(self) -> float:
        return time.monotonic() - self._start - self.stopped
