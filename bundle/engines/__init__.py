"""Training and validation engines (ignite, through MONAI's workflows)."""

from bundle.engines.base import NonFiniteError
from bundle.engines.diffusion_trainer import LatentDiffusionTrainer
from bundle.engines.handlers import GroupLRSchedule, TrainingState, make_ema
from bundle.engines.latent_cache import LatentBank
from bundle.engines.losses import ReconstructionLoss
from bundle.engines.reproducible import ResumableSampler, SeededDataset
from bundle.engines.sampled_latent_stage import SampledLatentPathStage
from bundle.engines.vae_stage import VAEStage
from bundle.engines.validator import EnhancementValidator, TensorBoardPanels, ValidationHandler

__all__ = [
    "EnhancementValidator",
    "GroupLRSchedule",
    "LatentBank",
    "LatentDiffusionTrainer",
    "NonFiniteError",
    "ReconstructionLoss",
    "ResumableSampler",
    "SampledLatentPathStage",
    "SeededDataset",
    "TensorBoardPanels",
    "TrainingState",
    "VAEStage",
    "ValidationHandler",
    "make_ema",
]
