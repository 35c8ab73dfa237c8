"""What the evaluation compares: every row of the report is a :class:`Method`.

A method maps a low-dose volume in HU to an estimate of the normal-dose volume in HU, shape
``(1, S, H, W)`` in and out, and may return a per-voxel uncertainty (HU, same shape). Before
the test volumes it gets the validation pairs once (:meth:`Method.prepare`), where classical
filters tune their strength; a method that cannot run (no trained weights, a package not
installed) says why in ``status`` and the report shows that instead of numbers.

Rows defined here: ``identity`` (the input as the answer), ``vae_ceiling`` (decode(encode(target))
through the model file's VAE, the spec's decoder: an oracle, it sees the target; nothing the
spec-exact latent model outputs can beat it), ``ceiling`` (the same for the model's own output
formula when it has a fidelity path or a residual output, ``CTEnhancer.ceiling``),
``no_diffusion`` (that formula with the SOURCE's own latent: what the U-Net adds is a sampling row
minus it) and :class:`DiffusionSampling` (the model, one sampler setting per row). Classical
filters are in :mod:`bundle.evaluation.baselines`, the supervised CNN in
:mod:`bundle.evaluation.redcnn`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bundle.inference.enhancer import CTEnhancer, Enhancement

__all__ = ["DiffusionSampling", "Identity", "Method", "ModelCeiling", "Pair", "VAECeiling", "diffusion_methods"]


@dataclass
class Pair:
    """One test or validation pair on its original voxel grid, HU, ``(1, S, H, W)`` float32.

    What a simulation knows comes along when the datalist has it: ``clean`` (noise-free truth),
    ``labels`` (tissue labels), ``repeat`` (a second full-dose realisation), ``objects`` (the
    lesions and QA inserts JSON); ``affine`` maps this grid's voxels to RAS mm and ``spacing`` is
    ``(slice_mm, row_mm, col_mm)``.
    """

    patient: str
    source: torch.Tensor
    target: torch.Tensor
    clean: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    repeat: torch.Tensor | None = None
    objects: dict | None = None
    affine: Any = None
    spacing: tuple[float, float, float] | None = None


class Method:
    """A row of the report. Subclasses set ``name`` and implement :meth:`enhance`.

    ``uses_target``: the method is an oracle that sees the target (the VAE ceiling); the
    evaluation passes the target only to such methods. ``per_slice``: it enhances each axial
    slice on its own, so the ideal observer on one input slice bounds its lesion d' (else the
    bound over every slice a lesion crosses).
    """

    name = "method"
    uses_target = False
    per_slice = False

    @property
    def status(self) -> str | None:
        """None when the method can run; otherwise why not (shown in the report)."""
        return None

    def prepare(self, validation: list[Pair]) -> dict[str, Any]:
        """Tune on the validation pairs (default: nothing); returns what was chosen."""
        return {}

    def settings(self) -> dict[str, Any]:
        """The method's settings, for the report."""
        return {}

    def enhance(self, source_hu: torch.Tensor, target_hu: torch.Tensor | None = None) -> Enhancement:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class Identity(Method):
    """The low-dose input as the answer: the score every enhancement must beat."""

    name = "identity"

    def enhance(self, source_hu, target_hu=None) -> Enhancement:
        return Enhancement(hu=source_hu.clone())


class VAECeiling(Method):
    """decode(encode(target)) through the model's VAE (``CTEnhancer.reconstruct``), in HU."""

    name = "vae_ceiling"
    uses_target = True

    def __init__(self, enhancer: CTEnhancer) -> None:
        self.enhancer = enhancer

    def settings(self) -> dict[str, Any]:
        return {"oracle": "reconstructs the TARGET, not the input"}

    def enhance(self, source_hu, target_hu=None) -> Enhancement:
        if target_hu is None:
            raise ValueError("vae_ceiling reconstructs the target: pass target_hu.")
        device = self.enhancer.scale_factor.device
        return Enhancement(hu=self.enhancer.reconstruct(target_hu.to(device)).cpu())


class ModelCeiling(Method):
    """The best THIS model's output can be (``CTEnhancer.ceiling``): its output formula (fidelity
    path from the source, residual output in HU, as the model file configures them) with the
    denoised latent replaced by the target's own. An oracle like ``vae_ceiling``; the row only
    runs for a model with a fidelity path or a residual output (otherwise it IS vae_ceiling)."""

    name = "ceiling"
    uses_target = True

    def __init__(self, enhancer: CTEnhancer) -> None:
        self.enhancer = enhancer

    @property
    def status(self) -> str | None:
        if getattr(self.enhancer, "has_fidelity_path", False) or getattr(self.enhancer, "residual", False):
            return None
        return "n/a: no fidelity path or residual output, so it equals vae_ceiling"

    def settings(self) -> dict[str, Any]:
        return {
            "oracle": "the model's output formula with the TARGET's latent",
            "fidelity_weight": getattr(self.enhancer, "fidelity_weight", None),
            "residual": getattr(self.enhancer, "residual", False),
        }

    def enhance(self, source_hu, target_hu=None) -> Enhancement:
        if target_hu is None:
            raise ValueError("ceiling uses the target: pass target_hu.")
        device = self.enhancer.scale_factor.device
        return Enhancement(hu=self.enhancer.ceiling(source_hu.to(device), target_hu.to(device)).cpu())


class NoDiffusion(Method):
    """This model's output formula with the SOURCE's own latent: no U-Net, no sampling
    (``CTEnhancer.ceiling(source, source)``): decode(encode(source)) through the VAE, and through
    the fidelity path and residual output when the model has them. What the diffusion model adds
    is a sampling row minus this one."""

    name = "no_diffusion"

    def __init__(self, enhancer: CTEnhancer) -> None:
        self.enhancer = enhancer

    def settings(self) -> dict[str, Any]:
        return {
            "what": "the model's output formula with the SOURCE's latent (no diffusion)",
            "fidelity_weight": getattr(self.enhancer, "fidelity_weight", None),
            "residual": getattr(self.enhancer, "residual", False),
        }

    def enhance(self, source_hu, target_hu=None) -> Enhancement:
        source = source_hu.to(self.enhancer.scale_factor.device)
        return Enhancement(hu=self.enhancer.ceiling(source, source).cpu())


class DiffusionSampling(Method):
    """The latent diffusion model, one DDIM setting (``CTEnhancer.enhance``).

    Args:
        enhancer: the loaded model file.
        num_inference_steps: DDIM steps for ``strength = 1`` (fewer run when strength < 1).
        strength: 1 starts from pure noise; < 1 starts from the noised encoding of the input.
        num_samples: samples averaged; above 1 the spread (std, HU) is the uncertainty map.
        seed: noise seed (sample k uses ``seed + k``).
        name: the row's name; default ``ddim_<steps>`` with ``_strength_<s>`` and
            ``_mean_of_<n>`` when those differ from 1.
    """

    def __init__(
        self,
        enhancer: CTEnhancer,
        num_inference_steps: int = 50,
        strength: float = 1.0,
        num_samples: int = 1,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        self.enhancer = enhancer
        self.num_inference_steps = int(num_inference_steps)
        self.strength = float(strength)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        if name is None:
            name = f"ddim_{self.num_inference_steps}"
            if self.strength != 1:
                name += f"_strength_{self.strength:g}"
            if self.num_samples != 1:
                name += f"_mean_of_{self.num_samples}"
        self.name = name

    @property
    def is_plain(self) -> bool:
        """Full strength, one sample: the rows of the quality-vs-steps plot."""
        return self.strength == 1 and self.num_samples == 1

    def settings(self) -> dict[str, Any]:
        return {
            "num_inference_steps": self.num_inference_steps,
            "strength": self.strength,
            "num_samples": self.num_samples,
            "eta": self.enhancer.eta,
            "seed": self.seed,
        }

    def enhance(self, source_hu, target_hu=None) -> Enhancement:
        return self.enhancer.enhance(
            source_hu,
            num_inference_steps=self.num_inference_steps,
            strength=self.strength,
            num_samples=self.num_samples,
            seed=self.seed,
        )


def diffusion_methods(
    enhancer: CTEnhancer,
    sampling_steps=(50, 10),
    strength: float = 0.5,
    strength_steps: int = 50,
    num_samples: int = 4,
    samples_steps: int = 10,
    seed: int = 0,
) -> list[DiffusionSampling]:
    """The model's rows: plain DDIM at each of ``sampling_steps``, one at ``strength`` < 1 and
    the mean of ``num_samples`` samples (with its uncertainty). A zero count leaves a row out."""
    rows = [DiffusionSampling(enhancer, steps, seed=seed) for steps in sampling_steps]
    if strength and strength < 1:
        rows.append(DiffusionSampling(enhancer, strength_steps, strength=strength, seed=seed))
    if num_samples and num_samples > 1:
        rows.append(DiffusionSampling(enhancer, samples_steps, num_samples=num_samples, seed=seed))
    return rows
