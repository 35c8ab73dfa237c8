"""ct-v2v: a MONAI bundle that enhances low-dose CT with a 3D latent diffusion model.

Layers, each a sub-package with one job:
- ``bundle.networks``: the VAE and the conditional U-Net of the specification;
- ``bundle.diffusion``: noise schedule and DDIM sampling;
- ``bundle.data``: HU windows, transforms, datalists, demo data, low-dose simulation;
- ``bundle.dicom``: reading and writing DICOM series;
- ``bundle.engines``: training and evaluation iterations for monai/ignite engines;
- ``bundle.commands``: the ``ctv2v`` command line.
"""

__version__ = "0.2.0"
