"""Multi-process data-parallel training: `torchrun --nproc_per_node N experiments/run.py ...`.

torchrun starts N copies of the script and tells each its RANK, LOCAL_RANK and WORLD_SIZE; the
model is wrapped in DistributedDataParallel, which averages gradients across processes after
every backward pass (gloo on CPUs, nccl on GPUs). Several machines are torchrun's business:
`--nnodes M --node_rank R --rdzv_endpoint HOST:PORT` on each, and nothing here changes.

`train.batch_size` stays the *global* batch: each of N processes takes batch_size / N images per
step, so one config means the same optimisation (steps per epoch, learning-rate schedule) at
any N. Rank 0 owns everything that is written (run directory, config.yaml, checkpoints,
metrics.csv, results.json, figures) and the one tracked experiment; every rank trains on its
shard of each epoch and evaluates its shard of val/test, and the predictions are gathered.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

from petlab.config import TrainConfig
from petlab.errors import ConfigError
from petlab.progress import hide_progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------ collectives (no-ops for one process)
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj):
        """rank 0's value of obj, on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, *values: float) -> list[float]:
        if not self.enabled:
            return list(values)
        # nccl reduces CUDA tensors only; gloo CPU ones
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on any: so all ranks stop at the same step."""
        return self.sum(float(flag))[0] > 0 if self.enabled else flag

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """rank 0's buffers (BatchNorm running statistics) on every rank: DDP syncs them only at train forwards."""
        if self.enabled:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    @contextmanager
    def main_first(self):
        """Rank 0 runs the block first (filling the decode and feature caches); the others then read them."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def from_env() -> Distributed:
    """What torchrun set; one process (rank 0 of 1) when started any other way."""
    env = os.environ
    return Distributed(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)),
                       int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", 1))))


def setup(t: TrainConfig, device: torch.device) -> Distributed:
    """Join the process group torchrun prepared (once per process); set this rank's threads."""
    ctx = from_env()
    if not ctx.enabled:
        return ctx
    per_rank_batch(t.batch_size, ctx)  # refuse a batch that does not split before anything starts
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
        log.info("rank %d of %d joined (%s)", ctx.rank, ctx.world_size, backend)
    if device.type == "cpu" and not t.threads:
        # torchrun sets OMP_NUM_THREADS=1; the processes on one machine share its cores instead.
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // ctx.local_world_size))
    if not ctx.is_main:
        hide_progress()  # one progress bar, rank 0's
        logging.getLogger("petlab").setLevel(logging.ERROR)  # and one log
    return ctx


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(batch_size: int, ctx: Distributed) -> int:
    if batch_size % ctx.world_size:
        raise ConfigError(f"train.batch_size: {batch_size} is the global batch and must divide evenly over "
                          f"{ctx.world_size} processes")
    return batch_size // ctx.world_size


def shard(loader: DataLoader, ctx: Distributed, train: bool, seed: int) -> DataLoader:
    """The same data, split over the ranks. Train: a fresh shuffle per epoch (sampler.set_epoch) of
    disjoint shards; eval: every world_size-th image from rank's offset, no padding, so that the
    gathered predictions are exactly the split."""
    if not ctx.enabled:
        return loader
    if train and isinstance(loader.sampler, WeightedRandomSampler):
        raise ConfigError("train.sampler balanced draws from one process's sampler; under torchrun use "
                          "train.class_weights balanced instead")
    if train:
        sampler = DistributedSampler(loader.dataset, ctx.world_size, ctx.rank, shuffle=True, seed=seed)
        batch = per_rank_batch(loader.batch_size, ctx)
    else:
        sampler = list(range(ctx.rank, len(loader.dataset), ctx.world_size))
        batch = max(1, loader.batch_size // ctx.world_size)
    return DataLoader(loader.dataset, batch_size=batch, sampler=sampler, num_workers=loader.num_workers)


def gather_predictions(ctx: Distributed, loader: DataLoader, targets: np.ndarray, preds: np.ndarray,
                       mean_loss: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Every rank's shard of (targets, predictions, loss), put back in the split's order."""
    if not ctx.enabled:
        return targets, preds, mean_loss
    indices = np.asarray(list(loader.sampler)[:len(targets)])
    parts = [None] * ctx.world_size
    dist.all_gather_object(parts, (indices, targets, preds, mean_loss * len(targets)))
    order = np.argsort(np.concatenate([p[0] for p in parts]), kind="stable")
    t = np.concatenate([p[1] for p in parts])[order]
    p = np.concatenate([p[2] for p in parts])[order]
    return t, p, sum(part[3] for part in parts) / max(len(t), 1)
