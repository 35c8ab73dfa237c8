"""The one frequency split (``inplane_lowpass``): MONAI's Gaussian filter on mirrored borders, as a
convolution (networks, traced for export) and as two matrix products (whole volumes at inference)."""

from __future__ import annotations

import pytest
import torch
from monai.networks.layers import GaussianFilter

from bundle.networks.frequency import inplane_lowpass, slice_lowpass


def reference(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """MONAI's GaussianFilter per slice on a reflect-padded (replicate when the slice is smaller than
    the kernel) copy, cropped back."""
    h, w = x.shape[-2:]
    radius = int(4 * sigma + 0.5)
    mode = "reflect" if radius < min(h, w) else "replicate"
    padded = torch.nn.functional.pad(x.reshape(-1, 1, h, w), (radius,) * 4, mode=mode)
    smooth = GaussianFilter(spatial_dims=2, sigma=sigma, truncated=4.0)(padded)
    return smooth[..., radius : radius + h, radius : radius + w].reshape(x.shape)


@pytest.mark.parametrize("shape", [(1, 1, 3, 64, 48), (2, 9, 7), (1, 1, 2, 40, 40)])
@pytest.mark.parametrize("sigma", [0.7, 3.0, 6.0])
def test_both_forms_equal_monais_gaussian_on_mirrored_borders(shape, sigma):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 300
    expected = reference(x, sigma)
    assert torch.equal(inplane_lowpass(x, sigma), expected)
    assert torch.allclose(inplane_lowpass(x, sigma, by_matrix=True), expected, atol=1e-3)


def test_a_trace_takes_the_convolution_and_gradients_flow_through_the_matrices():
    x = torch.randn(1, 1, 2, 32, 24, requires_grad=True)
    traced = torch.jit.trace(lambda t: inplane_lowpass(t, 3.0, by_matrix=True), x.detach())
    assert torch.equal(traced(x.detach()), inplane_lowpass(x.detach(), 3.0))
    inplane_lowpass(x, 3.0, by_matrix=True).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("slices", [5, 24])
def test_the_slice_axis_gaussian_is_monais_along_z_on_mirrored_borders(slices):
    x = torch.randn(1, 1, slices, 6, 5, generator=torch.Generator().manual_seed(1)) * 300
    sigma = 1.5
    radius = int(4 * sigma + 0.5)
    lines = x.movedim(-3, -1)
    padded = torch.nn.functional.pad(lines.reshape(-1, 1, slices), (radius, radius),
                                     mode="reflect" if radius < slices else "replicate")
    smooth = GaussianFilter(spatial_dims=1, sigma=sigma, truncated=4.0)(padded)[..., radius : radius + slices]
    expected = smooth.reshape(lines.shape).movedim(-1, -3)
    assert torch.allclose(slice_lowpass(x, sigma), expected, atol=1e-3)
    assert slice_lowpass(x, 0.0) is x
