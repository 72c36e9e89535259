"""Run folders: their layout (one Run object), run records, tracking."""
from mcls.runs.layout import Fold, Run

__all__ = ["Fold", "Run"]
