"""bundle/inference/band_arguments.py: the study scripts' --source-lowpass-* flags."""

from __future__ import annotations

import argparse

import pytest


def parse(*argv):
    from bundle.inference.band_arguments import add_source_band_arguments

    parser = argparse.ArgumentParser()
    add_source_band_arguments(parser)
    return parser.parse_args(list(argv))


def test_a_band_on_the_command_line_replaces_each_files_own(batch_model):
    # the flags given reach the enhancer (a newer recipe default scored on older model files); absent ones
    # leave the file's own
    from bundle.inference import CTEnhancer
    from bundle.inference.band_arguments import source_band_settings

    band = source_band_settings(parse("--source-lowpass-sigma", "1", "--source-lowpass-levels", "tissue"))
    assert band == {"source_lowpass_sigma": 1.0, "source_lowpass_levels": "tissue"}
    stored = CTEnhancer.from_file(batch_model)
    given = CTEnhancer.from_file(batch_model, **band)
    assert (stored.source_lowpass_sigma, stored.source_lowpass_levels) != (1.0, given.source_lowpass_levels)
    assert given.source_lowpass_sigma == 1.0 and len(given.source_lowpass_levels) > 2
    assert given.source_lowpass_sigma_z == stored.source_lowpass_sigma_z
    assert given.source_lowpass_min_support == stored.source_lowpass_min_support
    assert source_band_settings(parse()) == {}
    assert source_band_settings(parse("--source-lowpass-min-support", "1", "--source-lowpass-sigma-z", "0")) == {
        "source_lowpass_min_support": 1.0, "source_lowpass_sigma_z": 0.0}


def test_a_bad_band_is_refused_where_the_enhancer_is_built(batch_model):
    from bundle.inference import CTEnhancer
    from bundle.inference.band_arguments import source_band_settings
    from bundle.utils.validation import SettingError

    with pytest.raises(SettingError, match="source_lowpass_sigma_z"):
        CTEnhancer.from_file(batch_model, **source_band_settings(parse("--source-lowpass-sigma-z", "-1")))
