"""Training on several processes: DistributedDataParallel under ``torchrun``.

    torchrun --standalone --nproc_per_node 2 -m xlnet_ref.train --preset tiny --device cpu   # 2 CPU processes (gloo)
    torchrun --standalone --nproc_per_node 8 -m xlnet_ref.train --preset small               # 8 GPUs (nccl)
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --rdzv_backend c10d \\
             --rdzv_endpoint HOST:29500 -m xlnet_ref.train --preset small                    # 2 machines

How the work is split (the same global batch as one process, so the same run):

* every rank draws the *global* batch from the same data generator and keeps its own rows
  (:func:`rows_of`); with ``bi_data`` it keeps its share of each half, so that its local batch is again
  [forward rows | backward rows], the layout the model expects;
* each rank keeps the memory of its own rows; a checkpoint stores the global memory (gathered in the
  global row order, :func:`gather_rows`), so a run resumes on any number of ranks that divides the batch;
* the loss is the global masked mean: each rank's sum of target losses is divided by the global number
  of targets (known to every rank: it holds the global batch) and multiplied by the world size, because
  DDP *averages* the gradients over ranks (:func:`global_loss_factor`);
* only rank 0 logs, evaluates and writes; the others follow. A stop signal on any rank stops all of
  them after the same step (:func:`any_rank`).

With dropout 0 a 2-rank run gives the weights of a 1-rank run to float32 round-off
(tests/test_distributed.py). With dropout > 0 each rank draws its own masks, so the runs differ.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..pretraining_data import PLMBatch


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def world_from_env(environ=None) -> World:
    """Read torchrun's variables (absent: one process)."""
    environ = os.environ if environ is None else environ
    try:
        world = World(
            rank=int(environ.get("RANK", 0)),
            world_size=int(environ.get("WORLD_SIZE", 1)),
            local_rank=int(environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as err:
        raise ValueError(f"torchrun environment: expected integer RANK, WORLD_SIZE, LOCAL_RANK, got {err}") from None
    if not (world.world_size >= 1 and 0 <= world.rank < world.world_size):
        raise ValueError(
            f"torchrun environment: expected 0 <= RANK < WORLD_SIZE, got RANK={world.rank}, "
            f"WORLD_SIZE={world.world_size}"
        )
    return world


def start(world: World, device: torch.device) -> torch.device:
    """Join the process group (nccl on CUDA, gloo otherwise) and return this rank's device."""
    if not world.active:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def stop(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def check_batch_size(batch_size: int, world: World, *, halves: int) -> None:
    if batch_size % (world.world_size * halves):
        raise ValueError(
            f"batch_size: expected a multiple of {world.world_size * halves} (world size "
            f"{world.world_size}" + (" x 2 halves with bi_data" if halves == 2 else "") + f"), got {batch_size}"
        )


def _row_index(batch_size: int, world: World, halves: int) -> torch.Tensor:
    """The global rows this rank keeps: its chunk of every half, halves in order."""
    half = batch_size // halves
    chunk = half // world.world_size
    return torch.cat(
        [torch.arange(h * half + world.rank * chunk, h * half + (world.rank + 1) * chunk) for h in range(halves)]
    )


def rows_of(batch: PLMBatch, world: World, *, halves: int) -> PLMBatch:
    """This rank's rows of the global batch ([b, ...] -> [b / world_size, ...] for every field)."""
    if not world.active:
        return batch
    index = _row_index(batch.input_ids.shape[0], world, halves)
    return PLMBatch(**{f.name: getattr(batch, f.name)[index] for f in dataclasses.fields(batch)})


def local_mems(mems: list[torch.Tensor] | None, world: World, *, halves: int) -> list[torch.Tensor] | None:
    """This rank's rows of a global memory (from a checkpoint)."""
    if mems is None or not world.active:
        return mems
    index = _row_index(mems[0].shape[0], world, halves).to(mems[0].device)
    return [m[index] for m in mems]


def gather_rows(mems: list[torch.Tensor] | None, world: World, *, halves: int) -> list[torch.Tensor] | None:
    """The global memory from every rank's rows, in the global row order (a collective: all ranks call it)."""
    if mems is None or not world.active:
        return mems
    out = []
    for m in mems:
        parts = [torch.empty_like(m) for _ in range(world.world_size)]
        dist.all_gather(parts, m.contiguous())
        # every part is [its chunk of half 0 | its chunk of half 1 | ...]: regroup half by half
        chunks = [p.chunk(halves) for p in parts]
        out.append(torch.cat([chunks[r][h] for h in range(halves) for r in range(world.world_size)]))
    return out


def global_loss_factor(local_weights: torch.Tensor, global_weights: torch.Tensor, world: World) -> torch.Tensor:
    """What a rank's masked-mean loss is multiplied by so that DDP's average of the ranks' gradients is
    the gradient of the global masked mean: world_size * (local targets) / (global targets)."""
    return local_weights.sum() * world.world_size / global_weights.sum().clamp_min(1)


def mean_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    """The average of a scalar over the ranks (for logging the global loss)."""
    if not world.active:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world.world_size


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank if it is True on any rank (e.g. a stop signal), so that all stop together.
    device: this rank's device (nccl reduces CUDA tensors only)."""
    if not world.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def wrap(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around the model when there are several ranks (rank 0's weights are
    broadcast to the others at construction)."""
    if not world.active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def seed_dropout(world: World, seed: int, step: int) -> None:
    """Each rank its own dropout masks (the same masks on every rank would repeat across rows)."""
    if world.active:
        torch.manual_seed(seed * 100_003 + step * 1_009 + world.rank + 1)
