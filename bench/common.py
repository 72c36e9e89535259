"""What every benchmark table records beside its figures: the machine and the command."""
from __future__ import annotations

import platform
import time

import torch


def machine() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU {platform.processor() or ''}".strip()
    return (f"{platform.node()} ({dev}, {torch.get_num_threads()} torch threads), torch {torch.__version__}, "
            f"python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}")
