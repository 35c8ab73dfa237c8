"""An optional stage after phase 2: the fidelity path trained on the U-Net's own sampled latents.

At inference the decoder meets the latent that DDIM samples from the trained U-Net, never the
target's own latent that VAE pre-training and phase 2 train the path on. StableSR (Wang et al.,
"Exploiting Diffusion Prior for Real-World Image Super-Resolution", IJCV 2024) closes that gap by
generating latents with the frozen diffusion model and training only its feature-wrapping module
(which feeds the low-quality image's encoder features into the decoder) to reconstruct the
high-quality image from them. This stage does the same for the fidelity path
(:mod:`bundle.networks.fidelity`): the U-Net's EMA (the exported one), the encoder and the
decoder stay frozen; each iteration samples the crop's latent from its source as ``CTEnhancer``
does (the source's posterior mean as condition, DDIM from noise) and trains the path's
parameters on the path's reconstruction term against the target.

``latent="target"`` trains the same parameters for the same iterations on the target's sampled
latent instead (VAE pre-training's term): the control that separates what the sampled latents
teach from what the extra iterations alone do. ``max_epochs = 0`` (the recipe's default,
``path_sample_epochs``) skips the stage: the model is the one phase 2 made.
"""

from __future__ import annotations

import logging

import torch

from bundle.diffusion import DDIMSampler
from bundle.engines import distributed
from bundle.engines.base import RecipeTrainer
from bundle.engines.losses import ReconstructionLoss, fidelity_path_loss
from bundle.engines.reproducible import iteration_generator

logger = logging.getLogger(__name__)

LATENTS = ("sampled", "target")


class SampledLatentPathStage(RecipeTrainer):
    """Ignite trainer of the fidelity path on the latents inference decodes.

    Args (beyond :class:`RecipeTrainer`, whose ``optimizer`` it builds itself: a VAE without a
    path has no parameters to give one, and the stage must still be declarable there):
        vae: the ``VideoVAE`` with a fidelity path (``.fidelity``), trained by the earlier stages.
        diffusion_trainer: the :class:`~bundle.engines.LatentDiffusionTrainer` after its run: its
            U-Net EMA, schedule and latent scale factor make the samples.
        lr: AdamW's learning rate for the path.
        num_inference_steps: DDIM steps per sample (the inference's).
        latent: ``"sampled"`` (the U-Net's DDIM sample from the source) or ``"target"`` (the
            target's own sampled latent: the control).
        fidelity_loss: the path's loss (None: L1 alone), the object the earlier stages train it on.
    """

    checkpoint_prefix = "path_sample"

    def __init__(
        self,
        vae,
        diffusion_trainer,
        *args,
        lr: float = 1e-4,
        num_inference_steps: int = 10,
        latent: str = "sampled",
        fidelity_loss: ReconstructionLoss | None = None,
        **kwargs,
    ) -> None:
        if latent not in LATENTS:
            raise ValueError(f"latent = {latent!r}: allowed {LATENTS}")
        path = getattr(vae, "fidelity", None)
        optimizer = torch.optim.AdamW(path.parameters(), lr=lr) if path is not None else None
        super().__init__(*args, optimizer=optimizer, **kwargs)
        self.vae = vae
        self.diffusion_trainer = diffusion_trainer
        self.latent = latent
        self.sampler = DDIMSampler(diffusion_trainer.schedule, num_inference_steps=num_inference_steps)
        self.fidelity_loss = fidelity_loss or ReconstructionLoss()

    @property
    def stage_name(self) -> str:
        return f"path on {self.latent} latents"

    # --- the latent the path decodes ----------------------------------------------------------
    @torch.no_grad()
    def latent_for(self, source: torch.Tensor, target_moments: tuple[torch.Tensor, torch.Tensor],
                   generator: torch.Generator) -> torch.Tensor:
        """The unscaled latent the path is trained on for this crop (no gradient); ``target_moments``
        are the target's ``encode_moments``, which the control samples from."""
        device = source.device
        if self.latent == "target":
            mean, logvar = target_moments
            return self.vae.sample(mean, logvar, eps=distributed.randn_rows(mean.shape, generator, device, mean.dtype))
        trainer = self.diffusion_trainer
        scale = trainer.scale_factor
        condition = self.vae.encode_moments(source)[0] * scale  # as CTEnhancer: the posterior mean
        unet = trainer.ema.module
        noise = distributed.randn_rows(condition.shape, generator, device, condition.dtype)
        return self.sampler.sample(lambda z_t, t: unet(z_t, t, condition), noise) / scale

    def compute_loss(self, batch: dict):
        device = self.state.device
        source = batch["source"].to(device)
        target = batch["target"].to(device)
        with torch.no_grad():
            target_moments = self.vae.encode_moments(target)
        z = self.latent_for(source, target_moments, iteration_generator(self.seed, self.state.iteration, device))
        loss, _ = fidelity_path_loss(self.fidelity_loss, self.vae, z, source, target, batch)
        # how far the decoded latent lies from the target's (0: a perfect U-Net)
        target_mean = target_moments[0].float()
        distance = (z.float() - target_mean).norm() / target_mean.norm().clamp_min(1e-12)
        return loss, {"loss_fidelity": float(loss.detach()), "latent_distance": float(distance)}

    # --- what trains ---------------------------------------------------------------------------
    def _freeze_all_but_the_path(self) -> None:
        self.vae.requires_grad_(False).eval()
        self.vae.fidelity.requires_grad_(True).train()
        self.diffusion_trainer.ema.module.requires_grad_(False).eval()

    def trainable_modules(self) -> dict:
        return {"fidelity": self.vae.fidelity}

    def checkpoint_objects(self) -> dict:
        return {"fidelity": self.vae.fidelity}

    def on_start(self, resumed: bool) -> None:
        self._freeze_all_but_the_path()

    def run(self) -> None:  # type: ignore[override]
        """Train (or resume) to ``max_epochs``; nothing at 0 epochs."""
        if self.state.max_epochs == 0:
            return
        if self.optimizer is None:
            raise ValueError(f"{self.stage_name}: path_sample_epochs = {self.state.max_epochs} trains the fidelity "
                             "path, and this VAE has none (fidelity_channels: null). Set path_sample_epochs: 0.")
        if self.diffusion_trainer.scale_factor is None:
            raise RuntimeError(f"{self.stage_name}: the diffusion trainer must run first (no latent scale factor).")
        super().run()
        logger.info("%s: %d iterations", self.stage_name, self.state.iteration)
