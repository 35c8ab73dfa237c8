"""Run DDIM with the parts ``ctv2v export`` wrote: HU slab in, enhanced HU slab out.

    python scripts/run_exported.py EXPORT_DIR low_dose.npy enhanced.npy --steps 50 --seed 0
    python scripts/run_exported.py EXPORT_DIR low_dose.npy enhanced.npy --backend onnx

Needs torch and numpy only (and onnxruntime for ``--backend onnx``), not this repository's
``bundle`` package: everything besides the three networks comes from ``export.json``. It is the
reference for porting the sampler to another runtime, and it computes what
``CTEnhancer.enhance`` computes, step for step:

1. pad the volume to the exported slab: in-plane with air (``air_hu``) at the end of rows and
   columns, along slices by repeating the last slice;
2. HU -> window channels (clip each HU window, scale to [-1, 1]);
3. ``condition = encode(channels)`` (the scaled latent mean);
4. DDIM, eta 0: noise ``torch.randn`` from ``torch.Generator().manual_seed(seed)`` (``strength`` < 1
   starts from the noised condition instead), timesteps by the exported spacing rule, at every
   step ``unet(z_t, t, condition)`` and the deterministic DDIM update (``bundle/diffusion/ddim.py``);
5. ``decode(z0[, source channels])`` -> channels -> HU (the windows' decoding rule);
6. with ``residual``: ``source + decoded - decode(condition)``; with ``source_lowpass_sigma`` > 0:
   the output's in-plane low frequencies replaced by the source's, per tissue level with
   ``source_lowpass_levels``, averaged along slices too with ``source_lowpass_sigma_z``
   (``bundle/inference/low_frequency.py``);
7. crop the padding away.

Supported: one volume no larger than the exported slab, one sample, eta 0, any step count and
strength, every output setting the model file stores (the fidelity weight is baked into the
decoder). Not supported: larger volumes need ``CTEnhancer``'s tiling (overlapping windows blended
at every step: ``bundle/diffusion/tiling.py``; use ``ctv2v enhance``), eta > 0, several samples.

The output equals ``CTEnhancer.enhance`` (same steps, seed, strength) when the export's slab is
the model's U-Net window (``export.json``: ``one_window``, the default slab); the differences
measured are in docs/export.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FORMAT = "ctv2v-export"
FORMAT_VERSION = 1
PARTS = ("encode", "unet", "decode")


class ExportedModelError(Exception):
    """The export folder or the input cannot be used (the message names the file and the problem)."""


# --- the export folder --------------------------------------------------------------------------
def load_manifest(export_dir: str | Path) -> dict:
    path = Path(export_dir) / "export.json"
    if not path.is_file():
        raise ExportedModelError(f"{path} not found: not a folder written by `ctv2v export`.")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportedModelError(f"{path} is not valid JSON ({exc}).") from exc
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ExportedModelError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r}, "
            f"this runner reads {FORMAT!r} version {FORMAT_VERSION}."
        )
    return manifest


class ExportedModel:
    """The three parts of an export folder, called with torch tensors on ``device``."""

    def __init__(self, export_dir: str | Path, backend: str = "torchscript", device: str = "cpu") -> None:
        self.dir = Path(export_dir)
        self.manifest = load_manifest(self.dir)
        self.device = torch.device(device)
        self.backend = backend
        if backend == "torchscript" and self.device.type != torch.device(self.manifest["device"]).type:
            # tensors the U-Net creates internally were traced on the export's device
            raise ExportedModelError(
                f"{self.dir}: the TorchScript parts were traced on {self.manifest['device']}; run them there "
                f"(--device {self.manifest['device']}) or export again with --device {self.device.type}."
            )
        self.parts = {name: self._load(name) for name in PARTS}
        self.input_names = {name: list(self.manifest["parts"][name]["inputs"]) for name in PARTS}

    def _load(self, name: str):
        files = self.manifest["parts"][name].get("files", {})
        if self.backend not in files:
            raise ExportedModelError(
                f"{self.dir}: no {self.backend} file for {name} (exported: {sorted(files) or 'none'}); "
                f"export with --format {self.backend}."
            )
        path = self.dir / files[self.backend]
        if not path.is_file():
            raise ExportedModelError(f"{path} is listed in export.json but missing.")
        if self.backend == "torchscript":
            return torch.jit.load(str(path), map_location=self.device).eval()
        if self.backend == "onnx":
            try:
                import onnxruntime
            except ImportError as exc:
                raise ExportedModelError("--backend onnx needs onnxruntime: pip install onnxruntime.") from exc
            return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        raise ExportedModelError(f"unknown backend {self.backend!r} (torchscript or onnx).")

    def __call__(self, name: str, *inputs: torch.Tensor) -> torch.Tensor:
        part = self.parts[name]
        if self.backend == "torchscript":
            return part(*inputs)
        feed = {key: x.detach().cpu().numpy() for key, x in zip(self.input_names[name], inputs)}
        return torch.from_numpy(part.run(None, feed)[0]).to(self.device)


# --- HU windows (bundle/data/windows.py) ----------------------------------------------------------
def hu_to_channels(hu: torch.Tensor, windows) -> torch.Tensor:
    """(B, 1, S, H, W) HU -> (B, C, S, H, W) in [-1, 1]: each window clipped and scaled."""
    return torch.cat([2.0 * (hu.clamp(lo, hi) - lo) / (hi - lo) - 1.0 for lo, hi in windows], dim=1)


def channels_to_hu(channels: torch.Tensor, windows, margin: float) -> torch.Tensor:
    """Inverse of :func:`hu_to_channels`: start from the widest window, refine with each narrower
    one where its channel is unsaturated and the widest estimate lies inside it (both gates ramp
    over ``margin``, so the result is continuous in the channels)."""
    widths = [hi - lo for lo, hi in windows]
    widest_first = sorted(range(len(widths)), key=lambda i: (-widths[i], -i))
    upper, ramp = 1.0 - margin, max(margin, 1e-6)
    hu = widest = None
    for index in widest_first:
        lo, hi = windows[index]
        half_width = 0.5 * (hi - lo)
        channel = channels.narrow(1, index, 1).clamp(-1.0, 1.0)
        decoded = lo + (channel + 1.0) * half_width
        if widest is None:
            hu = widest = decoded
            continue
        widest_here = (widest - lo) / half_width - 1.0
        unsaturated = ((upper - channel.abs()) / ramp).clamp(0.0, 1.0)
        inside = ((upper - widest_here.abs()) / ramp).clamp(0.0, 1.0)
        hu = hu + unsaturated * inside * (decoded - hu)
    return hu


# --- DDIM (bundle/diffusion/ddim.py, eta = 0) ------------------------------------------------------
def ddim_timesteps(spacing: str, max_timestep: int, n: int) -> list[int]:
    """n decreasing integer timesteps in [0, max_timestep] (exact integer arithmetic)."""
    m = max_timestep
    if spacing == "trailing":
        return [(2 * (m + 1) * (n - i) + n) // (2 * n) - 1 for i in range(n)]
    if spacing == "linspace":
        return [m] if n == 1 else [(2 * m * (n - 1 - i) + (n - 1)) // (2 * (n - 1)) for i in range(n)]
    if spacing == "leading":
        return [(i * (m + 1)) // n for i in reversed(range(n))]
    raise ExportedModelError(f"unknown timestep spacing {spacing!r} in export.json.")


def ddim_pairs(sampler: dict, steps: int, strength: float) -> list[tuple[int, int]]:
    """[(t, t_prev), ...]; t_prev = -1 is the last step, to abar = 1; strength keeps the last ones."""
    if not 1 <= steps <= sampler["max_timestep"] + 1:
        raise ExportedModelError(f"steps must be in [1, {sampler['max_timestep'] + 1}], got {steps}.")
    if not 0.0 < strength <= 1.0:
        raise ExportedModelError(f"strength must be in (0, 1], got {strength}.")
    kept = math.floor(strength * steps + 0.5)
    if kept < 1:
        raise ExportedModelError(f"strength {strength} keeps no step of {steps}: use a larger strength.")
    timesteps = ddim_timesteps(sampler["spacing"], sampler["max_timestep"], steps)
    pairs = list(zip(timesteps, timesteps[1:] + [-1]))
    return pairs[len(pairs) - kept :]


def sample_latent(model: ExportedModel, condition: torch.Tensor, steps: int, seed: int, strength: float) -> torch.Tensor:
    """One eta-0 DDIM chain from seeded noise; the coefficients are python floats (float64) applied
    to float32 tensors, in the order ``DDIMSampler.step`` applies them."""
    manifest = model.manifest
    abar = manifest["schedule"]["alphas_cumprod"]
    prediction = manifest["schedule"]["prediction_type"]

    def alpha_cumprod(t: int) -> float:
        return 1.0 if t == -1 else float(abar[t])

    pairs = ddim_pairs(manifest["sampler"], steps, strength)
    generator = torch.Generator(device=condition.device).manual_seed(seed)
    noise = torch.randn(condition.shape, generator=generator, device=condition.device)
    if strength >= 1:
        z = noise
    else:  # SDEdit start: the condition noised to the first timestep kept
        a0 = alpha_cumprod(pairs[0][0])
        z = math.sqrt(a0) * condition + math.sqrt(1.0 - a0) * noise.to(condition.dtype)
    for t, t_prev in pairs:
        out = model("unet", z, torch.full((z.shape[0],), t, dtype=torch.long, device=z.device), condition)
        a, s = math.sqrt(alpha_cumprod(t)), math.sqrt(1.0 - alpha_cumprod(t))
        out = out.to(z.dtype)
        if prediction == "epsilon":
            x0, eps = (z - s * out) / a, out
        elif prediction == "sample":
            x0, eps = out, (z - a * out) / s
        elif prediction == "v_prediction":  # v = a eps - s x0, z = a x0 + s eps
            x0, eps = a * z - s * out, s * z + a * out
        else:
            raise ExportedModelError(f"unknown prediction_type {prediction!r} in export.json.")
        abar_prev = alpha_cumprod(t_prev)
        direction = math.sqrt(max(1.0 - abar_prev - 0.0, 0.0))  # eta 0: no fresh noise
        z = (math.sqrt(abar_prev) * x0 + direction * eps).to(z.dtype)
    return z


# --- output rules (bundle/inference/low_frequency.py) ---------------------------------------------
def keep_source_low_frequencies(output_hu: torch.Tensor, source_hu: torch.Tensor, kernel, levels=(),
                                min_support: float = 0.25, kernel_z=None) -> torch.Tensor:
    """``output + G * (source - output)`` per axial slice, ``G`` the exported 1D Gaussian along rows
    then columns (and along slices with ``kernel_z``). With ``levels`` (ascending HU) the band per
    tissue level, guided by the output: hat weights ``w_k`` of the output's HU on the levels, each
    level's correction ``G(w_k r) / G(w_k)`` leaning towards ``G(r)`` where ``G(w_k)`` < ``min_support``."""
    if kernel is None:
        return output_hu

    def gaussian(values: torch.Tensor) -> torch.Tensor:
        return along_slices(inplane_gaussian(values, kernel), kernel_z)

    residual = (source_hu - output_hu).float()
    plain = gaussian(residual)
    if not levels:
        return output_hu + plain.to(output_hu.dtype)
    guide = output_hu.float()
    correction = torch.zeros_like(residual)
    for k, level in enumerate(levels):  # level_weights of bundle/inference/low_frequency.py: the runner imports no bundle
        weight = torch.ones_like(guide)
        if k > 0:
            weight = torch.minimum(weight, ((guide - levels[k - 1]) / (level - levels[k - 1])).clamp(0, 1))
        if k < len(levels) - 1:
            weight = torch.minimum(weight, ((levels[k + 1] - guide) / (levels[k + 1] - level)).clamp(0, 1))
        support = gaussian(weight)
        own = gaussian(weight * residual) / support.clamp_min(1e-6)
        trust = (support / min_support).clamp(max=1.0)
        correction += weight * (plain + trust * (own - plain))
    return output_hu + correction.to(output_hu.dtype)


def inplane_gaussian(values: torch.Tensor, kernel) -> torch.Tensor:
    """The exported 1D Gaussian along rows then columns of each slice, borders mirrored (replicated
    when a slice is smaller than the kernel radius): the convolutions MONAI's GaussianFilter runs."""
    h, w = values.shape[-2:]
    slices = values.reshape(-1, 1, h, w)
    taps = torch.tensor(kernel, dtype=torch.float32, device=slices.device)
    radius = (taps.numel() - 1) // 2
    mode = "reflect" if radius < min(h, w) else "replicate"
    x = F.pad(slices, (radius, radius, radius, radius), mode=mode)
    # MONAI's separable filter: zero-pad the columns, then the rows, convolve along rows, then columns
    x = F.pad(x, (radius, radius, 0, 0))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius)), taps.reshape(1, 1, -1, 1))
    x = F.conv2d(x, taps.reshape(1, 1, 1, -1))
    return x[..., radius : radius + h, radius : radius + w].reshape(values.shape)


def along_slices(values: torch.Tensor, kernel_z) -> torch.Tensor:
    """The exported 1D Gaussian along the slice axis of ``(..., S, H, W)``, borders mirrored
    (replicated when there are fewer slices than the kernel radius); None: unchanged."""
    if kernel_z is None:
        return values
    s = values.shape[-3]
    taps = torch.tensor(kernel_z, dtype=torch.float32, device=values.device)
    radius = (taps.numel() - 1) // 2
    lines = values.movedim(-3, -1)
    flat = F.pad(lines.reshape(-1, 1, s), (radius, radius), mode="reflect" if radius < s else "replicate")
    smooth = F.conv1d(flat, taps.reshape(1, 1, -1))
    return smooth.reshape(lines.shape).movedim(-1, -3)


# --- the whole slab ---------------------------------------------------------------------------------
def pad_to_slab(hu: torch.Tensor, slab, air_hu: float) -> torch.Tensor:
    """(1, 1, s, h, w) -> (1, 1, *slab): air in-plane at the end, the last slice repeated."""
    _, _, s, h, w = hu.shape
    if s > slab[0] or h > slab[1] or w > slab[2]:
        raise ExportedModelError(
            f"volume {(s, h, w)} is larger than the exported slab {tuple(slab)}: larger volumes need "
            "CTEnhancer's tiling (ctv2v enhance), or an export with a larger --slab."
        )
    hu = F.pad(hu, (0, slab[2] - w, 0, slab[1] - h), value=air_hu)
    if s < slab[0]:
        hu = torch.cat([hu, hu[:, :, -1:].expand(-1, -1, slab[0] - s, -1, -1)], dim=2)
    return hu


@torch.no_grad()
def enhance(model: ExportedModel, volume_hu, steps: int | None = None, seed: int | None = None,
            strength: float | None = None) -> np.ndarray:
    """Enhance one volume ``(S, H, W)`` or ``(1, S, H, W)`` in HU, no larger than the slab; returns
    float32 HU of the input's shape. Defaults for steps, seed and strength: the model's."""
    manifest = model.manifest
    sampler = manifest["sampler"]
    steps = sampler["num_inference_steps"] if steps is None else int(steps)
    seed = sampler["seed"] if seed is None else int(seed)
    strength = sampler["strength"] if strength is None else float(strength)
    volume = np.asarray(volume_hu, dtype=np.float32)
    if volume.ndim == 4 and volume.shape[0] == 1:
        shape = volume.shape
        volume = volume[0]
    elif volume.ndim == 3:
        shape = volume.shape
    else:
        raise ExportedModelError(f"expected a HU volume (S, H, W) or (1, S, H, W), got shape {volume.shape}.")
    s, h, w = volume.shape
    source_hu = pad_to_slab(torch.from_numpy(np.ascontiguousarray(volume))[None, None].to(model.device),
                            manifest["slab"], manifest["air_hu"])
    windows = [tuple(window) for window in manifest["hu_windows"]["windows"]]
    margin = manifest["hu_windows"]["margin"]
    output = manifest["output"]

    source = hu_to_channels(source_hu, windows)
    decode_inputs = (source,) if "source" in model.input_names["decode"] else ()
    condition = model("encode", source)
    z0 = sample_latent(model, condition, steps, seed, strength)
    hu = channels_to_hu(model("decode", z0, *decode_inputs), windows, margin)
    if output["residual"]:  # what the bottleneck does to the source, subtracted
        source_recon = channels_to_hu(model("decode", condition, *decode_inputs), windows, margin)
        hu = source_hu + (hu - source_recon)
    hu = keep_source_low_frequencies(hu, source_hu, output["lowpass_kernel"], output.get("source_lowpass_levels", ()),
                                     output.get("source_lowpass_min_support", 0.25), output.get("lowpass_kernel_z"))
    return hu[0, 0, :s, :h, :w].cpu().numpy().reshape(shape)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", type=Path, help="folder written by `ctv2v export`")
    parser.add_argument("input", type=Path, help=".npy HU volume (S, H, W), no larger than the exported slab")
    parser.add_argument("output", type=Path, help=".npy file for the enhanced HU volume")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's)")
    parser.add_argument("--seed", type=int, default=None, help="noise seed (default: the model's)")
    parser.add_argument("--strength", type=float, default=None, help="in (0, 1] (default: the model's)")
    parser.add_argument("--backend", choices=("torchscript", "onnx"), default="torchscript")
    parser.add_argument("--device", default="cpu", help="torch device (TorchScript: the export's device)")
    args = parser.parse_args(argv)
    try:
        if not args.input.is_file():
            raise ExportedModelError(f"input {args.input} not found.")
        model = ExportedModel(args.export_dir, args.backend, args.device)
        enhanced = enhance(model, np.load(args.input), args.steps, args.seed, args.strength)
    except ExportedModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    np.save(args.output, enhanced)
    print(f"{args.output}: {enhanced.shape} HU, {model.manifest['model']['version']}, backend {args.backend}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
