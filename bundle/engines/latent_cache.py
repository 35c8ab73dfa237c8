"""Phase 1 on latents encoded once: the frozen VAE's moments of one epoch's crops (a bank).

In phase 1 the VAE is frozen, yet the plain iteration encodes its source and target crops again
every time, which costs more than the rest of the iteration (2-5x at the demo size on a CPU).
With ``phase1_latent_cache`` the diffusion trainer encodes this rank's crops of epoch 0 once
(:class:`LatentBank`) and every phase-1 epoch visits the bank in a new ``(seed, epoch)`` order
through a :class:`~bundle.engines.reproducible.ResumableSampler` of the image loader's batch size:
the epoch has the image loader's length and a mid-epoch resume starts at the batch it stopped at.
The crops depend only on ``(seed, 0, draw)``, so the bank rebuilt on a resume into phase 1 is the
same.

The trade: phase 1 sees one epoch's crops, with their augmentations, ``phase1_epochs`` times
instead of new crops every epoch. Noise, timesteps and the posterior sample are still drawn per
iteration (``iteration_generator``), so each visit of a crop trains on a new latent sample and
noise. The VAE stage and phase 2 (where the encoder trains: its latents cannot be cached) are
unchanged. With one process and no ``drop_last`` the bank's first epoch is the image loader's
epoch 0 (same crops, order and batches), so the first cached epoch is the uncached one bit for
bit. Several processes: each rank encodes its own shard and permutes it alone, so N ranks no
longer see what one process of N times the batch sees (the weights still stay in sync).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from bundle.engines.reproducible import ResumableSampler
from bundle.utils.precision import autocast

__all__ = ["MOMENTS", "LatentBank", "encode_crops"]

MOMENTS = ("source_mean", "source_logvar", "target_mean", "target_logvar")


def encode_crops(vae, source: torch.Tensor, target: torch.Tensor, train: bool = False) -> dict[str, torch.Tensor]:
    """The VAE's moments of a batch of crops, source and target in one ``encode_moments`` call.

    ``train=False`` (phase 1 and the bank): eval mode, no gradient. ``train=True`` (phase 2):
    train mode, the gradient reaches the encoder. The diffusion iteration calls this too, so the
    bank holds exactly what the uncached iteration computes.
    """
    vae.train(train)
    with torch.set_grad_enabled(train):
        mean, logvar = vae.encode_moments(torch.cat([source, target]))
    source_mean, target_mean = mean.chunk(2)
    source_logvar, target_logvar = logvar.chunk(2)
    return {"source_mean": source_mean, "source_logvar": source_logvar,
            "target_mean": target_mean, "target_logvar": target_logvar}


class LatentBank(Dataset):
    """The frozen VAE's moments of this rank's crops of epoch 0, one item per crop.

    Items are dicts of the four :data:`MOMENTS` (no batch axis), in the order of their draws; a
    key is an index or the sampler's ``(epoch, draw, index)``. Built by :meth:`build`; iterated
    by :meth:`loader`.
    """

    def __init__(self, moments: dict[str, torch.Tensor], draws: list[int], batch_size: int = 1,
                 seed: int = 0, drop_last: bool = False) -> None:
        self.moments = moments
        self.draws = draws
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last

    def __len__(self) -> int:
        return len(self.draws)

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        index = key[2] if isinstance(key, tuple) else key
        return {name: values[index] for name, values in self.moments.items()}

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.moments.values())

    @classmethod
    def build(cls, vae, loader: DataLoader, device, precision: str = "fp32") -> LatentBank:
        """Encode ``loader``'s crops of epoch 0 for this rank (its sampler's shard), in the
        loader's batches (the uncached iteration's), under the training precision's autocast;
        kept on the CPU."""
        sampler = getattr(loader, "sampler", None)
        if not isinstance(sampler, ResumableSampler):
            raise TypeError("phase1_latent_cache needs a training loader with a ResumableSampler "
                            f"(configs/train.yaml's train_loader), not {type(sampler).__name__}.")
        draws = sampler.epoch_draws(0)
        keys = [(0, d, d % sampler.num_samples) for d in draws]  # the SeededDataset keys of epoch 0
        crops = DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=keys,
                           num_workers=loader.num_workers, collate_fn=loader.collate_fn)
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in MOMENTS}
        for batch in crops:
            with autocast(device, precision):
                moments = encode_crops(vae, batch["source"].to(device), batch["target"].to(device))
            for name in MOMENTS:
                parts[name].append(moments[name].cpu())
        # sorted by draw: with one process the bank's sampler then orders epoch 0 as the loader did
        order = sorted(range(len(draws)), key=draws.__getitem__)
        moments = {name: torch.cat(values)[order] for name, values in parts.items()}
        return cls(moments, [draws[i] for i in order], batch_size=loader.batch_size,
                   seed=sampler.seed, drop_last=sampler.drop_last)

    def loader(self) -> DataLoader:
        """Batches of the bank in a ``(seed, epoch)`` permutation per epoch; bind its sampler to
        the engine (``loader.sampler.bind``) for mid-epoch resume."""
        sampler = ResumableSampler(len(self), batch_size=self.batch_size, seed=self.seed, drop_last=self.drop_last)
        return DataLoader(self, batch_size=self.batch_size, sampler=sampler, drop_last=self.drop_last)
