"""In-plane Gaussian low-pass: the one frequency split of the project.

Both the output's low band from the source (:mod:`bundle.inference.low_frequency`) and the
fidelity path's high-pass input (:class:`bundle.networks.fidelity.FidelityPath`, ``highpass_sigma``)
split an image at the same place: a 2D Gaussian per axial slice, ``sigma`` in pixels, whose
response is 1/2 at ``f = sqrt(ln 2 / (2 pi^2)) / sigma`` cycles per pixel (``sigma = 3``: 1/16
cycle per pixel, the Nyquist frequency of the 8x VAE's latent grid).
"""

from __future__ import annotations

import torch
from monai.networks.layers import GaussianFilter

from bundle.networks.blocks import autocast_off

__all__ = ["inplane_lowpass"]


def inplane_lowpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``G_sigma * x`` over the last two axes (each ``(..., H, W)`` slice alone), in float32, returned
    in ``x``'s dtype; ``sigma <= 0`` returns ``x``. Differentiable. Borders are mirrored (``reflect``
    padding; ``replicate`` for slices smaller than the kernel), so an edge pixel is filtered like an
    inner one and no edge leaks high frequencies into the low band."""
    if sigma <= 0:
        return x
    h, w = x.shape[-2:]
    radius = int(4 * sigma + 0.5)
    mode = "reflect" if radius < min(h, w) else "replicate"
    with autocast_off(x.device):
        slices = x.float().reshape(-1, 1, h, w)
        padded = torch.nn.functional.pad(slices, (radius, radius, radius, radius), mode=mode)
        smooth = GaussianFilter(spatial_dims=2, sigma=float(sigma), truncated=4.0).to(x.device)(padded)
        smooth = smooth[..., radius : radius + h, radius : radius + w]
    return smooth.reshape(x.shape).to(x.dtype)
