"""Conditional 3D U-Net of the specification: predicts the noise (or another diffusion target) of
a noisy latent slab given the latent of the low-dose source.

Inputs ``noisy (B, 4, T, h, w)``, ``timesteps (B,)``, ``condition (B, 4, T, h, w)``; output the same
shape as ``noisy``. The condition enters by channel concatenation with the noisy latent before
``conv_in``, so every layer sees both from the start.

Layout with the default (specification) arguments, a 16x16 latent and ``L = 4`` levels at
``model_channels * channel_mult`` = 128/256/512/512 channels, in-plane 16/8/4/2:

- ``time_embed``: sinusoidal embedding of size ``model_channels`` -> Linear -> SiLU -> Linear to
  ``time_embed_dim`` = 1024, shared by every residual block.
- ``conv_in``: ``in_channels + condition_channels`` (8) -> 128, k3.
- ``down_levels[i]`` (i = 0..3): ``num_res_blocks`` :class:`TimeResBlock3D`; an
  :class:`AttentionBlock3D` over all ``T*H*W`` positions when ``i in attention_levels`` (1, 2);
  then, except at the bottleneck (i = 3), a downsample to level ``i + 1``'s channels. The skip of
  level ``i`` is its output before the downsample.
- ``middle``: TimeResBlock3D -> attention along the slice axis at each in-plane position ->
  TimeResBlock3D, at the bottleneck.
- ``up_levels[k]`` works at encoder level ``i = L - 1 - k`` (deepest first): concatenate the skip of
  level ``i``, ``num_res_blocks`` TimeResBlock3D to level ``i``'s channels, attention when
  ``i in attention_levels``, then (except at level 0) an upsample keeping the channels. Inputs of
  the four stages: 1024 @ 2x2, 1024 @ 4x4, 768 @ 8x8, 384 @ 16x16, as tabled in the specification.
- ``out``: GroupNorm -> SiLU -> ``conv_out`` (k3) to ``out_channels``. The residual blocks are
  pre-activation (they end in a bare convolution), so the stream leaving the last one is neither
  normalised nor activated; the norm + activation before the projection is the usual remedy.

Choices where the specification is silent (and why):

- Down: Conv3d kernel 3, stride (1, 2, 2), padding 1, no norm: a learned in-plane downsample that
  leaves the slice axis alone; no GroupNorm/SiLU after it because the next residual block starts
  with exactly that.
- Up: nearest-neighbour x2 in-plane then Conv3d kernel 3: the MONAI / latent-diffusion choice; it
  cannot make the checkerboard artefacts of strided transposed convolutions, which would end up in
  the predicted noise and then in every sampling step.
- Decoder stages: ``num_res_blocks`` blocks at every level. The specification draws three at
  level 0 and two elsewhere without saying why; the regular rule is kept (one block, 1.0M
  parameters at 16x16, fewer than drawn).
- Zero initialisation of the last convolution of every residual branch, of the attention output
  projections and of ``conv_out``: the network starts as the identity-ish map with a zero output
  (a zero noise prediction has loss E[eps^2] = 1, a sane start) and deep stacks train stably from
  the first step (DDPM / latent-diffusion practice). Gradients do reach the zeroed layers.
- No positional encoding in the attention blocks (see :class:`AttentionBlock3D`).

Parameter count: 223,576,324 with the defaults (measured; tests/networks/test_spec_shapes.py
asserts it). The specification is self-inconsistent here: its tables say 270M for the U-Net
(441M total), its summary 163M (335M total), and another straightforward rendering measured earlier had about
248M. About 21M of the gap to 248M is the resampling: reusing the
VAE's (3, 4, 4)-kernel strided and transposed convolutions for the U-Net's three down- and three
upsamples would cost 21.3M more than the 3x3x3 convolutions here; the rest is presumably smaller
choices such as the third residual block drawn at level 0 (+1.0M) or attention in/out
projections. No reading of the drawn blocks reaches 270M or 163M without inventing layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bundle.networks.blocks import (
    NORM_EPS,
    AttentionBlock3D,
    Downsample3D,
    TimeResBlock3D,
    Upsample3D,
    check_divisible,
    checkpointed,
    timestep_embedding,
    zero_module,
)

__all__ = ["ConditionalUNet3D", "UNetLevel", "UNetMiddleBlock"]


class UNetLevel(nn.Module):
    """One U-Net resolution level: residual blocks, optional attention, optional resample.

    Used for encoder levels (``resample="down"``) and decoder stages (``resample="up"``) alike.

    Args:
        in_channels: input channels (a decoder stage's input already holds the concatenated skip).
        out_channels: channels of the residual blocks' output.
        num_res_blocks: number of :class:`TimeResBlock3D`; the first maps ``in_channels`` to
            ``out_channels``. At least 1.
        time_embed_dim: timestep embedding size.
        norm_num_groups: GroupNorm groups.
        num_heads: heads of an :class:`AttentionBlock3D` over the whole slab after the residual
            blocks; ``None`` for no attention.
        resample: ``"down"``, ``"up"`` or ``None``.
        resample_channels: output channels of the resample (default ``out_channels``).

    Submodules: ``res_blocks`` (ModuleList), ``attention`` (or None), ``resample`` (or None).

    ``forward(x, t_emb)`` returns ``(features, output)``: the features before the resample (an
    encoder level's skip) and after it (what the next level receives).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_res_blocks: int,
        time_embed_dim: int,
        norm_num_groups: int,
        num_heads: int | None = None,
        resample: str | None = None,
        resample_channels: int | None = None,
        norm_eps: float = NORM_EPS,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}.")
        self.use_checkpoint = use_checkpoint
        self.res_blocks = nn.ModuleList(
            TimeResBlock3D(
                in_channels if i == 0 else out_channels, out_channels, time_embed_dim, norm_num_groups, norm_eps
            )
            for i in range(num_res_blocks)
        )
        self.attention = None if num_heads is None else AttentionBlock3D(out_channels, num_heads, over="volume")
        resample_channels = out_channels if resample_channels is None else resample_channels
        if resample is None:
            self.resample = None
        elif resample == "down":
            self.resample = Downsample3D(out_channels, resample_channels, kernel_size=(3, 3, 3))
        elif resample == "up":
            self.resample = Upsample3D(out_channels, resample_channels, mode="nearest")
        else:
            raise ValueError(f"resample must be 'down', 'up' or None, got {resample!r}.")

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enabled = self.use_checkpoint and self.training
        for block in self.res_blocks:
            x = checkpointed(block, x, t_emb, enabled=enabled)
        if self.attention is not None:
            x = checkpointed(self.attention, x, enabled=enabled)
        features = x
        if self.resample is not None:
            x = checkpointed(self.resample, x, enabled=enabled)
        return features, x


class UNetMiddleBlock(nn.Module):
    """Bottleneck block: TimeResBlock3D -> attention along the slice axis -> TimeResBlock3D.

    The slice attention (``temporal_attention``) lets every slice of the slab exchange information
    with every other one at each in-plane position of the coarsest grid, beyond the reach of the
    3x3x3 convolutions. Submodules: ``res1``, ``temporal_attention`` (or None), ``res2``.
    """

    def __init__(
        self,
        channels: int,
        time_embed_dim: int,
        norm_num_groups: int,
        num_heads: int,
        temporal_attention: bool = True,
        norm_eps: float = NORM_EPS,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.res1 = TimeResBlock3D(channels, channels, time_embed_dim, norm_num_groups, norm_eps)
        self.temporal_attention = (
            AttentionBlock3D(channels, num_heads, over="slices", ff_mult=0) if temporal_attention else None
        )
        self.res2 = TimeResBlock3D(channels, channels, time_embed_dim, norm_num_groups, norm_eps)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        enabled = self.use_checkpoint and self.training
        x = checkpointed(self.res1, x, t_emb, enabled=enabled)
        if self.temporal_attention is not None:
            x = checkpointed(self.temporal_attention, x, enabled=enabled)
        return checkpointed(self.res2, x, t_emb, enabled=enabled)


class ConditionalUNet3D(nn.Module):
    """Latent-diffusion U-Net for slabs, conditioned on a latent by channel concatenation.

    Args:
        in_channels: channels of the noisy latent; 4.
        condition_channels: channels of the condition latent; 4. 0 makes the network
            unconditional (then ``condition`` must be None).
        out_channels: channels of the prediction; 4.
        model_channels: width of level 0; 128.
        channel_mult: width of each level as a multiple of ``model_channels``, finest first;
            ``(1, 2, 4, 4)``. Its length ``L`` is the number of levels; the latent's in-plane size
            must be a multiple of ``2 ** (L - 1)``.
        num_res_blocks: TimeResBlock3D per level, in the encoder and in the decoder; 2.
        attention_levels: levels (0-based, < ``L``) with self-attention over the whole slab, in
            the encoder and in the decoder; ``(1, 2)``.
        num_heads: attention heads; must divide the width of every attention level and, with
            ``temporal_attention``, of the bottleneck; 8.
        time_embed_dim: size of the timestep embedding; 1024.
        norm_num_groups: GroupNorm groups; must divide every level width; 32.
        temporal_attention: attention along the slice axis in the middle block; True.
        use_checkpoint: activation checkpointing of every block while training (attribute
            ``use_checkpoint`` switches it later).
        norm_eps: GroupNorm epsilon.

    Forward: ``noisy (B, in_channels, T, h, w)``, ``timesteps`` ``(B,)`` (or a scalar, broadcast)
    integer or float steps in ``[0, 1000)``, ``condition (B, condition_channels, T, h, w)`` ->
    ``(B, out_channels, T, h, w)``.
    """

    def __init__(
        self,
        in_channels: int = 4,
        condition_channels: int = 4,
        out_channels: int = 4,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] = (1, 2),
        num_heads: int = 8,
        time_embed_dim: int = 1024,
        norm_num_groups: int = 32,
        temporal_attention: bool = True,
        use_checkpoint: bool = False,
        norm_eps: float = NORM_EPS,
    ) -> None:
        super().__init__()
        channel_mult = [int(m) for m in channel_mult]
        attention_levels = sorted({int(i) for i in attention_levels})
        num_levels = len(channel_mult)
        if in_channels <= 0 or out_channels <= 0 or condition_channels < 0:
            raise ValueError(
                f"in_channels/out_channels must be positive and condition_channels >= 0, got "
                f"{in_channels}, {out_channels}, {condition_channels}."
            )
        if num_levels == 0 or min(channel_mult) <= 0:
            raise ValueError(f"channel_mult must be a non-empty list of positive ints, got {channel_mult}.")
        if any(i < 0 or i >= num_levels for i in attention_levels):
            raise ValueError(
                f"attention_levels {attention_levels} must index the {num_levels} levels of "
                f"channel_mult {channel_mult} (0..{num_levels - 1})."
            )
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}.")
        if time_embed_dim <= 0 or model_channels <= 0:
            raise ValueError(
                f"model_channels and time_embed_dim must be positive, got {model_channels}, {time_embed_dim}."
            )
        widths = [model_channels * m for m in channel_mult]
        for i, width in enumerate(widths):
            check_divisible(width, norm_num_groups, f"U-Net level {i} (model_channels * channel_mult[{i}])")
        heads_needed = {i: widths[i] for i in attention_levels}
        if temporal_attention:
            heads_needed[num_levels - 1] = widths[-1]
        for i, width in heads_needed.items():
            if num_heads <= 0 or width % num_heads:
                raise ValueError(f"U-Net level {i}: {width} channels are not divisible by num_heads={num_heads}.")

        # the architecture as plain values (stored in model files to rebuild the network)
        self.config = dict(
            in_channels=in_channels, condition_channels=condition_channels, out_channels=out_channels,
            model_channels=model_channels, channel_mult=channel_mult, num_res_blocks=num_res_blocks,
            attention_levels=attention_levels, num_heads=num_heads, time_embed_dim=time_embed_dim,
            norm_num_groups=norm_num_groups, temporal_attention=temporal_attention, norm_eps=norm_eps,
        )
        self.in_channels = in_channels
        self.condition_channels = condition_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.downsample_factor = 2 ** (num_levels - 1)

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim)
        )
        self.conv_in = nn.Conv3d(in_channels + condition_channels, widths[0], kernel_size=3, padding=1)

        common = dict(
            num_res_blocks=num_res_blocks,
            time_embed_dim=time_embed_dim,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            use_checkpoint=use_checkpoint,
        )
        self.down_levels = nn.ModuleList()
        for i in range(num_levels):
            last = i == num_levels - 1
            self.down_levels.append(
                UNetLevel(
                    widths[i],
                    widths[i],
                    num_heads=num_heads if i in attention_levels else None,
                    resample=None if last else "down",
                    resample_channels=None if last else widths[i + 1],
                    **common,
                )
            )
        self.middle = UNetMiddleBlock(
            widths[-1], time_embed_dim, norm_num_groups, num_heads, temporal_attention, norm_eps, use_checkpoint
        )
        self.up_levels = nn.ModuleList()
        incoming = widths[-1]  # channels arriving from below: the middle block, then each upsample
        for i in reversed(range(num_levels)):
            self.up_levels.append(
                UNetLevel(
                    incoming + widths[i],
                    widths[i],
                    num_heads=num_heads if i in attention_levels else None,
                    resample="up" if i > 0 else None,
                    **common,
                )
            )
            incoming = widths[i]
        self.out_norm = nn.GroupNorm(norm_num_groups, widths[0], eps=norm_eps)
        self.conv_out = zero_module(nn.Conv3d(widths[0], out_channels, kernel_size=3, padding=1))

    @property
    def use_checkpoint(self) -> bool:
        """Whether blocks are checkpointed while training (set it to switch on/off everywhere)."""
        return self.middle.use_checkpoint

    @use_checkpoint.setter
    def use_checkpoint(self, value: bool) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "use_checkpoint"):
                module.use_checkpoint = bool(value)

    def _check_inputs(
        self, noisy: torch.Tensor, timesteps: torch.Tensor | float, condition: torch.Tensor | None
    ) -> torch.Tensor:
        if noisy.dim() != 5 or noisy.shape[1] != self.in_channels:
            raise ValueError(
                f"noisy latent must be (B, {self.in_channels}, T, h, w), got shape {tuple(noisy.shape)}."
            )
        f = self.downsample_factor
        if noisy.shape[-2] % f or noisy.shape[-1] % f:
            raise ValueError(
                f"U-Net input in-plane size {tuple(noisy.shape[-2:])} must be divisible by {f} "
                f"(2 ** (len(channel_mult) - 1)); got latent shape {tuple(noisy.shape)}."
            )
        if self.condition_channels:
            if condition is None:
                raise ValueError("condition is required (condition_channels > 0).")
            expected = (noisy.shape[0], self.condition_channels, *noisy.shape[2:])
            if tuple(condition.shape) != expected:
                raise ValueError(f"condition must have shape {expected}, got {tuple(condition.shape)}.")
        elif condition is not None:
            raise ValueError("condition given but condition_channels is 0.")
        timesteps = torch.as_tensor(timesteps, device=noisy.device)
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(noisy.shape[0])
        if timesteps.shape != (noisy.shape[0],):
            raise ValueError(
                f"timesteps must have shape ({noisy.shape[0]},) for a batch of {noisy.shape[0]}, "
                f"got {tuple(timesteps.shape)}."
            )
        return timesteps

    def forward(
        self, noisy: torch.Tensor, timesteps: torch.Tensor | float, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict the diffusion target for ``noisy`` at ``timesteps`` given ``condition``.

        Shapes: ``noisy (B, C_in, T, h, w)``, ``timesteps (B,)``, ``condition (B, C_cond, T, h, w)``
        -> ``(B, out_channels, T, h, w)``.
        """
        timesteps = self._check_inputs(noisy, timesteps, condition)
        # the embedding is computed in float32 (sin/cos of steps up to 1000 lose precision in
        # half precision) and handed to the MLP in its parameter dtype
        t_emb = timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype)
        t_emb = self.time_embed(t_emb)

        x = noisy if condition is None else torch.cat([noisy, condition], dim=1)
        x = self.conv_in(x)
        skips = []
        for level in self.down_levels:
            features, x = level(x, t_emb)
            skips.append(features)
        x = self.middle(x, t_emb)
        for level in self.up_levels:
            _, x = level(torch.cat([x, skips.pop()], dim=1), t_emb)
        return self.conv_out(F.silu(self.out_norm(x)))
