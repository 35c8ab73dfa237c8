"""Phase 1 on a bank of latents encoded once (``phase1_latent_cache``): the same loss for the same
crops, one epoch's crops, exact mid-epoch resume, and images again in phase 2."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Events
from monai.data import Dataset
from monai.transforms import Compose, RandFlipd, RandSpatialCropd
from torch.utils.data import DataLoader

from bundle.diffusion import DiffusionSchedule
from bundle.engines import LatentBank, LatentDiffusionTrainer
from bundle.engines.latent_cache import MOMENTS, encode_crops
from bundle.engines.reproducible import ResumableSampler, SeededDataset
from bundle.networks import ConditionalUNet3D, VideoVAE

BATCH = 2  # 2 volumes x 2 crops each: 2 iterations per epoch


def image_loader(seed: int = 0) -> DataLoader:
    """Random paired crops of two in-memory volumes, keyed by (seed, epoch, draw) like the recipe's."""
    generator = torch.Generator().manual_seed(1)
    volumes = [{key: torch.rand(3, 8, 72, 72, generator=generator) * 2 - 1 for key in ("source", "target")}
               for _ in range(2)]
    transform = Compose([RandSpatialCropd(["source", "target"], roi_size=(8, 64, 64), random_size=False),
                         RandFlipd(["source", "target"], prob=0.5, spatial_axis=2)])
    dataset = SeededDataset(Dataset(volumes, transform), seed=seed)
    sampler = ResumableSampler(len(dataset), samples_per_volume=2, batch_size=BATCH, seed=seed)
    return DataLoader(dataset, batch_size=BATCH, sampler=sampler)


def make_trainer(ckpt_dir, cache: bool = True, max_epochs: int = 2, phase1_epochs: int = 2) -> LatentDiffusionTrainer:
    torch.manual_seed(0)  # the same networks every time
    vae = VideoVAE(channels=(8, 16, 16, 16), norm_num_groups=4, num_res_blocks=1, num_mid_blocks=1)
    unet = ConditionalUNet3D(model_channels=16, channel_mult=(1, 2, 2, 2), num_heads=2, norm_num_groups=4,
                             time_embed_dim=32, num_res_blocks=1)
    return LatentDiffusionTrainer(
        vae, unet, DiffusionSchedule(num_train_timesteps=100), vae_stage=SimpleNamespace(scale_factor=0.7),
        phase1_epochs=phase1_epochs, phase1_latent_cache=cache, device="cpu", max_epochs=max_epochs,
        data_loader=image_loader(), optimizer=torch.optim.AdamW(unet.parameters(), lr=1e-3),
        ckpt_dir=ckpt_dir, save_every=1,
    )


def test_cached_moments_give_the_same_loss(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.training_state.scale_factor = 0.7
    trainer.state.iteration = 3  # the noise, timesteps and posterior sample of iteration 3
    batch = next(iter(trainer.image_loader))
    cached = encode_crops(trainer.vae, batch["source"], batch["target"])
    assert not trainer.vae.training and all(not v.requires_grad for v in cached.values())
    plain_loss, plain = trainer.compute_loss(batch)
    cached_loss, terms = trainer.compute_loss(cached)
    assert float(cached_loss.detach()) == pytest.approx(float(plain_loss.detach()), rel=1e-6)
    assert terms["latent_std"] == pytest.approx(plain["latent_std"], rel=1e-6)
    assert terms["phase"] == plain["phase"] == 1


def test_bank_holds_one_epochs_crops(tmp_path):
    trainer = make_trainer(tmp_path)
    loader = trainer.image_loader
    bank = LatentBank.build(trainer.vae, loader, "cpu")
    draws = loader.sampler.epoch_draws(0)
    assert len(bank) == len(draws) == 4 and sorted(bank.draws) == sorted(draws)
    draw = draws[1]
    crop = loader.dataset[(0, draw, draw % loader.sampler.num_samples)]
    expected = encode_crops(trainer.vae, crop["source"][None], crop["target"][None])
    item = bank[bank.draws.index(draw)]
    for name in MOMENTS:
        assert item[name].shape == expected[name].shape[1:]
        torch.testing.assert_close(item[name], expected[name][0], rtol=1e-5, atol=1e-6)
    # one process: the bank's epoch 0 is the loader's epoch 0, batch for batch, bit for bit
    batches = list(bank.loader())
    assert len(batches) == len(loader) == 2
    for images, cached in zip(loader, batches):
        encoded = encode_crops(trainer.vae, images["source"], images["target"])
        assert all(torch.equal(cached[name], encoded[name]) for name in MOMENTS)


def snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_cached_phase1_resumes_exactly(tmp_path):
    def run(ckpt_dir, cache=True, stop_at=None):
        trainer = make_trainer(ckpt_dir, cache=cache)
        if stop_at is not None:
            trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
        seen = {"iterations": []}
        trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: seen["iterations"].append(e.state.iteration))
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda e: seen.update(epoch1=snapshot(e.unet)))
        trainer.run()
        return trainer, seen

    reference, reference_seen = run(tmp_path / "uninterrupted")
    assert reference.state.iteration == 4 and reference.phase == 1
    interrupted, _ = run(tmp_path / "interrupted", stop_at=3)  # epoch 2, its first batch done
    assert interrupted.state.iteration == 3
    resumed, seen = run(tmp_path / "interrupted")
    assert seen["iterations"] == [4]  # not from the epoch's start
    assert isinstance(resumed.data_loader.dataset, LatentBank)
    assert same(snapshot(reference.unet), snapshot(resumed.unet)), "the U-Net differs after resume"
    # the uncached run: the same after epoch 1 (one process: the bank's epoch 0 is the loader's),
    # not after epoch 2 (new crops there, the bank's again in the cached run)
    plain, plain_seen = run(tmp_path / "uncached", cache=False)
    assert same(reference_seen["epoch1"], plain_seen["epoch1"])
    assert not same(snapshot(reference.unet), snapshot(plain.unet))


def test_phase2_trains_on_images_after_a_cached_phase1(tmp_path):
    trainer = make_trainer(tmp_path, max_epochs=2, phase1_epochs=1)
    keys = {}  # the batch's keys, by epoch

    @trainer.on(Events.ITERATION_STARTED)
    def record(engine):
        keys.setdefault(engine.state.epoch, set()).update(engine.state.batch)

    trainer.run()
    assert trainer.phase == 2 and trainer.state.iteration == 4
    assert keys[1] == set(MOMENTS)
    assert {"source", "target"} <= keys[2] and "target_mean" not in keys[2]
    assert trainer.data_loader is trainer.image_loader and trainer.latent_bank is None
    assert {"loss_recon", "loss_kl"} <= set(trainer.state.output)
