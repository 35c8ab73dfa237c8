"""Phases 1 and 2 of the spec's recipe: latent diffusion training with a two-phase VAE schedule.

Phase 1 (the first ``phase1_epochs`` epochs): the VAE is frozen (``requires_grad`` False, eval
mode, not in the optimizer) and only the U-Net learns. Phase 2 (later epochs, switched at the
epoch boundary): the VAE encoder and decoder join the optimizer as their own parameter groups at
``layer_lr_multipliers`` times the U-Net's rate. The diffusion loss then flows into the encoder,
so the loss also carries the VAE's own terms (L1 reconstruction of the target from its sampled
latent, KL on source and target) to keep the latent from collapsing toward whatever makes noise
prediction easy. A VAE with a fidelity path (``bundle.networks.fidelity``) trains it here too, with
the term of VAE pre-training (the target from its latent plus the source's features); the path's
parameters join the decoder's group.

``phase1_latent_cache``: phase 1 trains on the frozen VAE's moments of one epoch's crops, encoded
once (:mod:`bundle.engines.latent_cache` says what that trades), instead of encoding every batch.

MONAI's ``LatentDiffusionInferer`` encodes under ``no_grad`` and cannot do phase 2, hence this
iteration.
"""

from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn.functional as F
from ignite.engine import Events

from bundle.engines import distributed
from bundle.engines.base import NonFiniteError, RecipeTrainer
from bundle.engines.handlers import TrainingState, make_ema
from bundle.engines.latent_cache import MOMENTS, LatentBank, encode_crops
from bundle.engines.losses import ReconstructionLoss, fidelity_path_loss
from bundle.engines.reproducible import iteration_generator
from bundle.networks import kl_divergence
from bundle.utils.validation import check_bool

logger = logging.getLogger(__name__)

DEFAULT_MULTIPLIERS = {"encoder": 0.1, "decoder": 0.1, "unet": 1.0}


class LatentDiffusionTrainer(RecipeTrainer):
    """Ignite trainer for the conditional latent diffusion model.

    Args (beyond :class:`RecipeTrainer`):
        vae: the ``VideoVAE`` (trained by the VAE stage).
        unet: the ``ConditionalUNet3D``; ``optimizer`` must hold exactly its parameters.
        schedule: a ``bundle.diffusion.DiffusionSchedule`` (noise schedule + prediction type).
        vae_stage: provides ``scale_factor`` on a fresh start (resumes read it from the checkpoint).
        phase1_epochs: epochs with the VAE frozen.
        layer_lr_multipliers: ``{"encoder", "decoder", "unet"}`` multipliers of the base lr.
        reconstruction_loss: the :class:`~bundle.engines.losses.ReconstructionLoss` of the VAE's
            outputs, the object VAE pre-training uses (None: L1 alone, the spec's).
        recon_weight, kl_weight: weights of the VAE terms in phase 2.
        fidelity_loss_weight: weight of the fidelity path's reconstruction term in phase 2 (a VAE
            with ``.fidelity``), relative to ``recon_weight``.
        fidelity_loss: the loss of that term (None: ``reconstruction_loss``).
        ema_decay: decay of the U-Net EMA used for validation and export.
        detach_target_latent: in phase 2, the diffusion loss does not reach the encoder through
            the target latent (only through the condition): the scale factor, fixed after the VAE
            stage, then keeps describing the target latents (docs/diffusion.md measures both).
        enhancer_settings: ``CTEnhancer`` settings for validation and export, e.g. the tiling
            geometry of the training slab (``latent_window``, ``image_tile``, overlaps).
        phase1_latent_cache: phase 1 iterates a :class:`~bundle.engines.latent_cache.LatentBank` of
            epoch 0's crops (built when phase 1 starts or resumes) instead of the image loader.
    """

    checkpoint_prefix = "diffusion"

    def __init__(
        self,
        vae,
        unet,
        schedule,
        *args,
        vae_stage=None,
        phase1_epochs: int = 1,
        layer_lr_multipliers: dict | None = None,
        recon_weight: float = 1.0,
        kl_weight: float = 1e-6,
        ema_decay: float = 0.999,
        detach_target_latent: bool = False,
        enhancer_settings: dict | None = None,
        reconstruction_loss: ReconstructionLoss | None = None,
        fidelity_loss_weight: float = 1.0,
        fidelity_loss: ReconstructionLoss | None = None,
        phase1_latent_cache: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.image_loader = self.data_loader
        self.phase1_latent_cache = check_bool("phase1_latent_cache", phase1_latent_cache)
        self.latent_bank: LatentBank | None = None
        self.reconstruction_loss = reconstruction_loss or ReconstructionLoss()
        self.fidelity_loss = fidelity_loss or self.reconstruction_loss
        self.fidelity_loss_weight = fidelity_loss_weight
        self.vae = vae
        self.unet = unet
        self.schedule = schedule
        self.vae_stage = vae_stage
        self.phase1_epochs = phase1_epochs
        self.layer_lr_multipliers = {**DEFAULT_MULTIPLIERS, **(layer_lr_multipliers or {})}
        self.recon_weight = recon_weight
        self.kl_weight = kl_weight
        self.ema = make_ema(unet, decay=ema_decay)
        self.detach_target_latent = bool(detach_target_latent)
        self.enhancer_settings = dict(enhancer_settings or {})
        self.training_state = TrainingState()
        unet_params = {id(p) for p in unet.parameters()}
        optim_params = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        if optim_params != unet_params:
            raise ValueError("the diffusion optimizer must be built over the U-Net's parameters only.")
        for group in self.optimizer.param_groups:
            group["base_lr"] = group["lr"] * self.layer_lr_multipliers["unet"]
            group["lr"] = group["base_lr"]
            group["name"] = "unet"
        self.add_event_handler(Events.EPOCH_STARTED, self._maybe_enter_phase2)
        # the scale factor is fixed after the VAE stage while phase 2 trains the encoder: watch
        # the std of the scaled target latent (1 at the start) epoch by epoch
        self._latent_moments = torch.zeros(3, dtype=torch.float64)
        self.add_event_handler(Events.EPOCH_STARTED, lambda _: self._latent_moments.zero_())
        self.add_event_handler(Events.EPOCH_COMPLETED, self._log_latent_std)

    # --- phases ---------------------------------------------------------------------------------
    @property
    def phase(self) -> int:
        return self.training_state.phase

    @property
    def scale_factor(self) -> float:
        return self.training_state.scale_factor

    def _freeze_vae(self) -> None:
        self.vae.requires_grad_(False)
        self.vae.eval()

    def _maybe_enter_phase2(self, engine) -> None:
        if engine.state.epoch > self.phase1_epochs and self.phase == 1:
            self.enter_phase2()

    def enter_phase2(self) -> None:
        """Unfreeze the VAE and add its encoder and decoder as parameter groups."""
        base = self.optimizer.param_groups[0]["base_lr"] / self.layer_lr_multipliers["unet"]
        for name in ("encoder", "decoder"):
            modules = [getattr(self.vae, name)]
            if name == "decoder" and getattr(self.vae, "fidelity", None) is not None:
                modules.append(self.vae.fidelity)  # the decoder's skips and their source features
            params = [p for module in modules for p in module.parameters()]
            for p in params:
                p.requires_grad_(True)
            lr = base * self.layer_lr_multipliers[name]
            self.optimizer.add_param_group({"params": params, "lr": lr, "base_lr": lr, "name": name})
        # parameters of the VAE outside encoder/decoder/fidelity (none in VideoVAE) would stay frozen
        self.vae.train()
        self.training_state.phase = 2
        self._use_images()
        if self._ddp is not None:  # DDP registers the parameters that train when it is built
            self.rewrap()
        logger.info("phase 2 at epoch %d: VAE trainable, lrs %s", self.state.epoch,
                    {g["name"]: g["base_lr"] for g in self.optimizer.param_groups})

    # --- phase 1's data -------------------------------------------------------------------------
    def _use_latent_bank(self) -> None:
        """Encode epoch 0's crops once and train phase 1 on them (``phase1_latent_cache``)."""
        start = time.perf_counter()
        self.latent_bank = LatentBank.build(self.vae, self.image_loader, self.state.device, self.precision)
        loader = self.latent_bank.loader()
        loader.sampler.bind(lambda: self.state.iteration, lambda: self.state.epoch_length)
        # what run() hands to ignite: Engine.set_data before the run would skip ignite's mid-epoch
        # start (it sets its position in the epoch only when it creates the iterator itself)
        self.data_loader = loader
        logger.info("phase 1 latent bank: %d crops of epoch 0 encoded in %.1f s, %.2f MiB",
                    len(self.latent_bank), time.perf_counter() - start, self.latent_bank.nbytes / 2**20)

    def _use_images(self) -> None:
        """Back to the image loader (phase 2), inside a running epoch loop too."""
        if self.data_loader is self.image_loader:
            return
        bank_loader, self.data_loader, self.latent_bank = self.data_loader, self.image_loader, None
        if self.state.dataloader is bank_loader:  # running: switch the engine's data at this epoch start
            self.set_data(self.image_loader)

    # --- iteration ------------------------------------------------------------------------------
    def compute_loss(self, batch: dict):
        device = self.state.device
        generator = iteration_generator(self.seed, self.state.iteration, device)
        scale = self.scale_factor
        joint = self.phase == 2
        if "target_mean" in batch:  # phase 1 on the latent bank
            if joint:
                raise RuntimeError("cached latents in phase 2, where the encoder trains (the cache is phase 1's).")
            moments = {name: batch[name].to(device) for name in MOMENTS}
        else:
            source = batch["source"].to(device)
            target = batch["target"].to(device)
            # (sets the VAE's mode each time: validation may have left it in eval mode)
            moments = encode_crops(self.vae, source, target, train=joint)
        mean_source, mean_target, logvar_target = (moments[k] for k in ("source_mean", "target_mean", "target_logvar"))
        # every draw is the global batch's, this rank's rows (one process: the plain draw)
        z_target = self.vae.sample(
            mean_target, logvar_target, eps=distributed.randn_rows(mean_target.shape, generator, device, mean_target.dtype)
        )
        z0 = (z_target.detach() if self.detach_target_latent else z_target) * scale
        condition = mean_source * scale

        t = distributed.rank_rows(
            self.schedule.sample_timesteps(z0.shape[0] * distributed.world_size(), generator=generator, device=device)
        )
        noise = distributed.randn_rows(z0.shape, generator, device, z0.dtype)
        z_t = self.schedule.add_noise(z0, noise, t)
        prediction = self.unet(z_t, t, condition)
        loss_diffusion = F.mse_loss(prediction.float(), self.schedule.training_target(z0, noise, t).float())
        terms = {"loss_diffusion": float(loss_diffusion.detach()), "phase": self.phase}
        terms["latent_std"] = self._track_latent(z0)
        loss = loss_diffusion
        if joint:
            recon = self.vae.decode(z_target)
            loss_recon, _ = self.reconstruction_loss(recon, target)
            mean = torch.cat([mean_source, mean_target])
            logvar = torch.cat([moments["source_logvar"], logvar_target])
            loss_kl = kl_divergence(mean.float(), logvar.float())
            loss = loss + self.recon_weight * loss_recon + self.kl_weight * loss_kl
            terms.update(loss_recon=float(loss_recon.detach()), loss_kl=float(loss_kl.detach()))
            if getattr(self.vae, "fidelity", None) is not None and self.fidelity_loss_weight > 0:
                loss_fidelity, _ = fidelity_path_loss(self.fidelity_loss, self.vae, z_target, source, target, batch)
                loss = loss + self.recon_weight * self.fidelity_loss_weight * loss_fidelity
                terms["loss_fidelity"] = float(loss_fidelity.detach())
        return loss, terms

    def after_optimizer_step(self) -> None:
        self.ema.update_parameters(self.unet)

    def _track_latent(self, z0: torch.Tensor) -> float:
        values = z0.detach().double().flatten().cpu()
        self._latent_moments += torch.stack([values.sum(), (values**2).sum(), torch.tensor(float(values.numel()))])
        return float(values.std())

    def latent_std(self) -> float:
        """Std of the scaled target latents seen this epoch (1 when the scale factor still fits)."""
        total, squares, n = self._latent_moments.tolist()
        return math.sqrt(max(squares / n - (total / n) ** 2, 0.0)) if n else float("nan")

    def _log_latent_std(self, engine) -> None:
        std = self.latent_std()
        engine.state.metrics["latent_std"] = std
        logger.info("epoch %d (phase %d): std of the scaled target latent %.4f (scale factor %.4f)",
                    engine.state.epoch, self.phase, std, self.scale_factor)

    def build_enhancer(self, hu_windows, **settings):
        """The inference network from the current VAE and U-Net EMA (validation and export)."""
        from bundle.inference import CTEnhancer

        return CTEnhancer(
            self.vae, self.ema.module, self.schedule, hu_windows=hu_windows,
            scale_factor=self.scale_factor, **{**self.enhancer_settings, **settings},
        ).eval()

    def export(self, path, hu_windows) -> None:
        """Write ``model.pt``: everything inference needs, in one file (atomically; rank 0 only,
        the other ranks wait until it is written)."""
        if distributed.is_main_process():
            enhancer = self.build_enhancer(hu_windows)
            bad = [name for name, value in enhancer.state_dict().items()
                   if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()]
            if bad:  # a model file with NaN weights would enhance every series into garbage
                raise NonFiniteError(f"{self.stage_name}: refusing to write {path}: non-finite values in "
                                     f"{len(bad)} tensors ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
            enhancer.save(path)
            logger.info("model written to %s", path)
        distributed.barrier()

    @property
    def stage_name(self) -> str:
        return f"diffusion phase {self.phase}"

    def trainable_modules(self) -> dict:
        return {"unet": self.unet, "vae": self.vae} if self.phase == 2 else {"unet": self.unet}

    # --- checkpoints ----------------------------------------------------------------------------
    def checkpoint_objects(self) -> dict:
        return {"unet": self.unet, "vae": self.vae, "ema": self.ema, "training_state": self.training_state}

    def before_load(self, checkpoint: dict) -> None:
        if checkpoint["training_state"]["phase"] == 2 and self.phase == 1:
            self.enter_phase2()

    def on_start(self, resumed: bool) -> None:
        if not resumed:
            if self.vae_stage is None or self.vae_stage.scale_factor is None:
                raise RuntimeError("the VAE stage must run before diffusion training (no latent scale factor).")
            self.training_state.scale_factor = float(self.vae_stage.scale_factor)
        if self.phase == 1:
            self._freeze_vae()
            phase1_end = self.phase1_epochs * (self.state.epoch_length or 0)
            if self.phase1_latent_cache and self.state.iteration < phase1_end:
                self._use_latent_bank()
