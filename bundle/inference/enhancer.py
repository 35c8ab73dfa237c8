"""The one network every consumer calls: source CT in HU -> enhanced CT in HU, any size.

``CTEnhancer`` holds the VAE, the U-Net (its EMA weights after training), the noise schedule,
the HU windows, the latent scale factor and the sampler settings. ``monai.bundle`` inference,
evaluation, the DICOM batch tool, MONAI Deploy and MONAI Label all call it as
``inferer(inputs, network)`` with ``network = CTEnhancer`` loaded from the single
``models/model.pt``.

Whole volumes at native resolution (``enhance``):

1. pad in-plane to a multiple of the VAE factor (air, -1000 HU) and along slices to at least one
   latent window (edge slices repeated); map HU to the window channels;
2. encode in overlapping image tiles (the VAE keeps the slice axis) and blend;
3. run DDIM on the WHOLE latent with one noise field: at every step the U-Net is evaluated on
   overlapping latent windows whose predictions are blended, so neighbouring windows agree and no
   seams appear (``bundle.diffusion.tiling.TiledDenoiser``);
4. decode in overlapping tiles, map channels back to HU, crop the padding away.

Two output settings (stored in ``model.pt``, overridable per call; ``docs/fidelity.md``):

- ``fidelity_weight``: a VAE with a fidelity path (``bundle.networks.fidelity``) decodes with the
  source's features entering through its gated skips, the gates scaled by this weight; 0 is the
  specification's decoder exactly.
- ``residual``: the output is a correction added to the source, in HU:
  ``source + decode(z_enhanced) - decode(encode(source))``; what the bottleneck loses is lost on
  both terms and largely cancels.

``model.pt`` is ``CTEnhancer.state_dict()``: the weights, the scale factor (a buffer) and, in the
module's extra state, the hyper-parameters of both networks, the schedule and the HU windows; it
loads with ``torch.load(weights_only=True)``. :meth:`CTEnhancer.from_file` rebuilds the networks
from that extra state alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from monai.utils import convert_to_dst_type
from torch import nn

from bundle.data.windows import HUWindows
from bundle.diffusion import DDIMSampler, DiffusionSchedule
from bundle.diffusion.tiling import TiledDenoiser, tiled_apply
from bundle.inference.low_frequency import (
    MIN_SUPPORT,
    check_lowpass_levels,
    check_min_support,
    check_sigma_z,
    keep_source_low_frequencies,
)
from bundle.networks import ConditionalUNet3D, VideoVAE
from bundle.utils.io import atomic_torch_save
from bundle.utils.model_files import ModelFileError, describe_contents, load_weights
from bundle.utils.plain import plain
from bundle.utils.precision import PRECISIONS, autocast, resolve_precision
from bundle.utils.validation import (
    SettingError,
    check_bool,
    check_choice,
    check_eta,
    check_fidelity_weight,
    check_lowpass_sigma,
    check_num_samples,
    check_steps,
    check_strength,
    first_error_line,
)

FORMAT = "ctv2v-enhancer"
FORMAT_VERSION = 1
AIR_HU = -1000.0
# tiling geometry, stored in the model file: the U-Net window is the training slab's latent
GEOMETRY = ("latent_window", "latent_overlap", "image_tile", "image_overlap")
# how the output is formed, stored in the model file; a caller's explicit setting wins
OUTPUT = ("fidelity_weight", "residual", "source_lowpass_sigma", "source_lowpass_levels",
          "source_lowpass_min_support", "source_lowpass_sigma_z")
# the settings with a check, each ``check(name, value)``: the value normalised, or one line saying what is allowed
CHECKS = {
    "num_inference_steps": check_steps, "eta": check_eta, "strength": check_strength,
    "num_samples": check_num_samples, "fidelity_weight": check_fidelity_weight, "residual": check_bool,
    "source_lowpass_sigma": check_lowpass_sigma, "source_lowpass_levels": check_lowpass_levels,
    "source_lowpass_min_support": check_min_support, "source_lowpass_sigma_z": check_sigma_z,
}


@dataclass
class Enhancement:
    """Result of :meth:`CTEnhancer.enhance`: the mean over samples and their spread, in HU."""

    hu: torch.Tensor
    uncertainty: torch.Tensor | None = None


class CTEnhancer(nn.Module):
    """Latent diffusion enhancement of a whole CT volume.

    Args:
        autoencoder: the trained ``VideoVAE``.
        unet: the ``ConditionalUNet3D`` (pass the EMA weights).
        schedule: the ``DiffusionSchedule`` the U-Net was trained with.
        hu_windows: the HU windows that map HU to the VAE's channels (list of ``[lo, hi]``).
        scale_factor: latent scale (1 / std of training latents).
        num_inference_steps, eta, strength, num_samples, seed: sampler settings (also per call).
        latent_window: U-Net window in latent voxels (slices, h, w); the training slab's latent.
        latent_overlap: overlap of neighbouring U-Net windows, latent voxels per axis.
        image_tile, image_overlap: VAE encode/decode tiles in image voxels (decode tiles are the
            latent equivalent, divided in-plane by the VAE factor).
        window_batch_size: U-Net windows evaluated together (memory vs speed; 16 halves the U-Net's
            time per step against 4 on the demo model, docs/benchmarks.md).
        precision: autocast of the network calls: ``fp32``, ``bf16``, ``fp16`` (CUDA) or ``auto``
            (bf16 where the device computes it natively, else fp32).
        channels_last: run the networks with ``channels_last_3d`` weights (oneDNN's preferred
            layout on CPUs; measured per device in ``ctv2v benchmark``).
        fidelity_weight: scale of the fidelity path's gates (a VAE with ``.fidelity``); 1 is what
            training used, 0 the specification's decoder. Ignored without a path.
        residual: output ``source + decode(z) - decode(encode(source))`` (HU) instead of
            ``decode(z)``.
        source_lowpass_sigma: 0 (the spec), or the in-plane Gaussian sigma (pixels) below which
            the output's frequencies are the source's own (:mod:`bundle.inference.low_frequency`:
            the band the noise barely reaches, so no HU bias can enter there).
        source_lowpass_levels: that band per tissue level instead of one Gaussian across all of
            them (``"tissue"``: :data:`~bundle.inference.low_frequency.TISSUE_LEVELS`; a list of
            ascending HU; empty: one Gaussian), so a material's level error is corrected inside it
            and not spread over its neighbours.
        source_lowpass_min_support: with levels, the share of the Gaussian's mass below which a
            level's own mean leans towards the plain band's (thin structures; higher brings back
            less of the source's noise).
        source_lowpass_sigma_z: that band's Gaussian along the slices as well (slices; 0: each
            slice alone), so less of the source's noise, drawn slice by slice, comes back.
    """

    def __init__(
        self,
        autoencoder: VideoVAE,
        unet: ConditionalUNet3D,
        schedule: DiffusionSchedule | None = None,
        hu_windows=((-1024, 3072), (-160, 240), (-1000, 200)),
        scale_factor: float = 1.0,
        num_inference_steps: int = 10,
        eta: float = 0.0,
        strength: float = 1.0,
        num_samples: int = 1,
        seed: int = 0,
        latent_window=(8, 16, 16),
        latent_overlap=(2, 4, 4),
        image_tile=(16, 128, 128),
        image_overlap=(2, 32, 32),
        window_batch_size: int = 16,
        fidelity_weight: float = 1.0,
        residual: bool = False,
        source_lowpass_sigma: float = 0.0,
        source_lowpass_levels: Sequence[float] | str = (),
        source_lowpass_min_support: float = MIN_SUPPORT,
        source_lowpass_sigma_z: float = 0.0,
        precision: str = "fp32",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        output = {"fidelity_weight": fidelity_weight, "residual": residual, "source_lowpass_sigma": source_lowpass_sigma,
                  "source_lowpass_levels": source_lowpass_levels, "source_lowpass_min_support": source_lowpass_min_support,
                  "source_lowpass_sigma_z": source_lowpass_sigma_z}
        checked = check_settings({"num_inference_steps": num_inference_steps, "eta": eta, "strength": strength,
                                  "num_samples": num_samples, "precision": precision, **output})
        if precision != "auto":
            resolve_precision(precision, "cuda")  # a known name (the device is checked per call)
        self.precision = precision  # network calls only: tiles, DDIM and HU arithmetic stay float32
        self.autoencoder = autoencoder
        self.unet = unet
        self.schedule = schedule if schedule is not None else DiffusionSchedule()
        self.windows = HUWindows(hu_windows)
        if self.windows.num_channels != autoencoder.config["in_channels"]:
            raise ValueError(
                f"{self.windows.num_channels} HU windows but the VAE takes {autoencoder.config['in_channels']} channels."
            )
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        self.num_inference_steps = num_inference_steps
        self.eta = eta
        self.strength = strength
        self.num_samples = num_samples
        self.seed = seed
        self.latent_window = tuple(latent_window)
        self.latent_overlap = tuple(latent_overlap)
        self.image_tile = tuple(image_tile)
        self.image_overlap = tuple(image_overlap)
        self.window_batch_size = window_batch_size
        for key in OUTPUT:
            setattr(self, key, checked[key])
        self.channels_last = bool(channels_last)

    # --- file format ----------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "autoencoder": dict(self.autoencoder.config),
            "unet": dict(self.unet.config),
            "schedule": self.schedule.to_config(),
            "hu_windows": [list(w) for w in self.windows.windows],
            "geometry": {k: list(getattr(self, k)) for k in GEOMETRY},
            "output": {k: getattr(self, k) for k in OUTPUT},
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} state (format {state.get('format')!r}).")
        mine = self.get_extra_state()
        for key in ("autoencoder", "unet", "hu_windows"):
            if plain(state[key]) != plain(mine[key]):
                raise ValueError(
                    f"the model file's {key} settings {state[key]} differ from this network's {mine[key]}: "
                    "build the network from the file (CTEnhancer.from_file) or fix the config."
                )
        self.schedule = DiffusionSchedule.from_config(state["schedule"])
        # the windows the U-Net was trained on belong to the model, not to the caller's config
        for key, value in state.get("geometry", {}).items():
            setattr(self, key, tuple(value))
        for key, value in state.get("output", {}).items():
            setattr(self, key, CHECKS[key](key, value) if key in CHECKS else value)

    @classmethod
    def from_file(cls, path: str | Path, map_location="cpu", **settings) -> CTEnhancer:
        """Build the networks from the file's own hyper-parameters and load the weights.

        ``settings`` are sampler settings (steps, eta, seed, ...); the tiling geometry and output
        settings (``fidelity_weight``, ``residual``) stored in the file win over a ``settings``
        value only when the caller gives none.
        """
        path = Path(path)
        checked = check_settings(settings)  # a bad setting is the caller's: say so before reading anything
        state = load_weights(path, map_location=map_location)
        extra = state.get("_extra_state") if isinstance(state, dict) else None
        if not isinstance(extra, dict) or extra.get("format") != FORMAT:
            raise ModelFileError(
                path, f"not a ctv2v enhancer model ({describe_contents(state)}; expected the '{FORMAT}' "
                "file that training exports, e.g. models/model.pt)"
            )
        version = extra.get("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ModelFileError(
                path, f"format version {version!r} is newer than this ctv2v reads ({FORMAT_VERSION}): update ctv2v"
            )
        try:
            parts = (
                VideoVAE(**extra["autoencoder"]),
                ConditionalUNet3D(**extra["unet"]),
                DiffusionSchedule.from_config(extra["schedule"]),
            )
            enhancer = cls(*parts, hu_windows=extra["hu_windows"], **settings)
        except SettingError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(
                path, f"its stored architecture cannot be built ({type(error).__name__}: {first_error_line(error)})"
            ) from None
        try:
            enhancer.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError) as error:
            raise ModelFileError(path, f"its weights do not fit the architecture it declares ({_mismatch(error)})") from None
        for key in GEOMETRY:
            if key in settings:
                setattr(enhancer, key, tuple(settings[key]))
        for key in OUTPUT:
            if key in settings:
                setattr(enhancer, key, checked[key])
        return enhancer.eval()

    def save(self, path: str | Path) -> None:
        atomic_torch_save(self.state_dict(), path)

    # --- inference ------------------------------------------------------------------------------
    @property
    def vae_factor(self) -> int:
        return self.autoencoder.downsample_factor

    @property
    def has_fidelity_path(self) -> bool:
        return getattr(self.autoencoder, "fidelity", None) is not None

    def forward(self, source_hu: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, H, W) or (1, S, H, W) HU -> enhanced HU of the same shape (the sample mean).

        A MetaTensor input gives a MetaTensor output with the input's metadata (affine, applied
        operations), so ``Invertd`` and ``SaveImaged`` can follow ``inferer(inputs, network)``.
        """
        enhanced = self.enhance(source_hu).hu
        if isinstance(source_hu, MetaTensor):
            enhanced = convert_to_dst_type(enhanced, source_hu, dtype=torch.float32)[0]
        return enhanced

    @torch.no_grad()
    def enhance(
        self,
        source_hu: torch.Tensor,
        num_inference_steps: int | None = None,
        eta: float | None = None,
        strength: float | None = None,
        num_samples: int | None = None,
        seed: int | None = None,
        progress: bool = False,
        fidelity_weight: float | None = None,
        residual: bool | None = None,
    ) -> Enhancement:
        """Enhance a whole volume; settings default to the module's; ``progress`` shows a tqdm bar
        of the DDIM steps of each sample."""
        given = {"num_inference_steps": num_inference_steps, "eta": eta, "strength": strength,
                 "num_samples": num_samples, "fidelity_weight": fidelity_weight, "residual": residual}
        settings = check_settings({key: getattr(self, key) if value is None else value for key, value in given.items()})
        steps, eta, strength, num_samples, fidelity_weight, residual = settings.values()
        seed = self.seed if seed is None else seed

        if isinstance(source_hu, MetaTensor):  # plain tensors: the tiling indexes thousands of times
            source_hu = source_hu.as_tensor()
        unbatched = source_hu.dim() == 4
        x = source_hu.unsqueeze(0) if unbatched else source_hu
        if x.dim() != 5 or x.shape[1] != 1:
            raise ValueError(f"expected a CT of shape (B, 1, slices, H, W) in HU, got {tuple(source_hu.shape)}.")
        device = self.scale_factor.device
        x = x.to(device=device, dtype=torch.float32)
        self._apply_memory_format()
        with autocast(device, self.precision):
            return self._enhance(x, unbatched, steps, eta, strength, num_samples, seed, progress,
                                 fidelity_weight, residual)

    def _apply_memory_format(self) -> None:
        """Weights in the layout ``channels_last`` asks for (a no-op once they are)."""
        layout = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        if getattr(self, "_memory_format", torch.contiguous_format) is not layout:
            self.autoencoder.to(memory_format=layout)
            self.unet.to(memory_format=layout)
            self._memory_format = layout

    def _enhance(self, x, unbatched, steps, eta, strength, num_samples, seed, progress, fidelity_weight, residual):
        padded, crop = self._pad(x)
        source = self.windows.to_channels(padded)
        condition = self.encode(source) * self.scale_factor
        if residual:  # what the bottleneck does to the source, subtracted from every sample
            source_recon = self.windows.to_hu(self.decode(condition / self.scale_factor, source, fidelity_weight))

        samples = []
        for k in range(num_samples):
            z0 = self.sample_latent(condition, steps, eta, strength, seed + k, progress)
            hu = self.windows.to_hu(self.decode(z0 / self.scale_factor, source, fidelity_weight))
            if residual:
                hu = padded + (hu - source_recon)
            hu = self._keep_source_band(hu, padded)
            samples.append(hu[crop])
        stack = torch.stack(samples)
        mean = stack.mean(0)
        spread = stack.std(0, unbiased=False) if num_samples > 1 else None
        if unbatched:
            mean = mean[0]
            spread = spread[0] if spread is not None else None
        return Enhancement(hu=mean, uncertainty=spread)

    @torch.no_grad()
    def sample_latent(
        self, condition: torch.Tensor, steps: int, eta: float, strength: float, seed: int, progress: bool = False
    ) -> torch.Tensor:
        """One DDIM sample of the enhanced latent (scaled, like ``condition``: the source's
        ``encode(...) * scale_factor``), the U-Net applied in overlapping latent windows."""
        device = condition.device
        sampler = DDIMSampler(self.schedule, num_inference_steps=steps, eta=eta)
        denoiser = TiledDenoiser(
            self.unet, window=self.latent_window, overlap=self.latent_overlap,
            window_batch_size=self.window_batch_size,
        )
        generator = torch.Generator(device=device).manual_seed(seed)
        noise = torch.randn(condition.shape, generator=generator, device=device)
        z = noise if strength >= 1 else sampler.start_from(condition, strength, noise)
        return sampler.sample(lambda z_t, t: denoiser(z_t, t, condition), z, generator=generator, strength=strength,
                              progress=progress)

    @torch.no_grad()
    def reconstruct(
        self, hu: torch.Tensor, source_hu: torch.Tensor | None = None, fidelity_weight: float | None = None
    ) -> torch.Tensor:
        """decode(encode(hu)) in HU: the specification's ceiling of any latent model on this volume.

        With ``source_hu`` (same shape) and a fidelity path, the decoder also gets the source's
        features (gates scaled by ``fidelity_weight``, default the module's): the ceiling of the
        path, decode(encode(target), source). Without ``source_hu`` the path is off.
        """
        unbatched = hu.dim() == 4
        self._apply_memory_format()
        padded, crop = self._pad(hu.unsqueeze(0) if unbatched else hu)
        source = None
        if source_hu is not None:
            source = self.windows.to_channels(self._pad(source_hu.unsqueeze(0) if unbatched else source_hu)[0])
        weight = self.fidelity_weight if fidelity_weight is None else fidelity_weight
        out = self.windows.to_hu(self.decode(self.encode(self.windows.to_channels(padded)), source, weight))[crop]
        return out[0] if unbatched else out

    @torch.no_grad()
    def ceiling(self, source_hu: torch.Tensor, target_hu: torch.Tensor) -> torch.Tensor:
        """The best this model's output can be: its output formula (fidelity path and residual as
        configured) with the denoised latent replaced by the target's own, in HU.

        Without a path and residual it is :meth:`reconstruct` of the target.
        """
        best = self.reconstruct(target_hu, source_hu if self.has_fidelity_path else None)
        if self.residual:
            best = source_hu + best - self.reconstruct(source_hu, source_hu if self.has_fidelity_path else None)
        return self._keep_source_band(best, source_hu)

    def _keep_source_band(self, output_hu: torch.Tensor, source_hu: torch.Tensor) -> torch.Tensor:
        return keep_source_low_frequencies(output_hu, source_hu, self.source_lowpass_sigma,
                                           self.source_lowpass_levels, self.source_lowpass_min_support,
                                           self.source_lowpass_sigma_z)

    def encode(self, channels: torch.Tensor) -> torch.Tensor:
        """Posterior mean of the VAE, in overlapping image tiles."""
        return tiled_apply(
            self.autoencoder.encode, channels, window=self.image_tile, overlap=self.image_overlap,
            out_channels=self.autoencoder.config["latent_channels"], scale=(1, 1 / self.vae_factor, 1 / self.vae_factor),
        )

    def decode(
        self, latent: torch.Tensor, source: torch.Tensor | None = None, fidelity_weight: float | None = None
    ) -> torch.Tensor:
        """Decode in overlapping tiles; ``source`` (window channels on the image grid) feeds the
        fidelity path, if the VAE has one and the weight is not 0."""
        f = self.vae_factor
        window = (self.image_tile[0], self.image_tile[1] // f, self.image_tile[2] // f)
        overlap = (self.image_overlap[0], self.image_overlap[1] // f, self.image_overlap[2] // f)
        weight = self.fidelity_weight if fidelity_weight is None else fidelity_weight
        if source is None or not self.has_fidelity_path or weight == 0:
            return tiled_apply(
                self.autoencoder.decode, latent, window=window, overlap=overlap,
                out_channels=self.autoencoder.config["out_channels"], scale=(1, f, f),
            )
        # the source rides along on the latent grid (f x f pixels folded into channels), so each
        # latent tile meets exactly its own image tile
        return tiled_apply(
            lambda z, packed: self.autoencoder.decode(z, source=unfold_in_plane(packed, f), fidelity_weight=weight),
            latent, window=window, overlap=overlap, out_channels=self.autoencoder.config["out_channels"],
            scale=(1, f, f), spatial_inputs=(fold_in_plane(source, f),),
        )

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, ...]]:
        """Pad in-plane with air to a multiple of the VAE factor and at least one window, and
        along slices (edge repeat) to at least one latent window; return the crop that undoes it."""
        _, _, s, h, w = x.shape
        f = self.vae_factor
        min_h, min_w = self.latent_window[1] * f, self.latent_window[2] * f
        new_h = max(min_h, -(-h // f) * f)
        new_w = max(min_w, -(-w // f) * f)
        new_s = max(s, self.latent_window[0])
        if (new_s, new_h, new_w) != (s, h, w):
            x = nn.functional.pad(x, (0, new_w - w, 0, new_h - h), value=AIR_HU)
            if new_s > s:
                x = torch.cat([x, x[:, :, -1:].expand(-1, -1, new_s - s, -1, -1)], dim=2)
        return x, (slice(None), slice(None), slice(0, s), slice(0, h), slice(0, w))


# what from_file passes on to the constructor: everything but the networks and what the file holds
_SETTINGS = tuple(
    name for name in inspect.signature(CTEnhancer.__init__).parameters
    if name not in ("self", "autoencoder", "unet", "schedule", "hu_windows")
)


def check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` checked: each with a check (:data:`CHECKS`, ``precision``) refused with one line
    (:class:`~bundle.utils.validation.SettingError`) or normalised, an unknown name refused; returns
    the normalised settings."""
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise TypeError(f"unknown CTEnhancer setting(s) {', '.join(unknown)}; known: {', '.join(_SETTINGS)}")
    checked = {key: CHECKS[key](key, value) if key in CHECKS else value for key, value in settings.items()}
    if "precision" in settings:
        check_choice("precision", settings["precision"], [*PRECISIONS, "auto"])
    return checked


def _mismatch(error: BaseException) -> str:
    """The first specific line of a ``load_state_dict`` error (``size mismatch for ...``)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    details = [line for line in lines[1:] if not line.startswith("Error(s)")] or lines[:1]
    more = f" and {len(details) - 1} more" if len(details) > 1 else ""
    first = details[0] if details else type(error).__name__
    return (first if len(first) <= 240 else first[:237] + "...") + more


def fold_in_plane(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``(B, C, S, H, W) -> (B, C * factor**2, S, H / factor, W / factor)``: each ``factor x factor``
    in-plane block into channels (a 3D pixel-unshuffle that leaves slices alone)."""
    b, c, s, h, w = x.shape
    x = x.reshape(b, c, s, h // factor, factor, w // factor, factor)
    return x.permute(0, 1, 4, 6, 2, 3, 5).reshape(b, c * factor * factor, s, h // factor, w // factor)


def unfold_in_plane(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Inverse of :func:`fold_in_plane`."""
    b, cff, s, h, w = x.shape
    c = cff // (factor * factor)
    x = x.reshape(b, c, factor, factor, s, h, w)
    return x.permute(0, 1, 4, 5, 2, 6, 3).reshape(b, c, s, h * factor, w * factor)

