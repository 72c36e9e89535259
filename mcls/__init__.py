"""mcls: a notebook-first research kit for the mask / gender / age classification task."""
import os

# albumentations 2.x checks PyPI for updates on import; this kit runs offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
