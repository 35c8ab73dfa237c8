"""Networks of the specification (docs/architecture.md has its tables and our departures).

- :class:`VideoVAE`: 3D VAE, 8x in-plane compression and none along the slice axis
  (``.encoder``, ``.decoder``, ``encode``/``decode``); :func:`kl_divergence` for its prior term.
- :class:`ConditionalUNet3D`: the denoiser, ``unet(noisy_latent, timesteps, condition)``.

Configs build them from ``configs/common.yaml`` (``autoencoder_def``, ``unet_def``); the blocks in
:mod:`bundle.networks.blocks` are shared by both.
"""

from bundle.networks.unet import ConditionalUNet3D
from bundle.networks.vae import VideoVAE, kl_divergence

__all__ = ["VideoVAE", "ConditionalUNet3D", "kl_divergence"]
