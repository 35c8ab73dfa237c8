"""Multi-process training on ``torch.distributed``: one process per device, one global batch.

``configs/multi_gpu_train.yaml`` joins the process group that ``torchrun`` describes
(:func:`init_process_group`) and sets ``distributed: true`` on both stages. A stage then:

- wraps what trains in :class:`torch.nn.parallel.DistributedDataParallel`. The stages call
  several methods of their networks per iteration (encode, sample, decode twice; the U-Net), so
  DDP wraps a :class:`StageForward` whose ``forward`` is the stage's whole loss: one DDP forward
  and one backward per iteration, which is what DDP's gradient hooks expect. The wrapper is
  rebuilt when the trainable set changes (phase 2 adds the VAE);
- shards the data by rank (:class:`~bundle.engines.reproducible.ResumableSampler`), and draws
  every random tensor of an iteration for the GLOBAL batch and keeps this rank's rows
  (:func:`rank_rows`): rank ``r`` holds the global batch's samples ``r, r + W, r + 2W, ...``
  (the sampler's interleaving), so N processes of batch ``B`` see the same samples, noise and
  timesteps as one process of batch ``N * B`` and end with the same weights up to the order of
  floating-point sums;
- writes checkpoints, the VAE file and ``model.pt`` on rank 0 only, the other ranks waiting at a
  barrier; every rank resumes from the same newest checkpoint.

Backends: NCCL on GPUs, gloo on CPU (tests, and machines without GPUs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "StageForward",
    "barrier",
    "check_in_sync",
    "destroy_process_group",
    "init_process_group",
    "is_distributed",
    "is_main_process",
    "local_device",
    "rank",
    "rank_rows",
    "same_on_all_ranks",
    "world_size",
]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def init_process_group(backend: str | None = None, timeout_minutes: float = 60.0) -> torch.device:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...)
    and return this process's device: ``cuda:LOCAL_RANK`` with NCCL where GPUs exist, else the
    CPU with gloo. Idempotent; without ``torchrun``'s variables it is an error that says so.

    ``timeout_minutes``: how long a collective may wait. Rank 0 validates alone while the others
    wait in the next step's all-reduce, so it must exceed one validation (NCCL's default is 10).
    """
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing and not is_distributed():
        raise RuntimeError(
            f"multi-process training needs the variables torchrun sets ({', '.join(missing)} missing): "
            "launch with torchrun --nproc_per_node N -m monai.bundle run training --config_file "
            "\"['configs/train.yaml','configs/multi_gpu_train.yaml']\""
        )
    device = local_device()
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not is_distributed():
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
        logger.info("rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return device


def local_device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` where GPUs exist, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def destroy_process_group() -> None:
    """Leave the process group after every rank got here (rank 0 may still be writing files)."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def same_on_all_ranks(value, what: str) -> None:
    """Raise on every rank if ``value`` (a picklable fact, e.g. the newest checkpoint's name) is
    not the same on all ranks: resume and skip decisions read files, so every process must see
    the same ``output_dir`` (shared storage on several machines)."""
    if not is_distributed():
        return
    values: list = [None] * world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise RuntimeError(
            f"the ranks see different {what}: {values}. Every process must see the same output_dir "
            "(on several machines: a shared filesystem)."
        )


def rank_rows(global_tensor: torch.Tensor, blocks: int = 1) -> torch.Tensor:
    """This rank's rows of a tensor drawn for the global batch.

    ``global_tensor`` has ``blocks * W * B`` rows: ``blocks`` consecutive blocks of the global
    batch (e.g. 2 for ``cat([source, target])``). Rank ``r`` keeps rows ``r, r + W, ...`` of each
    block, the samples the sampler gave it. One process: the tensor itself.
    """
    size = world_size()
    if size == 1:
        return global_tensor
    rows = global_tensor.shape[0]
    if rows % (blocks * size):
        raise ValueError(f"{rows} rows are not {blocks} block(s) of a global batch over {size} ranks.")
    per_block = global_tensor.reshape(blocks, rows // blocks, *global_tensor.shape[1:])
    return per_block[:, rank()::size].reshape(-1, *global_tensor.shape[1:])


def randn_rows(shape, generator: torch.Generator, device, dtype=torch.float32, blocks: int = 1) -> torch.Tensor:
    """``torch.randn`` of this rank's ``shape`` drawn as :func:`rank_rows` of the global batch's."""
    global_shape = (shape[0] * world_size(), *shape[1:])
    noise = torch.randn(global_shape, generator=generator, device=generator.device, dtype=dtype)
    return rank_rows(noise, blocks).to(device)


class StageForward(nn.Module):
    """One stage's loss as a module's ``forward``, so that DDP can wrap it.

    ``modules`` are what trains (registered here so DDP finds their parameters); ``loss`` is the
    stage's ``compute_loss(batch) -> (loss, terms)``, which uses those same modules.
    """

    def __init__(self, modules: dict[str, nn.Module], loss: Callable) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(modules)
        self._loss = loss

    def forward(self, batch: dict):
        return self._loss(batch)


def wrap(modules: dict[str, nn.Module], loss: Callable, device: torch.device) -> nn.parallel.DistributedDataParallel:
    """DDP over ``modules`` with ``loss`` as its forward (parameters broadcast from rank 0)."""
    ids = [device.index] if device.type == "cuda" else None
    # find_unused_parameters: the VAE's posterior variance and the fidelity path's coarser gates
    # may get no gradient in an iteration (detached target latent; a weight of 0)
    return nn.parallel.DistributedDataParallel(
        StageForward(modules, loss), device_ids=ids, find_unused_parameters=True, broadcast_buffers=False
    )


def check_in_sync(modules: dict[str, nn.Module]) -> None:
    """Raise if any parameter differs between ranks (element-wise max == min over ranks)."""
    if not is_distributed():
        return
    for name, module in modules.items():
        worst = 0.0
        for parameter in module.parameters():  # one tensor at a time: no copy of the whole model
            low, high = parameter.detach().clone(), parameter.detach().clone()
            dist.all_reduce(low, op=dist.ReduceOp.MIN)
            dist.all_reduce(high, op=dist.ReduceOp.MAX)
            worst = max(worst, float((high - low).abs().max()))
        if worst > 0:
            raise RuntimeError(f"the {name} weights differ between ranks (max difference {worst:.3g}).")
    logger.info("weights identical on all %d ranks: %s", world_size(), ", ".join(modules))


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over ranks (float64 on the CPU with gloo; one process: itself)."""
    if not is_distributed():
        return values
    out = values.clone()
    if dist.get_backend() == "nccl":
        out = out.cuda()
    dist.all_reduce(out)
    return out.to(values.device)
