"""Building blocks shared by :class:`~bundle.networks.VideoVAE` and
:class:`~bundle.networks.ConditionalUNet3D`.

Every tensor here is a slab ``(B, C, T, H, W)``: ``T`` is the slice axis of the CT volume and is
never resampled (the specification keeps all slices in the latent); ``H, W`` are in-plane.

Blocks (each a single class with options rather than near-copies):

- :class:`ResBlock3D`: the VAE residual block, post-norm, exactly as the specification draws it.
- :class:`TimeResBlock3D`: the U-Net residual block with an added timestep embedding.
- :class:`Downsample3D` / :class:`Upsample3D`: in-plane-only resampling (stride ``(1, 2, 2)``).
- :class:`AttentionBlock3D`: multi-head self-attention over the whole slab (the specification's
  ``SpatialTransformer3D``) or along the slice axis only (its ``TemporalAttention``).

Helpers: :func:`timestep_embedding`, :func:`checkpointed`, :func:`zero_module`,
:func:`check_divisible`.
"""

from __future__ import annotations

import contextlib

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "ResBlock3D",
    "TimeResBlock3D",
    "Downsample3D",
    "Upsample3D",
    "AttentionBlock3D",
    "timestep_embedding",
    "checkpointed",
    "zero_module",
    "check_divisible",
    "NORM_EPS",
]

# 1e-6 rather than torch's 1e-5: the value MONAI's generative networks and the latent-diffusion
# reference use; it matters only for near-constant feature maps.
NORM_EPS = 1e-6


def check_divisible(channels: int, groups: int, what: str) -> None:
    """Raise a ``ValueError`` naming ``what`` unless ``channels`` splits into ``groups``."""
    if groups <= 0:
        raise ValueError(f"norm_num_groups must be positive, got {groups}.")
    if channels <= 0 or channels % groups != 0:
        raise ValueError(
            f"{what}: {channels} channels are not divisible by norm_num_groups={groups} "
            "(GroupNorm needs whole groups)."
        )


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero and return it.

    Used on the last layer of residual branches: each branch then starts as the identity, so a
    deep network begins as a shallow one and its early updates are stable (the practice of the
    DDPM / latent-diffusion U-Nets). Gradients still reach the zeroed weights (they depend on the
    branch's input, not on the weights), so the branches switch on after the first step.
    """
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def checkpointed(module: nn.Module, *args: torch.Tensor, enabled: bool) -> torch.Tensor:
    """Call ``module(*args)``, through activation checkpointing when ``enabled``.

    Checkpointing only pays off when a backward pass will follow, so it is skipped when grad is
    disabled (evaluation, ``torch.no_grad``) whatever ``enabled`` says; callers pass
    ``enabled=self.use_checkpoint and self.training``. ``use_reentrant=False`` is the variant PyTorch
    recommends; unlike the reentrant one it also works when no input requires grad (the output of a
    frozen encoder) and keeps outputs and gradients identical to the plain call.
    """
    if enabled and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)


def autocast_off(device: torch.device):
    """A context in which autocast is off on ``device`` (nothing to do where it has none: meta)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()


def in_float32(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """``module(*inputs)`` in float32, also under autocast.

    For the layers that write an output in HU-window units: bfloat16 keeps 8 significant bits, so
    a channel spanning 4096 HU in [-1, 1] would move in steps of about 8 HU. The cost is small
    (the last convolution of a network); the rest of the network keeps the autocast precision.
    """
    with autocast_off(inputs[0].device):
        return module(*(x.float() for x in inputs))


def _same_layout(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Return ``tensor`` in the memory format of ``like`` (channels-last stays channels-last)."""
    if like.dim() == 5 and like.is_contiguous(memory_format=torch.channels_last_3d) and not like.is_contiguous():
        return tensor.contiguous(memory_format=torch.channels_last_3d)
    return tensor.contiguous()


class ResBlock3D(nn.Module):
    """VAE residual block, in the specification's (post-norm) order::

        h = SiLU(GN(Conv3d(x)));  h = GN(Conv3d(h));  out = SiLU(skip(x) + h)

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output; defaults to ``in_channels``. When they differ the
            skip path is a 1x1x1 convolution (the specification never changes channels here).
        norm_num_groups: GroupNorm groups; must divide ``out_channels``.
        norm_eps: GroupNorm epsilon.

    Shapes: ``(B, in_channels, T, H, W) -> (B, out_channels, T, H, W)``.
    """

    def __init__(
        self, in_channels: int, out_channels: int | None = None, norm_num_groups: int = 32, norm_eps: float = NORM_EPS
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        check_divisible(out_channels, norm_num_groups, "ResBlock3D")
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm1 = nn.GroupNorm(norm_num_groups, out_channels, eps=norm_eps)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(norm_num_groups, out_channels, eps=norm_eps)
        self.skip = (
            nn.Identity() if in_channels == out_channels else nn.Conv3d(in_channels, out_channels, kernel_size=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.silu(self.skip(x) + h)


class TimeResBlock3D(nn.Module):
    """U-Net residual block conditioned on a timestep embedding, as the specification draws it::

        h = Conv3d(SiLU(GN(x)))
        h = GN(h) + SiLU(Linear(t_emb))          # broadcast over T, H, W
        out = skip(x) + Conv3d(SiLU(h))

    The time term is added after the second GroupNorm, so the normalisation cannot remove it.

    Args:
        in_channels: channels of the input (the concatenated skip in the decoder).
        out_channels: channels of the output; a 1x1x1 convolution adapts the skip path when the
            two differ.
        time_embed_dim: size of the timestep embedding ``t_emb``.
        norm_num_groups: GroupNorm groups; must divide both channel counts.
        norm_eps: GroupNorm epsilon.
        zero_init: zero the last convolution so the block starts as its skip path (see
            :func:`zero_module`).

    Shapes: ``x (B, in_channels, T, H, W)``, ``t_emb (B, time_embed_dim)`` ->
    ``(B, out_channels, T, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_embed_dim: int,
        norm_num_groups: int = 32,
        norm_eps: float = NORM_EPS,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        check_divisible(in_channels, norm_num_groups, "TimeResBlock3D input")
        check_divisible(out_channels, norm_num_groups, "TimeResBlock3D output")
        self.norm1 = nn.GroupNorm(norm_num_groups, in_channels, eps=norm_eps)
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(norm_num_groups, out_channels, eps=norm_eps)
        self.time_proj = nn.Sequential(nn.Linear(time_embed_dim, out_channels), nn.SiLU())
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1)
        if zero_init:
            zero_module(self.conv2)
        self.skip = (
            nn.Identity() if in_channels == out_channels else nn.Conv3d(in_channels, out_channels, kernel_size=1)
        )

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h) + self.time_proj(t_emb)[:, :, None, None, None]
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class Downsample3D(nn.Module):
    """Halve ``H`` and ``W`` with a strided convolution; the slice axis keeps its size.

    Convolution with stride ``(1, 2, 2)`` and padding ``(k_t // 2, (k_h - 1) // 2, (k_w - 1) // 2)``,
    optionally followed by GroupNorm + SiLU.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: ``(k_t, k_h, k_w)``; ``k_t`` must be odd (the slice axis is not resampled) and
            ``k_h, k_w`` 3 or 4 so that an even size is halved exactly. The VAE uses the
            specification's ``(3, 4, 4)``.
        norm_num_groups: if given, GroupNorm with this many groups then SiLU (the VAE's
            DownsampleBlock); ``None`` for a bare convolution (the U-Net, whose next block
            normalises first).
        norm_eps: GroupNorm epsilon.

    Shapes: ``(B, in_channels, T, H, W) -> (B, out_channels, T, H // 2, W // 2)`` for even ``H, W``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] = (3, 4, 4),
        norm_num_groups: int | None = None,
        norm_eps: float = NORM_EPS,
    ) -> None:
        super().__init__()
        k_t, k_h, k_w = (int(k) for k in kernel_size)
        if k_t % 2 != 1 or k_h not in (3, 4) or k_w not in (3, 4):
            raise ValueError(f"Downsample3D kernel_size must be (odd, 3|4, 3|4), got {tuple(kernel_size)}.")
        self.conv = nn.Conv3d(
            in_channels,
            out_channels,
            kernel_size=(k_t, k_h, k_w),
            stride=(1, 2, 2),
            padding=(k_t // 2, (k_h - 1) // 2, (k_w - 1) // 2),
        )
        if norm_num_groups is None:
            self.norm = None
        else:
            check_divisible(out_channels, norm_num_groups, "Downsample3D")
            self.norm = nn.GroupNorm(norm_num_groups, out_channels, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x if self.norm is None else F.silu(self.norm(x))


class Upsample3D(nn.Module):
    """Double ``H`` and ``W``; the slice axis keeps its size.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        mode: ``"transpose"``: ConvTranspose3d kernel ``(3, 4, 4)``, stride ``(1, 2, 2)``, padding
            ``(1, 1, 1)`` (the specification's VAE UpsampleBlock). ``"nearest"``: nearest-neighbour
            interpolation by ``(1, 2, 2)`` then a 3x3x3 convolution; every output pixel then sees
            the same number of inputs, so it cannot produce the checkerboard pattern transposed
            convolutions are prone to (the U-Net uses it).
        norm_num_groups: if given, GroupNorm with this many groups then SiLU; ``None`` for none.
        norm_eps: GroupNorm epsilon.

    Shapes: ``(B, in_channels, T, H, W) -> (B, out_channels, T, 2 H, 2 W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mode: str = "transpose",
        norm_num_groups: int | None = None,
        norm_eps: float = NORM_EPS,
    ) -> None:
        super().__init__()
        if mode == "transpose":
            self.conv = nn.ConvTranspose3d(
                in_channels, out_channels, kernel_size=(3, 4, 4), stride=(1, 2, 2), padding=(1, 1, 1)
            )
        elif mode == "nearest":
            self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        else:
            raise ValueError(f"Upsample3D mode must be 'transpose' or 'nearest', got {mode!r}.")
        self.mode = mode
        if norm_num_groups is None:
            self.norm = None
        else:
            check_divisible(out_channels, norm_num_groups, "Upsample3D")
            self.norm = nn.GroupNorm(norm_num_groups, out_channels, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "nearest":
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        x = self.conv(x)
        return x if self.norm is None else F.silu(self.norm(x))


class AttentionBlock3D(nn.Module):
    """Pre-norm multi-head self-attention (and optional feed-forward) on a slab, with residuals::

        tokens = tokens + Attn(LayerNorm(tokens))
        tokens = tokens + FF(LayerNorm(tokens))        # when ff_mult > 0

    Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`, which picks a
    fused (flash / memory-efficient) kernel where one is available.

    Args:
        channels: feature channels ``C`` (the token width); must be divisible by ``num_heads``.
        num_heads: attention heads.
        over: which positions attend to each other.
            ``"volume"``: all ``T*H*W`` positions of a slab (the specification's
            SpatialTransformer3D). ``"slices"``: the ``T`` slices at each in-plane position, each
            ``(h, w)`` independently (the specification's TemporalAttention).
        ff_mult: hidden width of the GELU feed-forward as a multiple of ``channels``; 0 for none.

    No positional encoding is added: the 3x3x3 convolutions around every attention block already
    tell positions apart (zero padding at the borders), and the slab sizes seen at inference may
    differ from training.

    The output projections are zero-initialised so each block starts as the identity.

    Shapes: ``(B, C, T, H, W) -> (B, C, T, H, W)``.
    """

    def __init__(self, channels: int, num_heads: int = 8, over: str = "volume", ff_mult: int = 4) -> None:
        super().__init__()
        if num_heads <= 0 or channels % num_heads != 0:
            raise ValueError(f"AttentionBlock3D: {channels} channels are not divisible by num_heads={num_heads}.")
        if over not in ("volume", "slices"):
            raise ValueError(f"AttentionBlock3D over must be 'volume' or 'slices', got {over!r}.")
        if ff_mult < 0:
            raise ValueError(f"AttentionBlock3D ff_mult must be >= 0, got {ff_mult}.")
        self.num_heads = num_heads
        self.over = over
        self.norm_attn = nn.LayerNorm(channels)
        # No bias on q/k/v: a key bias cancels in the softmax and the others add little.
        self.to_qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.proj_out = zero_module(nn.Linear(channels, channels))
        if ff_mult > 0:
            self.norm_ff = nn.LayerNorm(channels)
            self.ff = nn.Sequential(
                nn.Linear(channels, ff_mult * channels),
                nn.GELU(),
                zero_module(nn.Linear(ff_mult * channels, channels)),
            )
        else:
            self.norm_ff = None
            self.ff = None

    def _attend(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, channels = tokens.shape
        head_dim = channels // self.num_heads
        qkv = self.to_qkv(tokens).reshape(batch, length, 3, self.num_heads, head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, length, head_dim)
        out = F.scaled_dot_product_attention(query, key, value)
        return self.proj_out(out.transpose(1, 2).reshape(batch, length, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        # permute-then-reshape: a view, not a copy, when x is channels-last
        if self.over == "volume":
            tokens = x.permute(0, 2, 3, 4, 1).reshape(b, t * h * w, c)
        else:
            tokens = x.permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)
        tokens = tokens + self._attend(self.norm_attn(tokens))
        if self.ff is not None:
            tokens = tokens + self.ff(self.norm_ff(tokens))
        if self.over == "volume":
            out = tokens.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        else:
            out = tokens.reshape(b, h, w, t, c).permute(0, 4, 3, 1, 2)
        return _same_layout(out, x)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of diffusion timesteps (Transformer positional encoding).

    ``emb[:, i] = cos(t * f_i)`` for the first half and ``sin(t * f_i)`` for the second, with
    frequencies ``f_i = max_period ** (-i / half)`` geometric from 1 down to about ``1 / max_period``;
    an odd ``dim`` gets a trailing zero column.

    Args:
        timesteps: ``(B,)`` integer or float steps (fractional steps are allowed).
        dim: embedding size.
        max_period: the slowest period, in steps.

    Returns:
        ``(B, dim)`` float32 tensor on the device of ``timesteps``.
    """
    if timesteps.dim() != 1:
        raise ValueError(f"timesteps must have shape (B,), got {tuple(timesteps.shape)}.")
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / max(half, 1)
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = timesteps.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb
