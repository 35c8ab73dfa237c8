"""Fidelity path: multi-scale features of the SOURCE image enter the VAE decoder through gated skips.

Everything the latent model outputs passes through the VAE decoder, and an 8x in-plane
bottleneck loses the fine anatomy a CT reader looks for. Restoration work on latent diffusion
(feature wrapping from the degraded input into the decoder, as in StableSR) gives the decoder
what the latent cannot carry: features of the input image at every resolution. Here:

- :class:`SourcePyramid` encodes the source slab (the HU-window channels, ``(B, C, T, H, W)``)
  into one feature map per decoder level, finest first: level ``k`` has ``H / 2**k`` rows.
- :class:`GatedSkip` merges one level into the decoder's feature map ``h`` of that level::

      h + fidelity_weight * gate(fuse(concat(h, source_features)))

  ``gate`` is a 1x1x1 convolution that is **zero at initialisation** (a "zero convolution"): a
  fresh path leaves the decoder exactly the spec's, and training opens it as far as it helps.
  A matrix rather than one scalar per channel: the gradient of a zero-initialised matrix is not
  zero (it is the outer product of the incoming gradient and the fused features), and each of
  its entries moves at the optimiser's rate, so the gates open within a few hundred steps. Scalar
  gates measured on the demo opened to only ~0.07 in 240 Adam steps at lr 1e-3 (docs/fidelity.md).
- :class:`OutputSkip` is the finest scale of all, the source image itself, merged into the
  decoder's output ``y`` (window channels) by a small convolution stack without normalisation
  whose zero-initialised ``gate`` gives a per-voxel blend ``m`` and a correction ``r``::

      m, r = gate(SiLU(conv(SiLU(conv(concat(y, source))))))
      y + fidelity_weight * (m * (source - y) + r)

  GroupNorm in the feature skips normalises each slab's features, so absolute HU values can only
  come back through them slowly; this skip sees the source's values themselves. ``m`` near 1
  keeps the source (edges, fine detail the latent lost), ``m`` near 0 keeps the decoder (flat
  tissue, where the source is mostly noise): an edge-aware blend learned from the pairs, which
  a few hundred steps already learn; ``r`` corrects what neither has.

  ``start="source"`` initialises the gate's bias so that ``m = 1``: the fresh model returns its
  input exactly (do no harm), and training moves each voxel away from the source only as far as
  the decoder's estimate lowers the loss there. The decoder itself keeps learning from the plain
  reconstruction terms of the VAE loss, which never pass through this skip, so the blend has
  something better than the source to move towards. ``start="decoder"`` (``m = 0``) starts
  from the decoder's output instead.
- :class:`FidelityPath` holds them and hands :class:`~bundle.networks.vae.VAEDecoder` a function
  that applies the skips after each of its up stages and after its output convolution.

``highpass_sigma > 0`` splits the work by frequency (a lever for the latent, docs/quality.md): the
path sees only the source's in-plane high band ``source - G_sigma * source``
(:func:`bundle.networks.frequency.inplane_lowpass`), and the output skip blends towards
``G_sigma * y + (source - G_sigma * source)``, the decoder's own low band plus the source's high
band. The source's low band (where photon-starvation shading and streaks lie) then reaches the
output only through the latent, which the diffusion model can correct; ``sigma = 3`` splits at the
latent grid's Nyquist frequency. 0 (the default) feeds the whole source, as before.

``fidelity_weight`` is an inference-time knob: 1 is what training used, 0 (or no source) is the
spec decoder bit for bit (the path is not even evaluated), values in between trade the source's
fidelity for the detail the latent model generates.

The path is trained where its inputs exist together: in VAE pre-training the decoder learns to
reconstruct the TARGET from the target's latent plus the source's features (and again in phase
2 of the diffusion recipe); see ``docs/fidelity.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from bundle.networks.blocks import (
    NORM_EPS,
    Downsample3D,
    ResBlock3D,
    autocast_off,
    check_divisible,
    checkpointed,
    zero_module,
)
from bundle.networks.frequency import inplane_lowpass

__all__ = ["FidelityPath", "GatedSkip", "OutputSkip", "SourcePyramid"]


class SourcePyramid(nn.Module):
    """Source slab -> one feature map per level, finest first.

    Level 0: ``conv_in`` (k3) then a ResBlock3D at full resolution; each further level: a
    DownsampleBlock of the VAE (Conv3d (3,4,4) stride (1,2,2) + GroupNorm + SiLU) then a ResBlock3D.

    Args:
        in_channels: channels of the source slab (the HU windows).
        channels: widths of the levels, finest first; ``len(channels)`` levels.
        norm_num_groups, norm_eps: GroupNorm settings (the VAE's).
        use_checkpoint: activation checkpointing of each block while training.

    Shapes: ``(B, in_channels, T, H, W) -> [(B, channels[k], T, H / 2**k, W / 2**k) for k]``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        norm_num_groups: int = 32,
        norm_eps: float = NORM_EPS,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        for i, c in enumerate(channels):
            check_divisible(c, norm_num_groups, f"fidelity channels[{i}]")
        self.use_checkpoint = use_checkpoint
        self.conv_in = nn.Conv3d(in_channels, channels[0], kernel_size=3, padding=1)
        self.levels = nn.ModuleList()
        for k, c in enumerate(channels):
            down = (
                nn.Identity() if k == 0
                else Downsample3D(channels[k - 1], c, (3, 4, 4), norm_num_groups, norm_eps)
            )
            self.levels.append(nn.Sequential(down, ResBlock3D(c, c, norm_num_groups, norm_eps)))

    def forward(self, source: torch.Tensor) -> list[torch.Tensor]:
        enabled = self.use_checkpoint and self.training
        x = self.conv_in(source)
        features = []
        for level in self.levels:
            x = checkpointed(level, x, enabled=enabled)
            features.append(x)
        return features


class GatedSkip(nn.Module):
    """One gated skip: ``h + weight * gate(fuse(concat(h, f)))`` (see the module docstring).

    ``fuse`` is Conv3d k3 (decoder + source channels -> decoder channels), GroupNorm, SiLU: it
    sees both the decoder's current estimate and the source, so it can pass source detail where
    the two agree and hold back source noise where they do not. ``gate`` is a zero-initialised
    Conv3d k1 (decoder channels -> decoder channels).

    Args:
        channels: decoder channels at this level.
        source_channels: source-feature channels at this level.
        norm_num_groups, norm_eps: GroupNorm settings.
    """

    def __init__(self, channels: int, source_channels: int, norm_num_groups: int = 32, norm_eps: float = NORM_EPS):
        super().__init__()
        self.fuse = nn.Sequential(
            nn.Conv3d(channels + source_channels, channels, kernel_size=3, padding=1),
            nn.GroupNorm(norm_num_groups, channels, eps=norm_eps),
            nn.SiLU(),
        )
        # zero: a fresh path adds nothing, and the decoder starts as the spec's
        self.gate = zero_module(nn.Conv3d(channels, channels, kernel_size=1))

    def forward(self, h: torch.Tensor, source_features: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        delta = self.gate(self.fuse(torch.cat([h, source_features.to(h.dtype)], dim=1)))
        return h + weight * delta


class OutputSkip(nn.Module):
    """The source image into the decoder's output: ``y + weight * (m * (source - y) + r)``.

    ``body`` is Conv3d k3 (2 x image channels -> hidden), SiLU, Conv3d k3 (hidden -> hidden),
    SiLU; ``gate`` a zero-initialised Conv3d k1 (hidden -> 2 x image channels) whose outputs are
    the blend ``m`` and the correction ``r``, per voxel and channel. No normalisation: the values
    of the source matter here, not only its patterns.

    Args:
        channels: image channels (the HU windows).
        hidden: width of the convolution stack.
        start: ``"decoder"`` (``m = 0`` at initialisation: the output starts as the decoder's) or
            ``"source"`` (``m = 1``: the output starts as the source itself, the identity).
    """

    STARTS = ("decoder", "source")

    def __init__(self, channels: int, hidden: int, start: str = "decoder") -> None:
        super().__init__()
        if start not in self.STARTS:
            raise ValueError(f"fidelity start must be one of {self.STARTS}, got {start!r}")
        self.body = nn.Sequential(
            nn.Conv3d(2 * channels, hidden, kernel_size=3, padding=1),
            nn.SiLU(),
            nn.Conv3d(hidden, hidden, kernel_size=3, padding=1),
            nn.SiLU(),
        )
        self.gate = zero_module(nn.Conv3d(hidden, 2 * channels, kernel_size=1))
        if start == "source":  # the blend's bias: m = 1 everywhere, the output is the source
            with torch.no_grad():
                self.gate.bias[:channels] = 1.0

    def forward(self, y: torch.Tensor, source: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        # the decoder's output in HU-window units: float32 even under autocast (blocks.in_float32)
        with autocast_off(y.device):
            y, source = y.float(), source.float()
            blend, correction = self.gate(self.body(torch.cat([y, source], dim=1))).chunk(2, dim=1)
            return y + weight * (blend * (source - y) + correction)


class FidelityPath(nn.Module):
    """Source pyramid + one :class:`GatedSkip` per level, finest first, + an :class:`OutputSkip`.

    Args:
        in_channels: channels of the source slab (the HU windows).
        decoder_channels: the decoder's widths per level, finest first (the VAE's ``channels``);
            level ``k`` is merged after the up stage that reaches ``H / 2**k``.
        channels: source-feature widths per level, finest first; their number is the number of
            levels that get a skip (at most ``len(decoder_channels) - 1``: the coarsest level is
            the latent's, which the diffusion model already conditions on).
        norm_num_groups, norm_eps, use_checkpoint: as the VAE's.
        start: where the output skip starts (:class:`OutputSkip`): ``"decoder"`` or ``"source"``.
        highpass_sigma: 0 (the whole source), or the in-plane Gaussian sigma (pixels) below which
            the source's band is withheld from the path (see the module docstring).

    The output skip's hidden width is ``channels[0]``; the output has ``in_channels`` channels
    (the VAE reconstructs the windows it encodes).

    Use::

        recon = vae.decoder(z, skip=path.skip(source_channels, weight))
    """

    def __init__(
        self,
        in_channels: int,
        decoder_channels: Sequence[int],
        channels: Sequence[int],
        norm_num_groups: int = 32,
        norm_eps: float = NORM_EPS,
        use_checkpoint: bool = False,
        start: str = "decoder",
        highpass_sigma: float = 0.0,
    ) -> None:
        super().__init__()
        if highpass_sigma < 0:
            raise ValueError(f"fidelity highpass_sigma must be >= 0 pixels, got {highpass_sigma}.")
        self.highpass_sigma = float(highpass_sigma)
        channels = [int(c) for c in channels]
        decoder_channels = [int(c) for c in decoder_channels]
        if not 1 <= len(channels) <= len(decoder_channels) - 1:
            raise ValueError(
                f"fidelity channels {channels}: need 1 to {len(decoder_channels) - 1} levels "
                f"(the VAE has {len(decoder_channels)} levels, the coarsest is the latent's)."
            )
        self.pyramid = SourcePyramid(in_channels, channels, norm_num_groups, norm_eps, use_checkpoint)
        self.skips = nn.ModuleList(
            GatedSkip(decoder_channels[k], c, norm_num_groups, norm_eps) for k, c in enumerate(channels)
        )
        self.output_skip = OutputSkip(in_channels, channels[0], start)

    @property
    def num_levels(self) -> int:
        return len(self.skips)

    def source_features(self, source: torch.Tensor) -> list[torch.Tensor]:
        """The source slab's features, finest first."""
        return self.pyramid(source)

    def skip(self, source: torch.Tensor, weight: float = 1.0) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """The decoder hook for one source slab ``(B, in_channels, T, H, W)``: ``skip(level, h)``
        merges the source's features of ``level`` into ``h`` (levels without a skip pass ``h``
        through); level ``-1`` is the decoder's output, merged with the source image itself (with
        ``highpass_sigma``: with the decoder's low band plus the source's high band)."""
        if self.highpass_sigma > 0:
            source = source - inplane_lowpass(source, self.highpass_sigma)
        features = self.source_features(source)

        def merge(level: int, h: torch.Tensor) -> torch.Tensor:
            if level == -1:
                reference = source
            elif level >= len(self.skips):
                return h
            else:
                reference = features[level]
            if reference.shape[2:] != h.shape[2:]:
                raise ValueError(
                    f"fidelity level {level}: source {tuple(reference.shape)} does not match "
                    f"the decoder's {tuple(h.shape)} (source and latent must cover the same slab)."
                )
            if level == -1:
                if self.highpass_sigma > 0:
                    return self.output_skip(h, inplane_lowpass(h, self.highpass_sigma) + source, weight)
                return self.output_skip(h, source, weight)
            return self.skips[level](h, reference, weight)

        return merge
