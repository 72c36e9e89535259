"""What the leak guard (mcls.data.leak_guard) leaves for a person to look at, in one folder: the matched pairs (CSV
and figure), the external rows kept and each external face's distance to its nearest competition face."""
from __future__ import annotations

from pathlib import Path

from mcls.analysis.plots import leak_pairs_figure, nearest_distance_figure, save
from mcls.data.leak_guard import LeakReport
from mcls.io import write_csv


def save_report(report: LeakReport, folder) -> None:
    folder = Path(folder)
    write_csv(folder / "leak_pairs.csv", report.pairs)
    write_csv(folder / "external_kept.csv", report.kept)
    save(leak_pairs_figure(report.pairs), folder / "leak_pairs.png")
    save(nearest_distance_figure(report.nearest, report.threshold), folder / "nearest_distance.png")
