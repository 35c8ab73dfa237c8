"""3D VAE of the specification: 8x in-plane compression, no compression along the slice axis.

A slab ``(B, 3, T, H, W)`` (three HU windows of ``T`` slices) becomes a latent
``(B, latent_channels, T, H / 8, W / 8)``; the slice axis keeps all ``T`` slices so each latent
frame stays aligned with its CT slice.

Layout with the default (specification) arguments, channels ``(128, 256, 512, 512)``:

- Encoder: ``conv_in`` 3->128 (k3); three ``down_blocks``, each 2 :class:`ResBlock3D` then a
  DownsampleBlock (Conv3d kernel (3,4,4), stride (1,2,2), padding 1, + GroupNorm + SiLU),
  128->256->512->512; 2 middle ResBlock3D; ``conv_out`` (k1) to ``2 * latent_channels`` moments
  (mean and log-variance stacked on channels; the specification's tables show the 4-channel
  latent taken from them).
- Decoder: ``conv_in`` 4->512 (k3); 2 middle ResBlock3D; three ``up_blocks``, each an UpsampleBlock
  (ConvTranspose3d kernel (3,4,4), stride (1,2,2), padding 1, + GroupNorm + SiLU; 512->512,
  512->256, 256->128) then 2 ResBlock3D; ``conv_out`` 128->3 (k3), linear output.

Parameters (measured, see tests/networks/test_spec_shapes.py): encoder 85,953,032 and decoder
86,003,459, both "86M" as the specification says.

Initialisation is PyTorch's default: every residual branch of this VAE ends in a GroupNorm, which
rescales whatever the convolution produces, so zero-initialising it would not make the branch an
identity the way it does in the U-Net.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from bundle.networks.blocks import (
    NORM_EPS,
    Downsample3D,
    ResBlock3D,
    Upsample3D,
    check_divisible,
    checkpointed,
    in_float32,
)
from bundle.networks.fidelity import FidelityPath

__all__ = ["VideoVAE", "VAEEncoder", "VAEDecoder", "VAELevel", "kl_divergence"]

# exp(20) ~ 5e8 and exp(-30) ~ 1e-13: wide enough never to bind for a trained model, narrow enough
# that exp(logvar) and the KL cannot overflow in float16/bfloat16 early in training.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL divergence of ``N(mean, exp(logvar))`` from ``N(0, 1)``, averaged over every element.

    ``0.5 * (mean**2 + exp(logvar) - 1 - logvar)`` is the KL of each latent element; this returns
    its **mean over all elements** (batch, channels, slices, rows, columns), not the per-sample sum
    over latent dimensions that some references use. The value therefore does not grow with the
    slab or the batch size, and a KL weight tuned with one latent size carries over to another;
    multiply by ``mean[0].numel()`` to get the per-sample sum.

    Args:
        mean: latent means, any shape.
        logvar: latent log-variances, the same shape as ``mean``.

    Returns:
        scalar tensor (float32 or wider even when the inputs are half precision).
    """
    if mean.shape != logvar.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} must have the same shape.")
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * torch.mean(mean.pow(2) + torch.exp(logvar) - 1.0 - logvar)


def _check_slab(x: torch.Tensor, channels: int, name: str) -> None:
    if x.dim() != 5:
        raise ValueError(f"{name} must be a 5D slab (B, C, T, H, W), got shape {tuple(x.shape)}.")
    if x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels, got shape {tuple(x.shape)}.")


class VAELevel(nn.Module):
    """One resolution level of the VAE: ResBlock3D's and an in-plane resample.

    ``direction="down"`` (encoder): ``num_res_blocks`` ResBlock3D at ``in_channels``, then a
    DownsampleBlock ``in_channels -> out_channels``. ``direction="up"`` (decoder): an UpsampleBlock
    ``in_channels -> out_channels``, then ``num_res_blocks`` ResBlock3D at ``out_channels``. This is
    the order of the specification in both cases.

    Submodules: ``res_blocks`` (ModuleList), ``resample``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_res_blocks: int,
        norm_num_groups: int,
        direction: str,
        norm_eps: float = NORM_EPS,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if direction not in ("down", "up"):
            raise ValueError(f"direction must be 'down' or 'up', got {direction!r}.")
        self.direction = direction
        self.use_checkpoint = use_checkpoint
        res_channels = in_channels if direction == "down" else out_channels
        self.res_blocks = nn.ModuleList(
            ResBlock3D(res_channels, res_channels, norm_num_groups, norm_eps) for _ in range(num_res_blocks)
        )
        if direction == "down":
            self.resample = Downsample3D(in_channels, out_channels, (3, 4, 4), norm_num_groups, norm_eps)
        else:
            self.resample = Upsample3D(in_channels, out_channels, "transpose", norm_num_groups, norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enabled = self.use_checkpoint and self.training
        if self.direction == "up":
            x = checkpointed(self.resample, x, enabled=enabled)
        for block in self.res_blocks:
            x = checkpointed(block, x, enabled=enabled)
        if self.direction == "down":
            x = checkpointed(self.resample, x, enabled=enabled)
        return x


def _validate_vae_args(channels: Sequence[int], num_res_blocks: int, num_mid_blocks: int, norm_num_groups: int) -> None:
    if len(channels) == 0:
        raise ValueError("channels must list at least one width.")
    for i, ch in enumerate(channels):
        check_divisible(int(ch), norm_num_groups, f"VAE channels[{i}]")
    if num_res_blocks < 0 or num_mid_blocks < 0:
        raise ValueError(f"num_res_blocks and num_mid_blocks must be >= 0, got {num_res_blocks}, {num_mid_blocks}.")


class VAEEncoder(nn.Module):
    """Encoder: slab ``(B, in_channels, T, H, W)`` -> moments ``(B, 2 * latent_channels, T, H/f, W/f)``.

    ``f = 2 ** (len(channels) - 1)``; ``H`` and ``W`` must be multiples of ``f``. The first
    ``latent_channels`` output channels are the mean, the rest the (unclamped) log-variance; use
    :meth:`VideoVAE.encode_moments` to split and clamp them.

    Args: see :class:`VideoVAE`.

    Submodules: ``conv_in``, ``down_blocks`` (ModuleList of :class:`VAELevel`), ``mid_blocks``
    (ModuleList of :class:`ResBlock3D`), ``conv_out``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 4,
        channels: Sequence[int] = (128, 256, 512, 512),
        num_res_blocks: int = 2,
        num_mid_blocks: int = 2,
        norm_num_groups: int = 32,
        norm_eps: float = NORM_EPS,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        _validate_vae_args(channels, num_res_blocks, num_mid_blocks, norm_num_groups)
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.downsample_factor = 2 ** (len(channels) - 1)
        self.use_checkpoint = use_checkpoint
        self.conv_in = nn.Conv3d(in_channels, channels[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(
            VAELevel(c_in, c_out, num_res_blocks, norm_num_groups, "down", norm_eps, use_checkpoint)
            for c_in, c_out in zip(channels[:-1], channels[1:])
        )
        self.mid_blocks = nn.ModuleList(
            ResBlock3D(channels[-1], channels[-1], norm_num_groups, norm_eps) for _ in range(num_mid_blocks)
        )
        self.conv_out = nn.Conv3d(channels[-1], 2 * latent_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_slab(x, self.in_channels, "VAE encoder input")
        f = self.downsample_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(
                f"VAE encoder input in-plane size {tuple(x.shape[-2:])} must be divisible by the "
                f"downsample factor {f} (input shape {tuple(x.shape)}); pad or crop the slab."
            )
        enabled = self.use_checkpoint and self.training
        x = self.conv_in(x)
        for stage in self.down_blocks:
            x = stage(x)
        for block in self.mid_blocks:
            x = checkpointed(block, x, enabled=enabled)
        return self.conv_out(x)


class VAEDecoder(nn.Module):
    """Decoder: latent ``(B, latent_channels, T, h, w)`` -> slab ``(B, out_channels, T, f h, f w)``.

    Args: see :class:`VideoVAE`.

    Submodules: ``conv_in``, ``mid_blocks``, ``up_blocks`` (ModuleList of :class:`VAELevel`, deepest
    first), ``conv_out``.
    """

    def __init__(
        self,
        out_channels: int = 3,
        latent_channels: int = 4,
        channels: Sequence[int] = (128, 256, 512, 512),
        num_res_blocks: int = 2,
        num_mid_blocks: int = 2,
        norm_num_groups: int = 32,
        norm_eps: float = NORM_EPS,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        _validate_vae_args(channels, num_res_blocks, num_mid_blocks, norm_num_groups)
        self.latent_channels = latent_channels
        self.upsample_factor = 2 ** (len(channels) - 1)
        self.use_checkpoint = use_checkpoint
        reversed_channels = channels[::-1]
        self.conv_in = nn.Conv3d(latent_channels, reversed_channels[0], kernel_size=3, padding=1)
        self.mid_blocks = nn.ModuleList(
            ResBlock3D(reversed_channels[0], reversed_channels[0], norm_num_groups, norm_eps)
            for _ in range(num_mid_blocks)
        )
        self.up_blocks = nn.ModuleList(
            VAELevel(c_in, c_out, num_res_blocks, norm_num_groups, "up", norm_eps, use_checkpoint)
            for c_in, c_out in zip(reversed_channels[:-1], reversed_channels[1:])
        )
        self.conv_out = nn.Conv3d(channels[0], out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor, skip: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``skip(level, h)``, if given, is applied after each up stage to its output ``h`` of level
        ``level`` (``h`` has ``H / 2**level`` rows) and, as ``skip(-1, out)``, to the output: the
        hook of the fidelity path (:mod:`bundle.networks.fidelity`). Without it this is the
        specification's decoder."""
        _check_slab(z, self.latent_channels, "VAE decoder input")
        enabled = self.use_checkpoint and self.training
        x = self.conv_in(z)
        for block in self.mid_blocks:
            x = checkpointed(block, x, enabled=enabled)
        for i, stage in enumerate(self.up_blocks):
            x = stage(x)
            if skip is not None:
                x = skip(len(self.up_blocks) - 1 - i, x)
        x = in_float32(self.conv_out, x)  # the output in HU-window units: full precision
        return x if skip is None else skip(-1, x)


class VideoVAE(nn.Module):
    """Variational autoencoder for CT slabs: in-plane compression by ``2 ** (len(channels) - 1)``
    (8 with the defaults), none along the slice axis.

    Args:
        in_channels: channels of the input slab (HU windows); 3 in the specification.
        out_channels: channels of the reconstruction; 3 in the specification.
        latent_channels: latent channels; 4.
        channels: widths of the resolution levels, finest first; ``(128, 256, 512, 512)``. Each
            step between two entries is one 2x in-plane down/upsampling.
        num_res_blocks: ResBlock3D per down/up stage; 2.
        num_mid_blocks: ResBlock3D at the coarsest level, in the encoder and again in the decoder; 2.
        norm_num_groups: GroupNorm groups; must divide every entry of ``channels``; 32.
        use_checkpoint: activation (gradient) checkpointing of each block while training, trading
            about one extra forward pass for activation memory. Can be changed later through the
            ``use_checkpoint`` attribute.
        norm_eps: GroupNorm epsilon.
        fidelity_channels: ``None`` (the specification): no fidelity path. A list of widths,
            finest first, adds :class:`~bundle.networks.fidelity.FidelityPath` (``.fidelity``):
            features of the source slab enter the decoder through zero-initialised gated skips
            at the ``len(fidelity_channels)`` finest levels (see :meth:`decode`). Recorded in
            ``config`` only when set, so spec model files are unchanged.
        fidelity_start: where a fresh fidelity path's output starts: ``"decoder"`` (the decoder's
            reconstruction) or ``"source"`` (the source itself: an untrained model returns its
            input; :class:`~bundle.networks.fidelity.OutputSkip`). Only an initialisation: a
            trained model file holds the learned gate, so this changes nothing at inference.
        fidelity_highpass_sigma: 0 (default): the path sees the whole source. > 0: the path sees
            only the source's in-plane band above this Gaussian (pixels), so the output's low band
            must come from the latent (:mod:`bundle.networks.fidelity`). Recorded in ``config``
            only when set.

    Shapes (defaults): ``x (B, 3, T, H, W)`` with ``H, W`` multiples of 8 -> latent
    ``(B, 4, T, H/8, W/8)`` -> reconstruction ``(B, 3, T, H, W)``.

    Example::

        vae = VideoVAE()
        z = vae.encode(x)                  # the mean: deterministic, for inference
        recon, mean, logvar = vae(x)       # sampled latent, for training
        loss = mse(recon, x) + beta * kl_divergence(mean, logvar)
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        latent_channels: int = 4,
        channels: Sequence[int] = (128, 256, 512, 512),
        num_res_blocks: int = 2,
        num_mid_blocks: int = 2,
        norm_num_groups: int = 32,
        use_checkpoint: bool = False,
        norm_eps: float = NORM_EPS,
        fidelity_channels: Sequence[int] | None = None,
        fidelity_start: str = "decoder",
        fidelity_highpass_sigma: float = 0.0,
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels, latent_channels) <= 0:
            raise ValueError(
                f"in_channels, out_channels and latent_channels must be positive, got "
                f"{in_channels}, {out_channels}, {latent_channels}."
            )
        common = dict(
            latent_channels=latent_channels,
            channels=channels,
            num_res_blocks=num_res_blocks,
            num_mid_blocks=num_mid_blocks,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            use_checkpoint=use_checkpoint,
        )
        # the architecture as plain values (stored in model files to rebuild the network);
        # use_checkpoint is a run-time memory setting, not architecture
        self.config = dict(in_channels=in_channels, out_channels=out_channels, **common)
        self.config.pop("use_checkpoint")
        self.config["channels"] = [int(c) for c in channels]
        self.encoder = VAEEncoder(in_channels=in_channels, **common)
        self.decoder = VAEDecoder(out_channels=out_channels, **common)
        self.latent_channels = latent_channels
        self.downsample_factor = self.encoder.downsample_factor
        self.fidelity = None
        if fidelity_channels:
            self.config["fidelity_channels"] = [int(c) for c in fidelity_channels]
            self.fidelity = FidelityPath(
                in_channels, self.config["channels"], fidelity_channels, norm_num_groups, norm_eps, use_checkpoint,
                start=fidelity_start, highpass_sigma=fidelity_highpass_sigma,
            )
            if fidelity_highpass_sigma:
                self.config["fidelity_highpass_sigma"] = float(fidelity_highpass_sigma)

    @property
    def use_checkpoint(self) -> bool:
        """Whether blocks are checkpointed while training (set it to switch on/off everywhere)."""
        return self.encoder.use_checkpoint

    @use_checkpoint.setter
    def use_checkpoint(self, value: bool) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "use_checkpoint"):
                module.use_checkpoint = bool(value)

    def encode_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mean, logvar)``, each ``(B, latent_channels, T, H/f, W/f)``.

        ``logvar`` is clamped to ``[-30, 20]`` so ``exp(logvar)`` stays finite in low precision.
        """
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    @staticmethod
    def sample(
        mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None, eps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Reparameterised draw ``mean + exp(logvar / 2) * eps``, ``eps ~ N(0, I)`` from ``generator``
        (or the given ``eps``: distributed training draws it for the global batch).

        The noise is drawn on the generator's device (a CPU generator works for a GPU latent, and
        the same seed gives the same draw on any device).
        """
        if eps is None:
            device = generator.device if generator is not None else mean.device
            eps = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype)
        eps = eps.to(mean.device)
        return mean + torch.exp(0.5 * logvar) * eps

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latent of ``x``: the posterior mean (default, deterministic; inference and latent caches)
        or, with ``sample=True``, a draw from the posterior (reproducible with ``generator``).

        Shapes: ``(B, in_channels, T, H, W) -> (B, latent_channels, T, H/f, W/f)``.
        """
        mean, logvar = self.encode_moments(x)
        return self.sample(mean, logvar, generator) if sample else mean

    def decode(self, z: torch.Tensor, source: torch.Tensor | None = None, fidelity_weight: float = 1.0) -> torch.Tensor:
        """Reconstruction of latent ``z``: ``(B, latent_channels, T, h, w) -> (B, out_channels, T, f h, f w)``.

        With a fidelity path, ``source`` (the source slab, ``(B, in_channels, T, f h, f w)``) feeds
        it, its gates scaled by ``fidelity_weight``. Without a path, without ``source`` or with
        ``fidelity_weight == 0`` the path is not evaluated: the specification's decoder.
        """
        if self.fidelity is None or source is None or fidelity_weight == 0:
            return self.decoder(z)
        _check_slab(source, self.config["in_channels"], "fidelity source")
        return self.decoder(z, skip=self.fidelity.skip(source, fidelity_weight))

    def forward(
        self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, draw a latent (the mean if ``sample=False``) and decode.

        Returns:
            ``(reconstruction, mean, logvar)``; pass ``mean, logvar`` to :func:`kl_divergence`.
        """
        mean, logvar = self.encode_moments(x)
        z = self.sample(mean, logvar, generator) if sample else mean
        return self.decode(z), mean, logvar
