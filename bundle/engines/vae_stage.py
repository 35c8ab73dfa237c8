"""Stage 0 of the recipe: pre-train the VAE (the spec's phase 1 freezes it, so it must be trained).

Loss on source and target slabs together: L1 reconstruction + ``kl_weight`` * KL, and optionally
an adversarial patch term (MONAI's ``PatchDiscriminator`` with a least-squares loss) switched on
by ``adversarial_weight > 0``, the SSIM / gradient / frequency terms of the declared
``reconstruction_loss`` (``bundle.engines.losses``) and,
for a VAE with a fidelity path, the path's term: the TARGET reconstructed from the target's
latent plus the source's features. No loss needs downloaded weights.

At the end the stage computes the latent scale factor (1 / std of training latents) once and
writes ``<ckpt_dir>/vae_final.pt``; a later run finds that file and skips the stage.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from bundle.engines import distributed
from bundle.engines.base import RecipeTrainer
from bundle.engines.losses import ReconstructionLoss, fidelity_path_loss
from bundle.engines.reproducible import iteration_generator
from bundle.networks import kl_divergence
from bundle.utils.io import atomic_torch_save

logger = logging.getLogger(__name__)


@torch.no_grad()
def estimate_scale_factor(vae, data_loader, device, max_batches: int = 8, seed: int = 0) -> float:
    """1 / std of posterior samples of source and target slabs over a few training batches.

    Samples, not means: the diffusion model is trained on sampled target latents (as in latent
    diffusion), and with an under-trained VAE the posterior spread dominates the means.
    Distributed: over the batches of every rank (the same samples as one process of the global
    batch), so every rank gets the same factor.
    """
    vae_was_training = vae.training
    vae.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    moments = torch.zeros(3, dtype=torch.float64)  # sum, sum of squares, count
    for i, batch in enumerate(data_loader):
        if i >= max_batches:
            break
        mean, logvar = vae.encode_moments(torch.cat([batch["source"], batch["target"]]).to(device))
        eps = distributed.randn_rows(mean.shape, generator, mean.device, mean.dtype, blocks=2)
        z = vae.sample(mean, logvar, eps=eps).double().flatten().cpu()
        moments += torch.stack([z.sum(), (z**2).sum(), torch.tensor(float(z.numel()), dtype=torch.float64)])
    vae.train(vae_was_training)
    total, squares, n = distributed.all_reduce_sum(moments).tolist()
    if n < 2:
        raise ValueError("cannot estimate the latent scale factor: the training loader is empty.")
    std = max((squares - total**2 / n) / (n - 1), 0.0) ** 0.5
    return 1.0 / max(std, 1e-6)


class VAEStage(RecipeTrainer):
    """Ignite trainer for VAE pre-training, with skip/resume and the final VAE file.

    Args (beyond :class:`RecipeTrainer`):
        vae: the ``VideoVAE``.
        kl_weight: weight of the KL term (mean over latent elements).
        adversarial_weight: 0 disables the discriminator; otherwise weight of the generator's
            adversarial term.
        discriminator, discriminator_optimizer: required when ``adversarial_weight > 0``.
        pretrained: path of trained VAE weights (a ``vae_final.pt`` or a plain state dict):
            the stage then only loads them (and computes the scale factor if missing).
        scale_factor_batches: training batches used to estimate the scale factor.
        reconstruction_loss: the :class:`~bundle.engines.losses.ReconstructionLoss` of both
            slabs' reconstructions (None: L1 alone, the spec's); the diffusion trainer's phase 2
            takes the same object.
        fidelity_loss_weight: weight of the fidelity path's term (a VAE with ``.fidelity``):
            the target reconstructed from its sampled latent and the source's features. The plain
            reconstructions of both slabs stay in the loss, so the decoder without the path
            (weight 0) remains a working autoencoder.
        fidelity_loss: the loss of that term (None: ``reconstruction_loss``).
    """

    checkpoint_prefix = "vae"
    stage_name = "VAE stage"

    def __init__(
        self,
        vae,
        *args,
        kl_weight: float = 1e-6,
        adversarial_weight: float = 0.0,
        discriminator=None,
        discriminator_optimizer=None,
        pretrained: str | None = None,
        scale_factor_batches: int = 8,
        reconstruction_loss: ReconstructionLoss | None = None,
        fidelity_loss_weight: float = 1.0,
        fidelity_loss: ReconstructionLoss | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.vae = vae
        self.reconstruction_loss = reconstruction_loss or ReconstructionLoss()
        self.fidelity_loss = fidelity_loss or self.reconstruction_loss
        self.fidelity_loss_weight = fidelity_loss_weight
        self.kl_weight = kl_weight
        self.adversarial_weight = adversarial_weight
        if adversarial_weight > 0 and (discriminator is None or discriminator_optimizer is None):
            raise ValueError("adversarial_weight > 0 needs a discriminator and its optimizer.")
        self.discriminator = discriminator if adversarial_weight > 0 else None
        self.discriminator_optimizer = discriminator_optimizer
        self.pretrained = pretrained
        self.scale_factor_batches = scale_factor_batches
        self.scale_factor: float | None = None

    @property
    def final_path(self) -> Path:
        return self.ckpt_dir / "vae_final.pt"

    def compute_loss(self, batch: dict):
        device = self.state.device
        x = torch.cat([batch["source"], batch["target"]]).to(device)
        generator = iteration_generator(self.seed, self.state.iteration, device)
        mean, logvar = self.vae.encode_moments(x)
        # the global batch's noise, this rank's rows (one process: the plain draw)
        z = self.vae.sample(mean, logvar, eps=distributed.randn_rows(mean.shape, generator, device, mean.dtype, blocks=2))
        recon = self.vae.decode(z)
        loss_recon, terms = self.reconstruction_loss(recon, x)
        kl = kl_divergence(mean.float(), logvar.float())
        loss = loss_recon + self.kl_weight * kl
        terms["kl"] = float(kl.detach())
        if getattr(self.vae, "fidelity", None) is not None and self.fidelity_loss_weight > 0:
            source = x[: batch["source"].shape[0]]
            target = x[batch["source"].shape[0]:]
            loss_fidelity, fidelity_terms = fidelity_path_loss(self.fidelity_loss, self.vae, z[source.shape[0]:],
                                                               source, target, batch)
            loss = loss + self.fidelity_loss_weight * loss_fidelity
            terms.update({f"fidelity_{k}": v for k, v in fidelity_terms.items()})
        if self.discriminator is not None:
            adv_g, adv_d = self._adversarial(recon, x)
            loss = loss + self.adversarial_weight * adv_g
            terms.update(adv_generator=float(adv_g.detach()), adv_discriminator=adv_d)
        return loss, terms

    def _adversarial(self, recon: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Least-squares patch GAN: D's loss on (real, fake) is back-propagated here through
        :meth:`backward` (so it accumulates and scales like the generator's and D steps with the
        VAE at the window's end); returns G's term and D's loss."""
        self.discriminator.requires_grad_(True)
        real = self.discriminator(x.detach())[-1].float()
        fake = self.discriminator(recon.detach())[-1].float()
        loss_d = 0.5 * (F.mse_loss(real, torch.ones_like(real)) + F.mse_loss(fake, torch.zeros_like(fake)))
        self.backward(loss_d)
        self.discriminator.requires_grad_(False)
        logits = self.discriminator(recon)[-1].float()
        return F.mse_loss(logits, torch.ones_like(logits)), float(loss_d.detach())

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return super().optimizers() + ([self.discriminator_optimizer] if self.discriminator is not None else [])

    def trainable_modules(self) -> dict:
        return {"vae": self.vae}

    def checkpoint_objects(self) -> dict:
        objects = {"vae": self.vae}
        if self.discriminator is not None:
            objects.update(discriminator=self.discriminator, discriminator_optimizer=self.discriminator_optimizer)
        return objects

    # --- the stage as a whole -------------------------------------------------------------------
    def run(self) -> None:  # type: ignore[override]
        """Train (or resume, or skip) and leave the trained VAE and its scale factor in place."""
        distributed.same_on_all_ranks(self.final_path.exists(), f"{self.final_path} (exists)")
        if self.distributed and self.discriminator is not None:
            raise NotImplementedError(
                "the adversarial term is not supported in distributed training yet: MONAI's "
                "PatchDiscriminator normalises with BatchNorm over each rank's share of the batch. "
                "Train the VAE stage in one process (or set adversarial_weight: 0)."
            )
        if self.final_path.exists():
            self._load_final(self.final_path)
            logger.info("VAE stage done before (%s); scale factor %.4f", self.final_path, self.scale_factor)
            return
        if self.pretrained:
            self._load_final(Path(self.pretrained))
            logger.info("VAE weights from %s", self.pretrained)
        elif self.state.max_epochs > 0:
            self.vae.requires_grad_(True).train()
            super().run()
        if self.scale_factor is None:
            self.scale_factor = estimate_scale_factor(
                self.vae, self.data_loader, self.state.device, self.scale_factor_batches, self.seed
            )
        if distributed.is_main_process():
            atomic_torch_save({"vae": self.vae.state_dict(), "scale_factor": self.scale_factor}, self.final_path)
        distributed.barrier()
        logger.info("VAE stage finished; latent scale factor %.4f -> %s", self.scale_factor, self.final_path)

    def _load_final(self, path: Path) -> None:
        state = torch.load(path, map_location=self.state.device, weights_only=True)
        if "vae" in state:
            self.vae.load_state_dict(state["vae"])
            self.scale_factor = state.get("scale_factor")
        else:
            self.vae.load_state_dict(state)
