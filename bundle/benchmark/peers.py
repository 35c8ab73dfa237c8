"""The peer rows of ``ctv2v benchmark``: MONAI core's generative networks at our widths, beside ours.

``MONAI AutoencoderKL`` (spatial_dims 3, the size's VAE widths and residual blocks, latent 4, no
attention, the size's norm groups, 3 channels in and out) and ``MONAI DiffusionModelUNet``
(spatial_dims 3, widths ``model_channels x channel_mult``, attention at the size's levels with the
same head count, 8 channels in = noisy latent + condition concatenated, 4 out, no
cross-attention), each one forward + backward with a mean-squared loss under the row's precision.

MONAI's networks downsample every axis, ours only in-plane: their inputs are the smallest cubes
whose side is a multiple of the network's downsampling and that hold at least as many voxels as
our crop (the autoencoder) or our latent (the U-Net); ``size`` names the shapes. Seconds are
therefore not comparable, FLOP/s is. Next to each peer, the matching row of our networks (VAE:
encode, sample, decode with L1, the decoder without the fidelity path; U-Net: one conditional
forward with MSE) on our own shapes, so that the two FLOP/s sit side by side; the peer's
``extra["flops_per_s_vs_ours"]`` is their ratio.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from bundle.benchmark.measure import PeakMemory, Row, count_flops, time_call
from bundle.benchmark.sizes import SizeSpec
from bundle.benchmark.training import (
    fill_timing,
    first_line,
    precision_skip,
    release,
    synthetic_batch,
)
from bundle.utils.precision import autocast

__all__ = ["isotropic_side", "monai_autoencoder", "monai_unet", "peer_rows"]

PEER_NAMES = ("ours: VAE fwd+bwd", "MONAI AutoencoderKL fwd+bwd", "ours: U-Net fwd+bwd", "MONAI DiffusionModelUNet fwd+bwd")


def isotropic_side(voxels: int, factor: int) -> int:
    """The smallest multiple of ``factor`` whose cube holds at least ``voxels`` voxels."""
    side = factor
    while side**3 < voxels:
        side += factor
    return side


def monai_autoencoder(network: dict):
    """MONAI's ``AutoencoderKL`` at the widths of our VAE (``network``: the size's network dict)."""
    from monai.networks.nets import AutoencoderKL

    channels = [int(c) for c in network["vae_channels"]]
    return AutoencoderKL(
        spatial_dims=3, in_channels=int(network["image_channels"]), out_channels=int(network["image_channels"]),
        channels=channels, num_res_blocks=int(network["vae_num_res_blocks"]),
        attention_levels=[False] * len(channels), latent_channels=int(network["latent_channels"]),
        norm_num_groups=int(network["norm_num_groups"]),
        with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False,
    )


def monai_unet(network: dict):
    """MONAI's ``DiffusionModelUNet`` at the widths of our U-Net, attention at the same levels
    with the same number of heads (MONAI counts channels per head)."""
    from monai.networks.nets import DiffusionModelUNet

    widths = [int(network["unet_model_channels"]) * int(m) for m in network["unet_channel_mult"]]
    levels = {int(i) for i in network["unet_attention_levels"]}
    heads = int(network["unet_num_heads"])
    latent = int(network["latent_channels"])
    return DiffusionModelUNet(
        spatial_dims=3, in_channels=2 * latent, out_channels=latent, channels=widths,
        num_res_blocks=int(network["unet_num_res_blocks"]),
        attention_levels=[i in levels for i in range(len(widths))],
        norm_num_groups=int(network["norm_num_groups"]),
        num_head_channels=[max(1, w // heads) for w in widths], with_conditioning=False,
    )


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _params(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def _row(name: str, size: str, precision: str, device: torch.device, fn: Callable[[], None], samples: int,
         iterations: int, warmup: int, extra: dict) -> Row:
    row = Row(section="peer", name=name, size=size, precision=precision, extra=dict(extra))
    for _ in range(max(0, warmup)):
        fn()
    with PeakMemory(device) as peak:
        seconds = time_call(fn, device, warmup=0, repeats=iterations)
    return fill_timing(row, seconds, peak, count_flops(fn), samples)


def _fwd_bwd(loss_fn: Callable[[], torch.Tensor], module: torch.nn.Module, device: torch.device, precision: str):
    """One forward (under the precision's autocast) and backward; gradients dropped afterwards."""

    def fn() -> None:
        with autocast(device, precision):
            loss = loss_fn()
        loss.backward()
        module.zero_grad(set_to_none=True)

    return fn


def peer_rows(
    spec: SizeSpec,
    device: torch.device | str,
    precisions: Sequence[str] = ("fp32",),
    iterations: int = 3,
    warmup: int = 1,
    force_bf16: bool = False,
) -> list[Row]:
    """``section="peer"``: per precision, our VAE and MONAI's AutoencoderKL, then our U-Net and
    MONAI's DiffusionModelUNet, each forward + backward (module docstring). A precision the device
    does not compute natively gives skipped rows (as :func:`~bundle.benchmark.training.training_rows`)."""
    device = torch.device(device)
    network = dict(spec.get("network"))
    batch = spec.batch_size
    latent_channels = int(network["latent_channels"])
    rows: list[Row] = []
    for precision in precisions:
        skip = precision_skip(precision, device, force_bf16)
        if skip:
            rows += [Row(section="peer", name=name, size=spec.name, precision=precision, extra={"skipped": skip})
                     for name in PEER_NAMES]
            continue
        generator = torch.Generator().manual_seed(0)

        # --- autoencoders ---
        vae, unet = spec.build_networks(device)
        vae.train()
        x = synthetic_batch(spec)["target"].to(device)
        f = vae.downsample_factor
        latent = (spec.patch[0], spec.patch[1] // f, spec.patch[2] // f)
        eps = torch.randn((batch, latent_channels, *latent), generator=generator).to(device)

        def ours_vae(vae=vae, x=x, eps=eps) -> torch.Tensor:
            mean, logvar = vae.encode_moments(x)
            return F.l1_loss(vae.decode(vae.sample(mean, logvar, eps=eps)).float(), x)

        ours = _row(PEER_NAMES[0], _shape(x.shape), precision, device, _fwd_bwd(ours_vae, vae, device, precision),
                    batch, iterations, warmup, {"params_m": _params(vae.encoder) + _params(vae.decoder)})
        rows.append(ours)
        del vae, ours_vae
        release(device)

        factor = 2 ** (len(network["vae_channels"]) - 1)
        side = isotropic_side(int(torch.tensor(spec.patch).prod()), factor)
        xi = (torch.rand((batch, x.shape[1], side, side, side), generator=generator) * 2 - 1).to(device)
        size = f"{_shape(xi.shape)} (isotropic; ours {_shape(x.shape)})"
        rows.append(_peer_row(PEER_NAMES[1], size, monai_autoencoder, lambda peer, xi=xi: F.mse_loss(peer(xi)[0].float(), xi),
                              network, ours, precision, device, batch, iterations, warmup))
        del x, xi
        release(device)

        # --- U-Nets ---
        unet.train()
        shape = (batch, latent_channels, *latent)
        z_t, condition, target = (torch.randn(shape, generator=generator).to(device) for _ in range(3))
        t = torch.randint(0, 1000, (batch,), generator=generator).to(device)

        def ours_unet(unet=unet, z_t=z_t, condition=condition, target=target, t=t) -> torch.Tensor:
            return F.mse_loss(unet(z_t, t, condition).float(), target)

        ours = _row(PEER_NAMES[2], _shape(shape), precision, device, _fwd_bwd(ours_unet, unet, device, precision),
                    batch, iterations, warmup, {"params_m": _params(unet)})
        rows.append(ours)
        del unet, ours_unet
        release(device)

        factor = 2 ** (len(network["unet_channel_mult"]) - 1)
        side = isotropic_side(int(torch.tensor(latent).prod()), factor)
        zi = torch.randn((batch, 2 * latent_channels, side, side, side), generator=generator).to(device)
        target_i = torch.randn((batch, latent_channels, side, side, side), generator=generator).to(device)
        size = f"{_shape(zi.shape)} (isotropic; ours {_shape(shape)} + condition)"
        rows.append(_peer_row(PEER_NAMES[3], size, monai_unet, lambda peer, zi=zi, t=t, y=target_i: F.mse_loss(peer(zi, t).float(), y),
                              network, ours, precision, device, batch, iterations, warmup))
        release(device)
    return rows


def _peer_row(name: str, size: str, make: Callable[[dict], torch.nn.Module],
              loss_of: Callable[[torch.nn.Module], torch.Tensor], network: dict, ours: Row, precision: str,
              device: torch.device, batch: int, iterations: int, warmup: int) -> Row:
    """One MONAI network's forward + backward row beside ``ours`` (its FLOP/s ratio), or a skipped
    row saying why it cannot be built here."""
    peer = _build(make, network, device)
    if isinstance(peer, str):
        return Row(section="peer", name=name, size=size, precision=precision, extra={"skipped": peer})
    row = _row(name, size, precision, device, _fwd_bwd(lambda: loss_of(peer), peer, device, precision),
               batch, iterations, warmup, {"params_m": _params(peer)})
    _versus(row, ours)
    return row


def _build(make: Callable[[dict], torch.nn.Module], network: dict, device: torch.device):
    """The peer network on ``device`` in train mode, or why it cannot be built here (MONAI's
    attention blocks need the optional ``einops``)."""
    try:
        return make(network).to(device).train()
    except ImportError as error:
        found = re.search(r"No module named '([^']+)'", str(error))
        return f"MONAI needs {found.group(1)} for it (not installed)" if found else first_line(error)


def _versus(peer: Row, ours: Row) -> None:
    if peer.flops_per_s and ours.flops_per_s:
        peer.extra["flops_per_s_vs_ours"] = peer.flops_per_s / ours.flops_per_s
