"""torchrun support: one process per device, DistributedDataParallel, rank 0 writes.

Without torchrun's environment every helper here is a no-op for a single process, so the training code has
one path. The global batch stays `batch_size`: each of the W ranks takes its 1/W slice of every global batch,
so W processes step through the same sequence of batches a single process would.
"""
from __future__ import annotations

import os
import warnings
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from mcls.errors import UserError


def launched() -> bool:
    """True inside a torchrun worker (torchrun sets WORLD_SIZE, RANK and LOCAL_RANK)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device_name: str = "auto") -> None:
    """Joins the process group torchrun set up: nccl between GPUs, gloo on CPU. Idempotent."""
    if not launched() or active():
        return
    cuda = torch.cuda.is_available() and device_name in ("auto", "cuda") or device_name.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30))


def shutdown() -> None:
    if active():
        dist.barrier()
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device, sync_bn: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around `model` under torchrun (SyncBatchNorm first, if asked); else `model`."""
    if not active():
        return model
    if sync_bn and device.type == "cuda":
        # converts the BatchNorm children in place, so the caller's reference stays the trained module
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif sync_bn:
        warnings.warn("sync_bn needs CUDA; on CPU each process keeps its own BatchNorm statistics", stacklevel=2)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                     else None)


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(obj):
    """Rank 0's value of a picklable object, on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_concat(part: np.ndarray) -> np.ndarray:
    """Every rank's array, concatenated in rank order, on every rank."""
    if not active():
        return part
    parts = [None] * world()
    dist.all_gather_object(parts, part)
    return np.concatenate(parts)


def mean_over_ranks(value: float, weight: float) -> float:
    """Weighted mean of a per-rank number (e.g. a loss over that rank's images)."""
    if not active():
        return value
    t = torch.tensor([value * weight, weight], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0] / t[1])


def shard(n: int) -> np.ndarray:
    """This rank's contiguous share of n rows (for sharded prediction, gathered back in rank order)."""
    return np.array_split(np.arange(n), world())[rank()]


class GlobalBatchSampler(Sampler):
    """This rank's slice of each global batch of an epoch order that every rank draws identically.

    Items come out as (row, epoch seed): the augmentation seed travels with the index, so persistent loader
    workers (which keep their own copy of the dataset) still augment each epoch afresh. The last, short global
    batch is padded from the epoch's start so every rank gets the same number of items (DDP steps together).
    """

    def __init__(self, global_batch: int):
        if global_batch % world():
            raise UserError(f"batch_size={global_batch} must be divisible by the {world()} processes")
        self.global_batch, self.rows, self.seed = global_batch, [], 0

    def set_epoch(self, order: np.ndarray, seed: int) -> None:
        w, r, per = world(), rank(), self.global_batch // world()
        rows = []
        for start in range(0, len(order), self.global_batch):
            batch = order[start:start + self.global_batch]
            batch = np.concatenate([batch, order[:(-len(batch)) % w]])
            rows.extend(np.array_split(batch, w)[r][:per].tolist())
        self.rows, self.seed = rows, seed

    def __iter__(self):
        return iter([(row, self.seed) for row in self.rows])

    def __len__(self) -> int:
        return len(self.rows)
