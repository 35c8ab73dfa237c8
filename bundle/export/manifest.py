"""``export.json``: everything a runner needs besides the three networks, as plain JSON.

A runner without this repository reads the HU windows, the latent scale, the noise schedule (the
float64 ``alphas_cumprod`` table itself, so no schedule code is needed), the DDIM timestep rule,
the output settings and the slab shape from here; ``scripts/run_exported.py`` is the reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bundle.diffusion import DDIMSampler
from bundle.inference.enhancer import AIR_HU
from bundle.inference.low_frequency import MIN_SUPPORT

__all__ = ["FORMAT", "FORMAT_VERSION", "build_manifest", "lowpass_kernel"]

FORMAT = "ctv2v-export"
FORMAT_VERSION = 1


def lowpass_kernel(sigma: float) -> list[float] | None:
    """The 1D Gaussian that :func:`bundle.inference.low_frequency.keep_source_low_frequencies`
    applies along rows and columns, as MONAI builds it (erf kernel, truncated at 4 sigma), so a
    runner needs no Gaussian code of its own; None for ``sigma <= 0`` (the rule is off)."""
    if sigma <= 0:
        return None
    from monai.networks.layers import GaussianFilter
    from monai.networks.layers.convutils import gaussian_1d

    gaussian = GaussianFilter(spatial_dims=2, sigma=float(sigma), truncated=4.0)
    kernel = gaussian_1d(gaussian.sigma[0], truncated=gaussian.truncated, approx=gaussian.approx)
    radius = int(4 * sigma + 0.5)  # the padding keep_source_low_frequencies uses
    if kernel.numel() != 2 * radius + 1:
        raise RuntimeError(f"MONAI's Gaussian for sigma {sigma} has {kernel.numel()} taps, expected {2 * radius + 1}.")
    return [float(v) for v in kernel.detach().to(torch.float32)]


def build_manifest(
    enhancer,
    parts: dict[str, torch.nn.Module],
    inputs: dict[str, tuple[torch.Tensor, ...]],
    outputs: dict[str, torch.Tensor],
    names: dict[str, tuple[str, ...]],
    slab: tuple[int, int, int],
    model_path: Path,
    model_version: str,
    device: str,
) -> dict[str, Any]:
    """The manifest without ``files`` and ``verification`` (the exporter adds those); ``inputs`` and
    ``outputs`` are example tensors of each part, for the shapes."""
    import monai

    from bundle import __version__

    schedule = enhancer.schedule
    # the sampler CTEnhancer builds: default spacing and first timestep (T - 1, or the safe one
    # for epsilon prediction)
    sampler = DDIMSampler(schedule, num_inference_steps=1)
    f = enhancer.vae_factor
    latent_slab = [slab[0], slab[1] // f, slab[2] // f]
    # one window per stage: the runner then computes what CTEnhancer computes on such a volume
    one_window = (
        tuple(latent_slab) == tuple(enhancer.latent_window)
        and all(s <= t for s, t in zip(slab, enhancer.image_tile))
    )
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {
            "file": model_path.name,
            "version": model_version,
            "ctv2v": __version__,
            "torch": torch.__version__,
            "monai": monai.__version__,
        },
        "device": device,
        "dtype": "float32",
        "slab": list(slab),
        "latent_slab": latent_slab,
        "model_window": list(enhancer.latent_window),
        "one_window": one_window,
        "vae_factor": f,
        "air_hu": AIR_HU,
        "hu_windows": {"windows": [list(w) for w in enhancer.windows.windows], "margin": enhancer.windows.margin},
        "scale_factor": float(enhancer.scale_factor),
        "schedule": {**schedule.to_config(), "alphas_cumprod": schedule.alphas_cumprod.tolist()},
        "sampler": {
            "spacing": sampler.spacing,
            "max_timestep": sampler.max_timestep,
            "eta": 0.0,
            "num_inference_steps": int(enhancer.num_inference_steps),
            "strength": float(enhancer.strength),
            "seed": int(enhancer.seed),
        },
        "output": {
            # baked into decode's graph; decode takes the source channels only when the path is live
            "fidelity_path": bool(enhancer.has_fidelity_path),
            "fidelity_weight": parts["decode"].fidelity_weight,
            "residual": bool(enhancer.residual),
            "source_lowpass_sigma": float(enhancer.source_lowpass_sigma),
            "lowpass_kernel": lowpass_kernel(float(enhancer.source_lowpass_sigma)),
            # non-empty: the band per tissue level (bundle.inference.low_frequency), not one Gaussian
            "source_lowpass_levels": [float(v) for v in getattr(enhancer, "source_lowpass_levels", ())],
            "source_lowpass_min_support": float(getattr(enhancer, "source_lowpass_min_support", MIN_SUPPORT)),
            # > 0: the band averaged along slices too, with this 1D Gaussian (slices)
            "source_lowpass_sigma_z": float(getattr(enhancer, "source_lowpass_sigma_z", 0.0)),
            "lowpass_kernel_z": lowpass_kernel(float(getattr(enhancer, "source_lowpass_sigma_z", 0.0))),
        },
        "parts": {
            name: {
                "inputs": {
                    n: {"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch.")}
                    for n, x in zip(names[name], inputs[name])
                },
                "output": {"shape": list(outputs[name].shape), "dtype": str(outputs[name].dtype).removeprefix("torch.")},
            }
            for name in ("encode", "unet", "decode")
        },
    }
