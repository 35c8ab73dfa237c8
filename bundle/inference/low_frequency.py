"""The source's own low frequencies in the output: the local mean HU comes from the scan itself.

Low-dose CT noise lives at high spatial frequencies: in this project's data under 1 % of its
power lies below 1/8 of the Nyquist frequency, where 97 % of the anatomy's power lies
(``scripts/latent_nyquist.py``, ``docs/quality.md``). A band the noise barely touches needs no
denoising, and every change a network makes there is a bias: a shifted insert, a tissue class
moved by a few HU. :func:`keep_source_low_frequencies` replaces the output's in-plane low band
by the source's::

    out = output + G_sigma * (source - output)

``G_sigma`` a 2D Gaussian per slice, ``sigma`` in pixels. Its response is 1/2 at
``f = sqrt(ln 2 / (2 pi^2)) / sigma`` cycles per pixel: ``sigma = 3`` puts it at 1/16 cycle per
pixel (1/8 of Nyquist, the latent grid of the 8x VAE). The source's noise that comes back is the
small share below that band; a constant or slowly varying HU error of the output is removed
exactly.
"""

from __future__ import annotations

import torch

from bundle.networks.frequency import inplane_lowpass


def keep_source_low_frequencies(output_hu: torch.Tensor, source_hu: torch.Tensor, sigma: float) -> torch.Tensor:
    """``output + G_sigma * (source - output)`` per axial slice; ``(..., S, H, W)`` HU tensors of one
    shape; ``sigma`` in pixels (0: the output unchanged). Borders are mirrored
    (:func:`bundle.networks.frequency.inplane_lowpass`)."""
    if sigma <= 0:
        return output_hu
    if output_hu.shape != source_hu.shape:
        raise ValueError(f"output {tuple(output_hu.shape)} and source {tuple(source_hu.shape)} differ in shape.")
    return output_hu + inplane_lowpass((source_hu - output_hu).float(), sigma).to(output_hu.dtype)
