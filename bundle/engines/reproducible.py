"""Data order and augmentation that depend only on (seed, epoch, sample), never on history.

A training run that stops at iteration k and is started again must see exactly the batches an
uninterrupted run sees from iteration k on. Ignite restarts the data loader at the beginning of
the epoch when it resumes mid-epoch, and MONAI's random transforms carry sequential RNG state, so
neither is enough alone. Here:

- :class:`ResumableSampler` draws each epoch's permutation from ``(seed, epoch)`` and, when the
  loader is (re)created mid-epoch, starts at the batch the engine is at. It reads the position from
  a callable bound to the engine (``bind``), because ignite creates the loader iterator before
  ``EPOCH_STARTED`` fires. It also shards by rank for multi-GPU runs, and can visit every volume
  ``samples_per_volume`` times per epoch (each visit a different random crop).
- :class:`SeededDataset` receives ``(epoch, draw, index)`` from the sampler and re-seeds the
  dataset's random transforms from ``(seed, epoch, draw)`` before producing the sample, so
  augmentation is identical whatever the worker, the resume point or the number of workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

_MAX_SEED = 2**31 - 1


class ResumableSampler(Sampler):
    """Per-epoch permutation from ``(seed, epoch)``; yields ``(epoch, draw, index)`` keys.

    Args:
        num_samples: dataset length.
        samples_per_volume: visits of each item per epoch (volumes are much larger than a crop).
        batch_size: the loader's batch size (to turn the engine's iteration into a sample offset).
        seed: base seed.
        shuffle: permute each epoch (training) or keep order (evaluation).
        rank, world_size: shard for distributed training (every rank gets the same count; the
            permutation is padded by wrapping, like ``DistributedSampler``).
        drop_last: must match the loader's ``drop_last``.
    """

    def __init__(
        self,
        num_samples: int,
        samples_per_volume: int = 1,
        batch_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("ResumableSampler needs a non-empty dataset (num_samples > 0).")
        self.num_samples = num_samples
        self.samples_per_volume = max(1, int(samples_per_volume))
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self._position: Callable[[], int] = lambda: 0
        self._epoch_length: Callable[[], int | None] = lambda: None

    def bind(self, iteration: Callable[[], int], epoch_length: Callable[[], int | None]) -> None:
        """Read the engine's global iteration and epoch length when an iterator is created."""
        self._position = iteration
        self._epoch_length = epoch_length

    def _per_rank(self) -> int:
        return -(-self.num_samples * self.samples_per_volume // self.world_size)

    def __len__(self) -> int:
        n = self._per_rank()
        if self.drop_last:
            n -= n % self.batch_size
        return n

    def epoch_draws(self, epoch: int) -> list[int]:
        """This rank's draws for ``epoch`` (0-based), before any mid-epoch skip. A draw ``d``
        samples item ``d % num_samples``; draws are unique within an epoch."""
        draws = self.num_samples * self.samples_per_volume
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(draws)
        else:
            order = np.arange(draws)
        total = self._per_rank() * self.world_size
        order = np.resize(order, total)  # wrap-pad so each rank gets the same count
        return order[self.rank :: self.world_size][: len(self)].tolist()

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        iteration = int(self._position())
        epoch_length = self._epoch_length() or max(1, -(-len(self) // self.batch_size))
        epoch, batch_in_epoch = divmod(iteration, epoch_length)
        draws = self.epoch_draws(epoch)[batch_in_epoch * self.batch_size :]
        return iter([(epoch, d, d % self.num_samples) for d in draws])


_SAMPLE_STREAM, _ITERATION_STREAM = 0, 1  # keep augmentation and iteration RNG streams apart


def derived_seed(*keys: int) -> int:
    """A seed that depends only on the non-negative integer ``keys``."""
    return int(np.random.default_rng(list(keys)).integers(_MAX_SEED))


def sample_seed(seed: int, epoch: int, draw: int) -> int:
    """The augmentation seed of one sample: depends only on (seed, epoch, draw)."""
    return derived_seed(seed, _SAMPLE_STREAM, epoch, draw)


class SeededDataset(Dataset):
    """Wrap a MONAI dataset so its random transforms are re-seeded for every ``(epoch, index)``.

    Plain integer indices are accepted too (epoch 0, draw = index), so the wrapper can also serve
    evaluation.
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key):
        epoch, draw, index = key if isinstance(key, tuple) else (0, key, key)
        transform = getattr(self.dataset, "transform", None)
        if transform is not None and hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=sample_seed(self.seed, epoch, draw))
        return self.dataset[index]


def iteration_generator(seed: int, iteration: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The RNG of one training iteration (timesteps, noise, posterior samples)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derived_seed(seed, _ITERATION_STREAM, iteration))
    return generator
