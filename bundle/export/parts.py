"""The three networks of :class:`~bundle.inference.CTEnhancer` as plain tensor-in, tensor-out modules.

Each part is exactly what ``CTEnhancer.enhance`` computes on a volume that is one slab (one
encode tile, one U-Net window, one decode tile: the tiling then reduces to the network itself,
with blend weights of 1):

- :class:`EncodePart`: window channels ``(1, C, S, H, W)`` -> the scaled latent mean
  ``autoencoder.encode(channels) * scale_factor``: the DDIM condition, and the latent scale the
  U-Net works in.
- :class:`UNetStep`: ``(z_t, t, condition)`` -> the U-Net's prediction (v, epsilon or x0 as the
  schedule says); the condition is concatenated inside the U-Net, as ``TiledDenoiser`` calls it.
  ``t`` is a ``(1,)`` int64 tensor.
- :class:`DecodePart`: scaled latent (and, with a fidelity path at a non-zero weight, the source
  channels) -> window channels: ``autoencoder.decode(latent / scale_factor, source, weight)``.
  The weight is a constant of the exported graph (the VAE skips the path in Python when it is 0,
  which a trace cannot keep as a switch).

HU <-> channels, the DDIM update, the residual output and the low-frequency rule stay outside:
they are a few lines of arithmetic that ``export.json`` describes and ``scripts/run_exported.py``
implements.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "PARTS",
    "DecodePart",
    "EncodePart",
    "UNetStep",
    "check_slab",
    "default_slab",
    "example_inputs",
    "input_names",
    "make_parts",
]

PARTS = ("encode", "unet", "decode")


class EncodePart(nn.Module):
    """Window channels -> scaled latent mean (the DDIM condition)."""

    def __init__(self, enhancer) -> None:
        super().__init__()
        self.autoencoder = enhancer.autoencoder
        self.register_buffer("scale_factor", enhancer.scale_factor.detach().clone())

    def forward(self, channels: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(channels) * self.scale_factor


class UNetStep(nn.Module):
    """One U-Net evaluation of the sampler: ``unet(z_t, t, condition)``."""

    def __init__(self, enhancer) -> None:
        super().__init__()
        self.unet = enhancer.unet

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.unet(z_t, t, condition)


class DecodePart(nn.Module):
    """Scaled latent (+ source channels for a fidelity path) -> window channels."""

    def __init__(self, enhancer, fidelity_weight: float) -> None:
        super().__init__()
        self.autoencoder = enhancer.autoencoder
        self.register_buffer("scale_factor", enhancer.scale_factor.detach().clone())
        self.fidelity_weight = float(fidelity_weight)
        self.takes_source = enhancer.has_fidelity_path and self.fidelity_weight != 0

    def forward(self, latent: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        z = latent / self.scale_factor
        if not self.takes_source:
            return self.autoencoder.decode(z)
        return self.autoencoder.decode(z, source=source, fidelity_weight=self.fidelity_weight)


def make_parts(enhancer, fidelity_weight: float | None = None) -> dict[str, nn.Module]:
    """``{"encode", "unet", "decode"}`` modules sharing the enhancer's weights, in eval mode."""
    weight = enhancer.fidelity_weight if fidelity_weight is None else float(fidelity_weight)
    parts = {"encode": EncodePart(enhancer), "unet": UNetStep(enhancer), "decode": DecodePart(enhancer, weight)}
    return {name: part.eval() for name, part in parts.items()}


def default_slab(enhancer) -> tuple[int, int, int]:
    """The U-Net's training window in image voxels: ``latent_window`` slices x (``latent_window``
    x VAE factor) in-plane. A volume of this size is one window for every tiled stage."""
    f = enhancer.vae_factor
    s, h, w = enhancer.latent_window
    return int(s), int(h) * f, int(w) * f


def check_slab(enhancer, slab) -> tuple[int, int, int]:
    """The slab as ints, or a ValueError saying which size the networks cannot take."""
    slab = tuple(int(v) for v in slab)
    if len(slab) != 3 or min(slab) < 1:
        raise ValueError(f"slab must be three positive sizes (slices, rows, columns), got {slab}.")
    # the VAE divides in-plane by its factor, the U-Net again by its own on the latent
    multiple = enhancer.vae_factor * enhancer.unet.downsample_factor
    if slab[1] % multiple or slab[2] % multiple:
        raise ValueError(
            f"slab {slab}: rows and columns must be multiples of {multiple} (VAE factor {enhancer.vae_factor} "
            f"x U-Net factor {enhancer.unet.downsample_factor}); the default is {default_slab(enhancer)}."
        )
    return slab


def input_names(parts: dict[str, nn.Module]) -> dict[str, tuple[str, ...]]:
    """The inputs of each part, in call order (the decoder takes the source only with a live path)."""
    decode = ("latent", "source") if parts["decode"].takes_source else ("latent",)
    return {"encode": ("channels",), "unet": ("z_t", "t", "condition"), "decode": decode}


def example_inputs(enhancer, parts, slab, seed: int = 0, device="cpu", timestep: int = 999) -> dict[str, tuple]:
    """Random inputs of each part at ``slab`` (in their real ranges: channels in [-1, 1], latents
    ~ N(0, 1)); a different ``seed``/``timestep`` gives the inputs a verification runs on."""
    g = torch.Generator().manual_seed(seed)
    s, h, w = slab
    f = enhancer.vae_factor
    c = enhancer.autoencoder.config["in_channels"]
    lc = enhancer.autoencoder.config["latent_channels"]
    channels = torch.rand((1, c, s, h, w), generator=g) * 2 - 1
    latent = torch.randn((1, lc, s, h // f, w // f), generator=g)
    z_t = torch.randn(latent.shape, generator=g)
    t = torch.tensor([int(timestep)], dtype=torch.long)
    inputs = {"encode": (channels,), "unet": (z_t, t, latent), "decode": (latent, channels)}
    names = input_names(parts)
    return {name: tuple(x.to(device) for x in args[: len(names[name])]) for name, args in inputs.items()}
