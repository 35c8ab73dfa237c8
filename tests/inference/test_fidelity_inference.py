"""CTEnhancer with a fidelity path and a residual output: off / weight 0 is the spec model exactly,
the ceilings are decode(encode(target)) computed directly, the settings travel in model.pt."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bundle.inference import CTEnhancer
from bundle.inference.enhancer import fold_in_plane, unfold_in_plane
from bundle.networks import ConditionalUNet3D, VideoVAE

TILES = dict(latent_window=(8, 8, 8), latent_overlap=(4, 4, 4), image_tile=(8, 64, 64), image_overlap=(4, 32, 32))
VAE = dict(channels=(8, 16, 16, 16), norm_num_groups=4, num_res_blocks=1, num_mid_blocks=1)


def _perturb(module: nn.Module, seed: int, std: float) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module


def enhancers(**settings) -> tuple[CTEnhancer, CTEnhancer]:
    """(spec model, the same model with a fidelity path whose gates are open): shared weights."""
    torch.manual_seed(0)
    spec_vae = VideoVAE(**VAE)
    unet = _perturb(
        ConditionalUNet3D(model_channels=16, channel_mult=(1, 2, 2, 2), num_heads=2, norm_num_groups=4,
                          time_embed_dim=32, num_res_blocks=1),
        seed=0, std=0.05,
    )
    path_vae = VideoVAE(**VAE, fidelity_channels=[8, 16])
    path_vae.load_state_dict(spec_vae.state_dict(), strict=False)
    _perturb(path_vae.fidelity, seed=1, std=0.5)
    common = {**TILES, "num_inference_steps": 2, "scale_factor": 0.7, **settings}
    return CTEnhancer(spec_vae, unet, **common).eval(), CTEnhancer(path_vae, unet, **common).eval()


def phantom(shape=(1, 8, 64, 64), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    hu = torch.full(shape, -1000.0)
    hu[..., 8:56, 12:52] = 40.0 + 30 * torch.randn((*shape[:-2], 48, 40), generator=g)
    return hu


def test_weight_zero_is_the_spec_model_bitwise():
    spec, with_path = enhancers()
    source = phantom()
    reference = spec.enhance(source).hu
    assert torch.equal(with_path.enhance(source, fidelity_weight=0.0).hu, reference)
    with_path.fidelity_weight = 0.0
    assert torch.equal(with_path(source), reference)
    # the path is live at weight 1
    assert (with_path.enhance(source, fidelity_weight=1.0).hu - reference).abs().max() > 1.0


def test_ceilings_are_decode_encode_of_the_target_computed_directly():
    spec, with_path = enhancers()
    source, target = phantom(seed=1), phantom(seed=2)
    windows = spec.windows
    s, t = windows.to_channels(source[None]), windows.to_channels(target[None])
    with torch.no_grad():  # one tile covers the 8 x 64 x 64 volume: no blending
        plain = windows.to_hu(spec.autoencoder.decode(spec.autoencoder.encode(t)))[0]
        vae = with_path.autoencoder
        through_path = windows.to_hu(vae.decode(vae.encode(t), source=s, fidelity_weight=1.0))[0]
        no_diffusion = windows.to_hu(vae.decode(vae.encode(s), source=s, fidelity_weight=1.0))[0]
    assert torch.allclose(spec.reconstruct(target), plain, atol=1e-3)
    assert torch.allclose(spec.ceiling(source, target), plain, atol=1e-3)  # no path, no residual
    # with a path: reconstruct without a source is the spec's ceiling, ceiling() uses the path
    assert torch.allclose(with_path.reconstruct(target), plain, atol=1e-3)
    assert torch.allclose(with_path.reconstruct(target, source), through_path, atol=1e-3)
    assert torch.allclose(with_path.ceiling(source, target), through_path, atol=1e-3)
    assert (through_path - plain).abs().max() > 1.0
    # the no_diffusion row: the model's formula with the source's own latent
    assert torch.allclose(with_path.ceiling(source, source), no_diffusion, atol=1e-3)


def test_residual_output_is_a_correction_added_to_the_source():
    spec, _ = enhancers(residual=True)
    source, target = phantom(seed=1), phantom(seed=2)
    plain = spec.enhance(source, residual=False).hu
    with torch.no_grad():
        source_recon = spec.reconstruct(source)
    # float32 rounding of ~1000 HU values through the latent scale, amplified by the windows' blend
    # gates where a random network's channels disagree: < 0.5 HU in 0.04 % of the voxels
    assert torch.allclose(spec.enhance(source).hu, source + plain - source_recon, atol=0.5)
    expected_ceiling = source + spec.reconstruct(target) - source_recon
    assert torch.allclose(spec.ceiling(source, target), expected_ceiling, atol=0.5)


class LocalPathVAE(nn.Module):
    """A local stand-in for a VAE with a fidelity path: decode(z, source) = upsampled conv of z
    + weight * conv(source), so tiled decoding must equal untiled up to blending rounding."""

    def __init__(self):
        super().__init__()
        self.config = dict(in_channels=3, out_channels=3, latent_channels=4)
        self.downsample_factor = 8
        self.fidelity = nn.Conv3d(3, 3, 3, padding=1)
        self.encoder = nn.Conv3d(3, 4, 1)
        self.decoder = nn.Conv3d(4, 3, 1)

    def encode(self, x):
        return F.avg_pool3d(self.encoder(x), (1, 8, 8))

    def decode(self, z, source=None, fidelity_weight=1.0):
        out = self.decoder(F.interpolate(z, scale_factor=(1, 8, 8), mode="nearest"))
        return out if source is None else out + fidelity_weight * self.fidelity(source)


def test_tiled_decode_hands_each_tile_its_own_source_region():
    torch.manual_seed(0)
    spec, _ = enhancers()
    enhancer = CTEnhancer(LocalPathVAE(), spec.unet, **TILES).eval()
    source = enhancer.windows.to_channels(phantom((1, 1, 20, 152, 136)))
    latent = torch.randn(1, 4, 20, 19, 17)
    with torch.no_grad():
        whole = enhancer.autoencoder.decode(latent, source=source, fidelity_weight=0.5)
        tiled = enhancer.decode(latent, source, fidelity_weight=0.5)
    assert (tiled - whole).abs().max() <= 1e-4 * whole.abs().max()
    x = torch.randn(2, 3, 4, 16, 24)
    assert torch.equal(unfold_in_plane(fold_in_plane(x, 8), 8), x)


def test_model_file_keeps_the_path_and_output_settings(tmp_path):
    _, with_path = enhancers(fidelity_weight=0.7, residual=True)
    path = tmp_path / "model.pt"
    with_path.save(path)
    state = torch.load(path, weights_only=True)
    assert state["_extra_state"]["autoencoder"]["fidelity_channels"] == [8, 16]
    assert state["_extra_state"]["output"] == {"fidelity_weight": 0.7, "residual": True, "source_lowpass_sigma": 0.0,
                                               "source_lowpass_levels": (), "source_lowpass_min_support": 0.25,
                                               "source_lowpass_sigma_z": 0.0}
    loaded = CTEnhancer.from_file(path, num_inference_steps=2)  # sampler settings are not stored
    assert loaded.has_fidelity_path and loaded.fidelity_weight == 0.7 and loaded.residual is True
    source = phantom()
    assert torch.equal(loaded.enhance(source).hu, with_path.enhance(source).hu)
    overridden = CTEnhancer.from_file(path, fidelity_weight=0.0, residual=False)  # the caller wins
    assert overridden.fidelity_weight == 0.0 and overridden.residual is False


def test_evaluation_ceiling_rows_are_decode_encode_computed_directly():
    """The report's rows (bundle/evaluation/methods.py) for a model with a fidelity path:
    vae_ceiling = decode(encode(target)) (path off), ceiling = decode(encode(target), source),
    no_diffusion = decode(encode(source), source)."""
    from bundle.evaluation.methods import ModelCeiling, NoDiffusion, VAECeiling

    _, with_path = enhancers()
    source, target = phantom(seed=1), phantom(seed=2)
    windows, vae = with_path.windows, with_path.autoencoder
    s, t = windows.to_channels(source[None]), windows.to_channels(target[None])
    with torch.no_grad():
        plain = windows.to_hu(vae.decode(vae.encode(t)))[0]
        through_path = windows.to_hu(vae.decode(vae.encode(t), source=s, fidelity_weight=1.0))[0]
        no_diffusion = windows.to_hu(vae.decode(vae.encode(s), source=s, fidelity_weight=1.0))[0]
    assert torch.allclose(VAECeiling(with_path).enhance(source, target).hu, plain, atol=1e-3)
    row = ModelCeiling(with_path)
    assert row.status is None
    assert torch.allclose(row.enhance(source, target).hu, through_path, atol=1e-3)
    assert torch.allclose(NoDiffusion(with_path).enhance(source).hu, no_diffusion, atol=1e-3)


def test_batch_tool_fidelity_weight_dial(tmp_path):
    """`ctv2v enhance --fidelity-weight 0` on a path model writes the spec model's output, the weight
    is recorded, and a run at another weight is not mistaken for the finished one."""
    import csv
    import json

    import nibabel as nib
    import numpy as np

    from bundle.cli import main
    from bundle.inference.batch import DONE_MARKER

    spec, with_path = enhancers()
    spec.save(tmp_path / "spec.pt")
    with_path.save(tmp_path / "path.pt")
    source = phantom(seed=3)[0].numpy()  # (S, H, W)
    inputs = tmp_path / "in"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(np.ascontiguousarray(source.transpose(2, 1, 0)), np.diag([1.0, 1.0, 2.0, 1.0])),
             str(inputs / "volume.nii.gz"))

    def run(model: str, output: str, *extra: str) -> tuple[np.ndarray, dict]:
        args = ["enhance", str(inputs), str(tmp_path / output), "--model", str(tmp_path / model),
                "--steps", "2", "--device", "cpu", "--no-progress", *extra]
        assert main(args) == 0
        with open(tmp_path / output / "summary.csv", newline="") as f:
            (row,) = list(csv.DictReader(f))
        folder = tmp_path / output / row["output"]
        marker = json.loads((folder / DONE_MARKER).read_text())
        return np.asarray(nib.load(str(folder / "enhanced.nii.gz")).dataobj), marker

    spec_hu, _ = run("spec.pt", "spec")
    off_hu, off_marker = run("path.pt", "off", "--fidelity-weight", "0")
    on_hu, on_marker = run("path.pt", "on")
    np.testing.assert_array_equal(off_hu, spec_hu)
    assert np.abs(on_hu - spec_hu).max() > 1.0
    assert off_marker["settings"]["fidelity_weight"] == 0.0 and on_marker["settings"]["fidelity_weight"] == 1.0
    assert main(["enhance", str(inputs), str(tmp_path / "on"), "--model", str(tmp_path / "path.pt"), "--steps", "2",
                 "--device", "cpu", "--no-progress", "--fidelity-weight", "-1"]) == 2


def test_an_untrained_model_started_from_the_source_returns_its_input():
    """The whole enhancer (tiles, DDIM, decoding to HU) of a fresh model with
    ``fidelity_start="source"`` returns the low-dose input, so training can only add to it."""
    torch.manual_seed(0)
    unet = ConditionalUNet3D(model_channels=16, channel_mult=(1, 2, 2, 2), num_heads=2, norm_num_groups=4,
                             time_embed_dim=32, num_res_blocks=1)
    vae = VideoVAE(**VAE, fidelity_channels=[8, 16], fidelity_start="source")
    enhancer = CTEnhancer(vae, unet, **TILES, num_inference_steps=2, scale_factor=0.7).eval()
    source = phantom(shape=(1, 12, 64, 72))
    source[..., 20:24, 30:34] = 1500.0  # dense bone is kept too, not only soft tissue
    torch.testing.assert_close(enhancer(source), source, rtol=0, atol=0.05)
