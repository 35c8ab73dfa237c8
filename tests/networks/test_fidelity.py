"""The fidelity path (bundle/networks/fidelity.py): off, or at weight 0, it is the spec decoder."""

from __future__ import annotations

import pytest
import torch

from bundle.networks import VideoVAE
from bundle.networks.fidelity import FidelityPath

FIDELITY = [8, 16, 16]


def _pair(tiny_vae_kwargs, randomize, fidelity=FIDELITY):
    """A spec VAE and the same VAE with a fidelity path: identical spec weights, the path's own
    weights randomised (gates too) so that a path that were evaluated would show."""
    torch.manual_seed(0)
    spec = randomize(VideoVAE(**tiny_vae_kwargs)).eval()
    with_path = VideoVAE(**tiny_vae_kwargs, fidelity_channels=fidelity).eval()
    missing, unexpected = with_path.load_state_dict(spec.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("fidelity.") for k in missing)
    randomize(with_path.fidelity, seed=1, std=0.5)
    return spec, with_path


def test_off_and_weight_zero_equal_the_spec_decoder_bitwise(tiny_vae_kwargs, randomize):
    spec, with_path = _pair(tiny_vae_kwargs, randomize)
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        z = spec.encode(x)
        reference = spec.decode(z)
        assert torch.equal(with_path.encode(x), z)  # the encoder is untouched
        assert torch.equal(with_path.decode(z), reference)  # no source: path off
        assert torch.equal(with_path.decode(z, source=x, fidelity_weight=0.0), reference)
        assert torch.equal(spec.decode(z, source=x), reference)  # a spec VAE ignores a source
        assert torch.equal(with_path(x, sample=False)[0], spec(x, sample=False)[0])
        # the path is live at weight 1 (randomised gates), and the weight scales it
        full = with_path.decode(z, source=x, fidelity_weight=1.0)
        half = with_path.decode(z, source=x, fidelity_weight=0.5)
    assert (full - reference).abs().max() > 1e-3
    assert 0 < (half - reference).abs().max() < (full - reference).abs().max()


def test_gates_start_at_zero_so_a_fresh_path_is_the_spec_decoder(tiny_vae_kwargs):
    torch.manual_seed(0)
    vae = VideoVAE(**tiny_vae_kwargs, fidelity_channels=FIDELITY).eval()
    gates = [skip.gate for skip in vae.fidelity.skips]
    assert len(gates) == len(FIDELITY)
    for gate, channels in zip(gates, tiny_vae_kwargs["channels"]):
        assert gate.weight.shape[:2] == (channels, channels)
    gates.append(vae.fidelity.output_skip.gate)  # the source image into the output
    assert gates[-1].weight.shape[:2] == (6, FIDELITY[0])  # blend and correction
    assert all(torch.count_nonzero(p) == 0 for gate in gates for p in gate.parameters())
    x = torch.randn(1, 3, 8, 32, 32)
    z = vae.encode(x)
    assert torch.equal(vae.decode(z, source=x), vae.decode(z))
    # ... and the gates receive a gradient, so training opens them
    vae.decode(z.detach(), source=x).square().mean().backward()
    assert all(g.weight.grad is not None and g.weight.grad.abs().sum() > 0 for g in gates)


def test_config_records_the_path_only_when_present(tiny_vae_kwargs):
    spec = VideoVAE(**tiny_vae_kwargs)
    with_path = VideoVAE(**tiny_vae_kwargs, fidelity_channels=FIDELITY)
    assert "fidelity_channels" not in spec.config and spec.fidelity is None
    assert with_path.config == {**spec.config, "fidelity_channels": FIDELITY}
    rebuilt = VideoVAE(**with_path.config)  # what a model file does
    assert rebuilt.state_dict().keys() == with_path.state_dict().keys()


def test_fewer_levels_and_shapes(tiny_vae_kwargs):
    vae = VideoVAE(**tiny_vae_kwargs, fidelity_channels=[4]).eval()  # full resolution only
    x = torch.randn(1, 3, 8, 32, 48)
    features = vae.fidelity.source_features(x)
    assert [tuple(f.shape) for f in features] == [(1, 4, 8, 32, 48)]
    assert vae.decode(vae.encode(x), source=x).shape == x.shape
    with pytest.raises(ValueError, match="levels"):
        FidelityPath(3, [8, 16, 16, 16], [8, 16, 16, 16], norm_num_groups=4)
    with pytest.raises(ValueError, match="does not match"):
        vae.decode(vae.encode(x), source=x[..., :16], fidelity_weight=1.0)


def test_common_yaml_defaults_to_no_path(build_common):
    (vae,) = build_common("autoencoder_def")
    assert vae.fidelity is None and "fidelity_channels" not in vae.config


def test_start_from_source_returns_the_source_whatever_the_decoder(tiny_vae_kwargs, randomize):
    """Do no harm: a fresh path started from the source outputs the source exactly, for any
    decoder weights and any latent, and its blend still receives a gradient to move from there."""
    torch.manual_seed(0)
    vae = VideoVAE(**tiny_vae_kwargs, fidelity_channels=FIDELITY, fidelity_start="source")
    randomize(vae.decoder, seed=2, std=0.5)  # a decoder far from the identity
    x = torch.randn(2, 3, 8, 32, 32)
    z = torch.randn(2, tiny_vae_kwargs.get("latent_channels", 4), 8, 4, 4)
    out = vae.decode(z, source=x)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)  # y + (x - y): float rounding
    assert (vae.decode(z) - x).abs().max() > 1e-2  # the decoder alone is not the identity
    (out - torch.randn_like(out)).square().mean().backward()
    assert vae.fidelity.output_skip.gate.weight.grad.abs().sum() > 0
    # the start is an initialisation, not architecture: the same keys, a model file rebuilds it
    assert "fidelity_start" not in vae.config
    assert VideoVAE(**vae.config).state_dict().keys() == vae.state_dict().keys()
    with pytest.raises(ValueError, match="fidelity start"):
        VideoVAE(**tiny_vae_kwargs, fidelity_channels=FIDELITY, fidelity_start="target")


def test_highpass_path_keeps_the_sources_low_band_out_of_the_output(tiny_vae_kwargs, randomize):
    """The frequency split (``fidelity_highpass_sigma``): the output's low band is the decoder's,
    so a slowly varying error of the source (photon-starvation shading) reaches the output only
    through the latent; the source's high band still does, and a fresh path is exactly
    ``G * decoder + (source - G * source)``."""
    from bundle.networks.frequency import inplane_lowpass

    torch.manual_seed(0)
    vae = VideoVAE(**tiny_vae_kwargs, fidelity_channels=FIDELITY, fidelity_start="source",
                   fidelity_highpass_sigma=2.0).eval()
    randomize(vae.decoder, seed=2, std=0.5)
    x = torch.randn(1, 3, 8, 32, 32)
    z = torch.randn(1, 4, 8, 4, 4)
    with torch.no_grad():
        out = vae.decode(z, source=x)
        expected = inplane_lowpass(vae.decode(z), 2.0) + x - inplane_lowpass(x, 2.0)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
        # an offset of each slice (the lowest band) added to the source: gone from the output (to
        # the float sum of the Gaussian kernel), also with trained gates; a whole-source path passes it on
        randomize(vae.fidelity, seed=3, std=0.2)
        offset = 0.3 * torch.randn(1, 3, 8, 1, 1)
        moved = (vae.decode(z, source=x + offset) - vae.decode(z, source=x)).abs().mean()
        whole = VideoVAE(**tiny_vae_kwargs, fidelity_channels=FIDELITY, fidelity_start="source").eval()
        whole.load_state_dict(vae.state_dict())
        whole_moved = (whole.decode(z, source=x + offset) - whole.decode(z, source=x)).abs().mean()
    assert moved < 1e-3 * whole_moved
    # recorded in the model file's config, rebuilt from it; negative sigma is an error
    assert vae.config["fidelity_highpass_sigma"] == 2.0
    assert VideoVAE(**vae.config).fidelity.highpass_sigma == 2.0
    assert "fidelity_highpass_sigma" not in VideoVAE(**tiny_vae_kwargs, fidelity_channels=FIDELITY).config
    with pytest.raises(ValueError, match="highpass_sigma"):
        VideoVAE(**tiny_vae_kwargs, fidelity_channels=FIDELITY, fidelity_highpass_sigma=-1.0)
