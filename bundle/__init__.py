"""ct-v2v: a MONAI bundle that enhances low-dose CT with a 3D latent diffusion model.

Layers, each a sub-package with one job, from the bottom (imports only go down,
``tests/test_layers.py``; ``docs/architecture.md`` says why):

- ``bundle.utils``: atomic writes, precision, plain values;
- ``bundle.metrics``: image quality in HU windows and noise in flat regions;
- ``bundle.networks``: the VAE and the conditional U-Net of the specification;
- ``bundle.diffusion``: noise schedule, DDIM sampling, whole-volume tiling;
- ``bundle.dicom``: reading and writing DICOM series;
- ``bundle.data``: HU windows, transforms, datalists, demo phantoms, low-dose simulation;
- ``bundle.inference``: ``CTEnhancer`` (the one network every consumer calls) and the batch tool;
- ``bundle.engines``: training and validation iterations for MONAI/ignite engines;
- ``bundle.evaluation``: the methods compared, baselines, the evaluation run and its report;
- ``bundle.benchmark``: speed, memory and FLOP/s of training and inference (``ctv2v benchmark``);
- ``bundle.commands``: the ``ctv2v`` command line (``bundle.cli``).
"""

__version__ = "0.13.0"
