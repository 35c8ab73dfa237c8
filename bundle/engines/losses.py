"""Reconstruction losses of the VAE (pre-training and phase 2), on HU-window channels in [-1, 1].

L1 alone is the spec's recipe; it is dominated by the large, flat regions and lets an
autoencoder blur edges and fine texture, which is what the soft-tissue window shows. Optional
terms push on exactly that, none needs downloaded weights:

- ``ssim``: 1 - SSIM per axial slice (2D Gaussian window, MONAI's ``SSIMLoss``, data range 2);
- ``gradient``: L1 of the finite differences along rows, columns and slices (edges);
- ``frequency``: L1 of the difference of the in-plane 2D spectra (orthonormal FFT), which
  weighs every spatial frequency alike where pixel L1 is mostly low frequencies;
- ``mse``: the mean squared error, what PSNR measures (L1 estimates a median, MSE a mean);
- ``class_bias``: per tissue class, the absolute MEAN error (signed errors averaged first), so
  a level shift of a whole class (fat read 5 HU low) costs its full size, where L1 and MSE pay
  it only in proportion to the class's share of the crop and among its noise. Classes are HU
  ranges (:data:`bundle.metrics.hu_accuracy.HU_CLASSES`) of the target decoded from its
  windows (``hu_windows``) and smoothed in-plane, so that the target's own noise does not pick
  the voxels (selecting by a noisy value biases the selected mean).
- ``edge``: the squared error where the anatomy has an edge, each voxel weighted by the in-plane
  gradient of the smoothed target's HU up to ``edge_threshold`` HU per pixel (weight 1 from there
  on). A 100 HU fat-water edge counts as much as a bone edge, where the mean squared error pays a
  blurred low-contrast edge only in proportion to its few voxels and its small contrast, and the
  gradient term's finite differences of a noisy target are mostly that noise.
- ``lesion``: the squared error where synthetic lesions were painted into the crop (the map
  :class:`bundle.data.lesions.RandLesionInsertd` writes with ``mask_key``, passed as ``lesion=``).
  A squared-error denoiser keeps a quarter of a 2.5 mm sphere's contrast and half of a 5 mm one's
  (docs/quality.md, "Lesion insertion"): the loss pays faint small blobs in proportion to their few
  voxels, and this term prices their loss by itself. At 500 on the demo (lesion voxels 21x) it kept
  no more of them (docs/quality.md, "A loss on the inserted lesions themselves").
- ``texture``: the mean |log| ratio of the output's to the target's radially averaged in-plane
  power spectrum, per sample and channel over the crop's slices, in the bins from
  ``texture_min_frequency`` (a fraction of the Nyquist frequency) up to Nyquist. Every term
  above is an error of the output against one noisy target, whose minimiser is the conditional
  MEAN: a smooth image whose leftover noise sits at low frequencies (the NPS mean frequency 0.80
  of the full-dose scan's on the real CT at 10 %). The target's noise is independent of the
  source's, so no error term can ask for full-dose texture; a spectrum compares power per
  frequency whatever the phase, so this term asks for the target's power where the anatomy
  holds little and the noise most (a texture statistic, like a Gram matrix, not an error).
  ``texture_region="flat"`` reads the spectra where the evaluation reads noise (TG-233): each
  image minus its in-plane local mean, in the target's flat soft tissue only (the smoothed
  target's HU in ``FLAT_HU`` with an in-plane gradient under ``FLAT_GRADIENT_HU`` per pixel,
  ``FLAT_MARGIN`` pixels in from anything else). Over a whole crop the rings above a quarter of
  Nyquist still hold mostly the anatomy's edges, which the path can sharpen to meet the term
  without touching its noise (measured: the crop's top ring 0.84 -> 0.94 of the target's, the
  flat regions' NPS unchanged).

``channel_weights`` weigh the window channels in the L1, gradient and frequency terms. Equal
weights (the spec) make one unit of error cost the same in every channel, so a HU error costs
10x less in the full-range channel [-1024, 3072] than in the soft-tissue one [-160, 240]; bone,
which only the full-range channel resolves, is then cheap to get wrong. Weights proportional to
the window widths make a HU error cost the same in every channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import SSIMLoss

from bundle.data.windows import HUWindows
from bundle.metrics.hu_accuracy import HU_CLASSES
from bundle.networks.frequency import inplane_lowpass

__all__ = ["TEXTURE_REGIONS", "ReconstructionLoss", "fidelity_path_loss", "radial_power_spectrum"]

TEXTURE_REGIONS = ("crop", "flat")  # where the texture term reads the spectra
# the texture term's flat soft tissue (``texture_region="flat"``), read in the smoothed target's HU
# as bundle.metrics.noise.find_flat_region reads a clean volume: soft-tissue HU, no edge nearby
FLAT_HU = (-150.0, 200.0)
FLAT_GRADIENT_HU = 8.0  # HU per pixel: the 5x5-smoothed full-dose noise's gradient is ~2, a 100 HU edge's ~20
FLAT_MARGIN = 2         # pixels in from the mask's edge; also the local mean's half side


class ReconstructionLoss:
    """``l1 * L1 + ssim * (1 - SSIM) + gradient * L1(grad) + frequency * L1(FFT) + mse * MSE
    + class_bias * mean |class mean error| + edge * mean(edge weight * squared error)
    + lowpass * MSE(G_sigma * error) + lesion * mean(lesion map * squared error)
    + transfer * mean(lesion map * (response - signal)^2) + texture * mean |log P_recon(f) / P_target(f)|``.

    Args:
        l1, ssim, gradient, frequency, mse, class_bias, edge, lowpass, lesion, transfer, texture: term weights (0
            leaves a term out, not even computed).
        channel_weights: one weight per channel for the L1, gradient, frequency, MSE, edge, low-pass
            and class bias terms (a weighted mean over channels); None = all channels alike (plain means,
            the spec).
        hu_windows: the ``[[lo, hi], ...]`` windows of the channels; needed by ``class_bias`` and
            ``edge``.
        class_smoothing: in-plane side (pixels, odd) of the box filter applied to the target's HU
            before it is classed or its edges are measured.
        class_min_voxels: a class counts in a sample from this many voxels on.
        edge_threshold: in-plane gradient (HU per pixel, central differences of the smoothed target)
            from which a voxel weighs fully in the ``edge`` term; below it in proportion.
        lowpass_sigma: in-plane Gaussian sigma (pixels) of the ``lowpass`` term's blur.
        texture_min_frequency: the ``texture`` term's lowest radial frequency, as a fraction of the
            Nyquist frequency (below it the anatomy's power dominates and the error terms rule).
        texture_region: where the ``texture`` term reads the spectra: ``"crop"`` (the whole crop)
            or ``"flat"`` (the target's flat soft tissue, each image minus its local mean; needs
            ``hu_windows``).

    ``loss(recon, target, lesion=None, response=None, signal=None) -> (total, {term: float})`` with
    ``(B, C, T, H, W)`` inputs and ``lesion`` a ``(B, 1, T, H, W)`` map in [0, 1] (needed when ``lesion``
    or ``transfer`` > 0); the terms are computed in float32 whatever the autocast precision.

    ``transfer`` prices the network's response to the synthetic lesions rather than its error:
    ``response`` is its output on the crop minus its output on the same crop without them (the same
    noise in both, so the noise cancels), ``signal`` the lesions themselves (the input minus the input
    without them); 1 - transfer of a sphere is what the term sees (``scripts/lesion_transfer.py``
    measures the same quantity). ``fidelity_loss#lesion``'s squared error on the lesion voxels is
    dominated by the noise there; this term is not (a signal-promoting loss after Lantz et al.,
    arXiv:2402.10010).
    """

    def __init__(
        self,
        l1: float = 1.0,
        ssim: float = 0.0,
        gradient: float = 0.0,
        frequency: float = 0.0,
        channel_weights=None,
        mse: float = 0.0,
        class_bias: float = 0.0,
        hu_windows=None,
        class_smoothing: int = 5,
        class_min_voxels: int = 64,
        edge: float = 0.0,
        edge_threshold: float = 20.0,
        lowpass: float = 0.0,
        lowpass_sigma: float = 1.0,
        lesion: float = 0.0,
        transfer: float = 0.0,
        texture: float = 0.0,
        texture_min_frequency: float = 0.25,
        texture_region: str = "crop",
    ) -> None:
        if channel_weights is not None:
            channel_weights = torch.as_tensor(channel_weights, dtype=torch.float32).flatten()
            if channel_weights.numel() == 0 or (channel_weights < 0).any() or not channel_weights.sum() > 0:
                raise ValueError(f"channel_weights must be >= 0 with a positive sum, got {channel_weights.tolist()}.")
        self.channel_weights = channel_weights
        self.weights = {"l1": float(l1), "ssim": float(ssim), "gradient": float(gradient), "frequency": float(frequency),
                        "mse": float(mse), "class_bias": float(class_bias), "edge": float(edge),
                        "lowpass": float(lowpass), "lesion": float(lesion), "transfer": float(transfer),
                        "texture": float(texture)}
        if any(w < 0 for w in self.weights.values()):
            raise ValueError(f"reconstruction loss weights must be >= 0, got {self.weights}.")
        if not any(self.weights.values()):
            raise ValueError("at least one reconstruction loss weight must be > 0.")
        if class_bias > 0 and hu_windows is None:
            raise ValueError("class_bias needs hu_windows: the target's HU picks each voxel's tissue class.")
        if edge > 0 and hu_windows is None:
            raise ValueError("edge needs hu_windows: the target's HU gradient picks the edge voxels.")
        if not edge_threshold > 0:
            raise ValueError(f"edge_threshold must be > 0 HU per pixel, got {edge_threshold}.")
        if lowpass > 0 and not lowpass_sigma > 0:
            raise ValueError(f"lowpass_sigma must be > 0 pixels for the lowpass term, got {lowpass_sigma}.")
        if not 0 <= texture_min_frequency < 1:
            raise ValueError(f"texture_min_frequency must be in [0, 1) of the Nyquist frequency, got {texture_min_frequency}.")
        if texture_region not in TEXTURE_REGIONS:
            raise ValueError(f"texture_region must be one of {TEXTURE_REGIONS}, got {texture_region!r}.")
        if texture > 0 and texture_region == "flat" and hu_windows is None:
            raise ValueError("texture_region 'flat' needs hu_windows: the target's HU picks its flat soft tissue.")
        if class_smoothing < 1 or class_smoothing % 2 == 0:
            raise ValueError(f"class_smoothing must be an odd number of pixels >= 1, got {class_smoothing}.")
        self.hu_windows = HUWindows(hu_windows) if hu_windows is not None else None
        self.class_smoothing = int(class_smoothing)
        self.class_min_voxels = int(class_min_voxels)
        self.edge_threshold = float(edge_threshold)
        self.lowpass_sigma = float(lowpass_sigma)
        self.texture_min_frequency = float(texture_min_frequency)
        self.texture_region = texture_region
        self._ssim = SSIMLoss(spatial_dims=2, data_range=2.0, win_size=7, kernel_sigma=1.5) if ssim > 0 else None

    def __call__(self, recon: torch.Tensor, target: torch.Tensor, lesion: torch.Tensor | None = None,
                 response: torch.Tensor | None = None,
                 signal: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        if (self.weights["lesion"] or self.weights["transfer"]) and lesion is None:
            raise ValueError("the lesion and transfer loss terms need the crops' lesion maps: train with "
                             "lesion_insertion > 0 (RandLesionInsertd with mask_key) and pass the batch's map as lesion=.")
        if self.weights["transfer"] and (response is None or signal is None):
            raise ValueError("the transfer loss term needs response= (the output minus the output without the "
                             "lesions) and signal= (the input minus the input without them).")

        def plain(x):
            return None if x is None else x.float()

        # float32 outside autocast: SSIM's local variances (E[x^2] - E[x]^2) in bfloat16 cancel to
        # negative values and the loss to -inf (measured on the demo)
        with torch.autocast(recon.device.type, enabled=False):
            return self._terms(recon.float(), target.float(), plain(lesion), plain(response), plain(signal))

    def _terms(self, recon: torch.Tensor, target: torch.Tensor, lesion: torch.Tensor | None,
               response: torch.Tensor | None = None,
               signal: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        values = {}
        if self.weights["l1"]:
            values["l1"] = (
                F.l1_loss(recon, target) if self.channel_weights is None else self._mean((recon - target).abs())
            )
        if self.weights["ssim"]:
            values["ssim"] = self._ssim(_slices(recon), _slices(target))
        if self.weights["gradient"]:
            values["gradient"] = sum(
                self._mean((torch.diff(recon, dim=d) - torch.diff(target, dim=d)).abs()) for d in (2, 3, 4)
            ) / 3
        if self.weights["frequency"]:
            diff = torch.fft.rfft2(recon, norm="ortho") - torch.fft.rfft2(target, norm="ortho")
            values["frequency"] = self._mean(diff.abs())
        if self.weights["mse"]:
            values["mse"] = self._mean((recon - target).square())
        if self.weights["lowpass"]:
            values["lowpass"] = self._mean(inplane_lowpass(recon - target, self.lowpass_sigma).square())
        # the smoothed target's HU, once for both terms that read the anatomy
        flat_texture = self.weights["texture"] and self.texture_region == "flat"
        hu = self._smoothed_hu(target) if self.weights["class_bias"] or self.weights["edge"] or flat_texture else None
        if self.weights["class_bias"]:
            values["class_bias"] = self._class_bias(recon, target, hu)
        if self.weights["edge"]:
            values["edge"] = self._mean(self._edge_weight(hu) * (recon - target).square())
        if self.weights["lesion"]:
            if lesion.shape[0] != recon.shape[0] or lesion.shape[2:] != recon.shape[2:]:
                raise ValueError(f"lesion map of shape {tuple(lesion.shape)} for a reconstruction of {tuple(recon.shape)}.")
            values["lesion"] = self._mean(lesion.to(recon.device) * (recon - target).square())
        if self.weights["transfer"]:
            if response.shape != recon.shape or signal.shape != recon.shape or lesion.shape[2:] != recon.shape[2:]:
                raise ValueError(f"transfer term: response {tuple(response.shape)}, signal {tuple(signal.shape)} and "
                                 f"lesion map {tuple(lesion.shape)} for a reconstruction of {tuple(recon.shape)}.")
            values["transfer"] = self._mean(lesion.to(recon.device) * (response - signal.to(recon.device)).square())
        if self.weights["texture"]:
            if flat_texture:
                # the same flat mask for both, so that its own spectrum (a window) cancels in the ratio
                flat = _flat_tissue(hu)
                recon_texture, target_texture = flat * _minus_local_mean(recon), flat * _minus_local_mean(target)
            else:
                recon_texture, target_texture = recon, target
            with torch.no_grad():
                target_power = radial_power_spectrum(target_texture, self.texture_min_frequency)
            recon_power = radial_power_spectrum(recon_texture, self.texture_min_frequency)
            # relative to the target's mean power in the band, so that a bin the target leaves empty
            # (a crop clipped flat by its window) neither explodes the log nor weighs
            floor = 1e-3 * target_power.mean(dim=-1, keepdim=True) + 1e-12
            log_ratio = torch.log(recon_power + floor) - torch.log(target_power + floor)
            values["texture"] = self._mean(log_ratio.abs())
        total = sum(self.weights[k] * v for k, v in values.items())
        return total, {k: float(v.detach()) for k, v in values.items()}

    def _mean(self, error: torch.Tensor) -> torch.Tensor:
        """Mean of ``(B, C, ...)`` errors; with channel weights, their weighted mean over channels."""
        if self.channel_weights is None:
            return error.mean()
        if error.shape[1] != self.channel_weights.numel():
            raise ValueError(f"{self.channel_weights.numel()} channel weights for {error.shape[1]} channels.")
        per_channel = error.transpose(0, 1).reshape(error.shape[1], -1).mean(dim=1)
        weights = self.channel_weights.to(per_channel.device)
        return (weights * per_channel).sum() / weights.sum()

    @torch.no_grad()
    def _smoothed_hu(self, target: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, H, W) HU of the target through a replicate-padded in-plane box filter: the
        smoothed anatomy, so that the target's own noise neither picks classes nor makes edges."""
        hu = self.hu_windows.to_hu(target, channel_dim=1)
        k = self.class_smoothing
        if k > 1:
            hu = _inplane_box_mean(hu, k)
        return hu

    @torch.no_grad()
    def _edge_weight(self, hu: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, H, W) in [0, 1]: the in-plane gradient magnitude of ``hu`` (the smoothed
        target's, central differences, HU per pixel) over ``edge_threshold``, capped at 1."""
        return (_inplane_gradient(hu) / self.edge_threshold).clamp(max=1.0)

    def _class_bias(self, recon: torch.Tensor, target: torch.Tensor, hu: torch.Tensor) -> torch.Tensor:
        """Mean over the (sample, class) pairs present of the channel-weighted |mean error| there;
        ``hu``: the smoothed target's (B, 1, T, H, W), whose ranges class the voxels."""
        with torch.no_grad():
            masks = torch.cat([(hu >= lo) & (hu < hi) for lo, hi in HU_CLASSES.values()], dim=1).flatten(2).float()
            counts = masks.sum(-1)  # (B, K)
            present = counts >= self.class_min_voxels
        if not present.any():
            return recon.new_zeros(())
        error = (recon - target).flatten(2)  # (B, C, N)
        class_mean = torch.einsum("bcn,bkn->bkc", error, masks) / counts.clamp(min=1)[..., None]  # (B, K, C)
        # (pairs, C): _mean's per-channel means over the pairs, weighted across channels
        return self._mean(class_mean[present].abs())


def _inplane_gradient(hu: torch.Tensor) -> torch.Tensor:
    """The in-plane gradient magnitude of ``(B, 1, T, H, W)`` ``hu`` (central differences, replicate
    edges), HU per pixel."""
    hu = F.pad(hu, (1, 1, 1, 1, 0, 0), mode="replicate")
    gy = (hu[..., 2:, 1:-1] - hu[..., :-2, 1:-1]) / 2
    gx = (hu[..., 1:-1, 2:] - hu[..., 1:-1, :-2]) / 2
    return torch.sqrt(gx.square() + gy.square())


@torch.no_grad()
def _flat_tissue(hu: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, H, W) float mask of the flat soft tissue of ``hu`` (the smoothed target's HU): in
    :data:`FLAT_HU`, an in-plane gradient (central differences) under :data:`FLAT_GRADIENT_HU` per
    pixel, and :data:`FLAT_MARGIN` pixels in from anything else, so that the local mean of
    :func:`_minus_local_mean` reads one tissue."""
    flat = (hu >= FLAT_HU[0]) & (hu <= FLAT_HU[1]) & (_inplane_gradient(hu) < FLAT_GRADIENT_HU)
    # erode in-plane: a voxel stays when no voxel within the margin left the mask
    k = 2 * FLAT_MARGIN + 1
    outside = F.max_pool3d(F.pad((~flat).float(), (FLAT_MARGIN,) * 4 + (0, 0), value=1.0), (1, k, k), stride=1)
    return 1.0 - outside


def _inplane_box_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, C, T, H, W)`` ``x`` through an in-plane ``size x size`` box filter (odd ``size``, replicate edges)."""
    return F.avg_pool3d(F.pad(x, (size // 2,) * 4 + (0, 0), mode="replicate"), (1, size, size), stride=1)


def _minus_local_mean(x: torch.Tensor, size: int = 2 * FLAT_MARGIN + 1) -> torch.Tensor:
    """``x`` minus its in-plane ``size x size`` box mean: in flat tissue, its noise."""
    return x - _inplane_box_mean(x, size)


def radial_power_spectrum(x: torch.Tensor, min_frequency: float = 0.0) -> torch.Tensor:
    """``(B, C, T, H, W) -> (B, C, bins)``: the in-plane power spectrum of each slice (orthonormal
    2D DFT of the slice minus its mean), averaged over the slices and over rings of radial frequency
    one DFT step wide, from ``min_frequency`` up to the Nyquist frequency (fractions of it; the
    coarser axis's). The rings are those of :func:`bundle.metrics.nps.noise_power_spectrum`."""
    h, w = x.shape[-2:]
    power = torch.fft.rfft2(x - x.mean(dim=(-2, -1), keepdim=True), norm="ortho").abs().square().mean(dim=2)
    fy = torch.fft.fftfreq(h, device=x.device).abs() / 0.5
    fx = torch.fft.rfftfreq(w, device=x.device) / 0.5
    radius = torch.sqrt(fy[:, None].square() + fx[None, :].square())  # fractions of Nyquist
    bins = min(h, w) // 2
    which = torch.floor(radius * bins).long()
    first = int(min_frequency * bins)
    keep = (which >= first) & (which < bins)
    # rfft2 holds the columns 1..W/2-1 once for two conjugate halves: weigh them twice, as a full DFT would
    weight = torch.ones_like(radius)
    weight[:, 1 : (w + 1) // 2] = 2.0
    rings = F.one_hot(which[keep] - first, bins - first).to(x.dtype) * weight[keep][:, None]  # (N, rings)
    rings = rings / rings.sum(dim=0).clamp(min=1e-12)
    return power.flatten(-2)[..., keep.flatten()] @ rings


def _slices(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B * T, C, H, W): axial slices as 2D images."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def fidelity_path_loss(loss: ReconstructionLoss, vae, z: torch.Tensor, source: torch.Tensor, target: torch.Tensor,
                       batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """The fidelity path's term, as the VAE stage and phase 2 train it: ``loss`` on the decoder's
    output from latent ``z`` and the crop's ``source``, with the batch's lesion map; with the
    ``transfer`` term, the same decode again on the crop without its lesions (``source_plain``, from
    :class:`bundle.data.lesions.RandLesionInsertd`) gives the path's response to them."""
    recon = vae.decode(z, source=source)
    extra = {}
    if getattr(loss, "weights", {}).get("transfer"):
        if "source_plain" not in batch:
            raise ValueError("the transfer loss term needs the crops without their lesions (source_plain): train "
                             "with lesion_insertion > 0.")
        plain = batch["source_plain"].to(source.device, source.dtype)
        extra = {"response": recon - vae.decode(z, source=plain), "signal": source - plain}
    return loss(recon, target, lesion=batch.get("lesion"), **extra)
