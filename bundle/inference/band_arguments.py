"""The source band as command-line flags for the study scripts (``scripts/bone_bias.py``,
``scripts/realisation_spread.py``, ``scripts/lesion_transfer.py``): one band applied to every model
file they score, each flag absent leaving each file's own (``ctv2v enhance`` has its own flags,
checked beside its others)."""

from __future__ import annotations

import argparse

# flag -> (CTEnhancer setting, type, help)
FLAGS = {
    "--source-lowpass-sigma": ("source_lowpass_sigma", float, "the source band's in-plane Gaussian (px)"),
    "--source-lowpass-levels": ("source_lowpass_levels", str, "the band per tissue level ('tissue', 'none', or HU values)"),
    "--source-lowpass-min-support": ("source_lowpass_min_support", float, "with levels: their support threshold"),
    "--source-lowpass-sigma-z": ("source_lowpass_sigma_z", float, "the band's Gaussian along the slices (slices)"),
}


def add_source_band_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the four ``--source-lowpass-*`` flags (default None: each model file's own)."""
    for flag, (_, kind, text) in FLAGS.items():
        parser.add_argument(flag, type=kind, default=None, help=f"{text} instead of each model file's")


def source_band_settings(opts: argparse.Namespace) -> dict:
    """The flags given, as ``CTEnhancer.from_file`` settings (checked there); the rest left out."""
    values = {setting: getattr(opts, setting, None) for setting, _, _ in FLAGS.values()}
    return {setting: value for setting, value in values.items() if value is not None}
