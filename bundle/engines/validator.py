"""Validation during training: sample whole validation volumes and score them in HU.

Each validation pair is enhanced by the same ``CTEnhancer`` that inference uses (built from the
trainer's current VAE and U-Net EMA, with fewer DDIM steps), and three rows are scored side by
side so a run shows where it stands: ``identity`` (the low-dose input as the answer),
``vae_ceiling`` (decode(encode(target)): nothing the latent model outputs can beat it) and
``model``; a model with a fidelity path or a residual output adds ``ceiling``, its own output
formula with the target's latent (``CTEnhancer.ceiling``); ``reference_methods`` (evaluation
methods, e.g. the supervised RED-CNN when its model file exists) add their own rows. Metrics are
per-slice PSNR/SSIM/RMSE in each configured window plus whole-volume PSNR, on the volumes' own
voxels (``bundle.metrics.window_metrics``, the evaluation's protocol). The key metric is the
model's soft-tissue-window PSNR.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import monai.handlers
import torch
from ignite.engine import Events
from monai.engines import Evaluator

from bundle.metrics import METRIC_WINDOWS, window_metrics, window_name

logger = logging.getLogger(__name__)


class EnhancementValidator(Evaluator):
    """Ignite evaluator over validation pairs given in HU, shape (B, 1, S, H, W).

    Args:
        device: torch device.
        val_data_loader: yields dicts with ``source`` and ``target`` HU volumes.
        hu_windows: the model's HU windows (channels), passed to the enhancer.
        num_inference_steps: DDIM steps for validation (fewer than inference to save time).
        windows: metric windows; the last one drives the key metric.
        seed: sampling seed (same noise every validation, so runs compare).
        reference_methods: ``bundle.evaluation.methods.Method`` objects scored as extra rows
            (by their ``name``); one that cannot run (``status``, e.g. an untrained RED-CNN) is
            left out with one log line saying why.
    """

    def __init__(
        self,
        device,
        val_data_loader,
        hu_windows,
        num_inference_steps: int = 10,
        windows=METRIC_WINDOWS,
        seed: int = 0,
        handlers=None,
        reference_methods=(),
    ) -> None:
        super().__init__(
            device=torch.device(device), val_data_loader=val_data_loader, val_handlers=handlers, decollate=False
        )
        self.trainer = None  # set by ValidationHandler (the trainer's handlers reference this object)
        self.hu_windows = hu_windows
        self.num_inference_steps = num_inference_steps
        self.windows = tuple(tuple(w) for w in windows)
        self.seed = seed
        self.key_window = window_name(self.windows[-1])
        self.reference_methods = []
        for method in reference_methods:
            if method.status is None:
                self.reference_methods.append(method)
            else:
                logger.info("validation: no %s row: %s", method.name, method.status)
        self._enhancer = None
        self._rows: dict[str, list[dict]] = defaultdict(list)
        self.add_event_handler(Events.EPOCH_STARTED, self._start)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._summarise)

    def _start(self, engine) -> None:
        if self.trainer is None:
            raise RuntimeError("EnhancementValidator needs a trainer: attach it with bundle.engines.ValidationHandler.")
        self._enhancer = self.trainer.build_enhancer(
            self.hu_windows, num_inference_steps=self.num_inference_steps, seed=self.seed
        ).to(self.state.device)
        self._rows = defaultdict(list)

    def _iteration(self, engine, batchdata: dict) -> dict:
        source = batchdata["source"].to(self.state.device)
        target = batchdata["target"].to(self.state.device)
        enhancer = self._enhancer
        with torch.no_grad():
            rows = [("identity", source), ("vae_ceiling", enhancer.reconstruct(target))]
            if enhancer.has_fidelity_path or enhancer.residual:
                rows.append(("ceiling", enhancer.ceiling(source, target)))
            model = enhancer(source)
            rows.append(("model", model))
            for method in self.reference_methods:
                rows.append((method.name, method.enhance(source).hu.to(source.device)))
        for b in range(source.shape[0]):
            for name, pred in rows:
                self._rows[name].append(window_metrics(pred[b], target[b], self.windows))
        return {"source": source, "target": target, "pred": model}

    def _summarise(self, engine) -> None:
        """Means over volumes into ``state.metrics`` as ``<row>/<window>/<metric>``."""
        metrics = {}
        for row, volumes in self._rows.items():
            for w in volumes[0]:
                for m in ("psnr", "ssim", "rmse", "volume_psnr"):
                    metrics[f"{row}/{w}/{m}"] = sum(v[w][m] for v in volumes) / len(volumes)
        engine.state.metrics.update(metrics)
        summary = "; ".join(
            f"{row} PSNR {metrics[f'{row}/{self.key_window}/psnr']:.2f} dB SSIM {metrics[f'{row}/{self.key_window}/ssim']:.3f}"
            for row in self._rows
        )
        logger.info("validation at epoch %d, window %s: %s", self.trainer.state.epoch, self.key_window, summary)
        key = f"model/{self.key_window}/psnr"
        engine.state.key_metric_name = key
        value = metrics[key]
        if engine.state.best_metric == -1 or value > engine.state.best_metric:
            engine.state.best_metric = value
            engine.state.best_metric_epoch = self.trainer.state.epoch


class ValidationHandler(monai.handlers.ValidationHandler):
    """MONAI's ``ValidationHandler`` (run the validator every ``interval`` epochs) that also hands
    the validator its trainer when attached: the validator builds the enhancer from the trainer's
    current VAE and EMA U-Net, and a config cannot give the validator the trainer that holds this
    handler without a reference cycle."""

    def attach(self, engine) -> None:
        self.validator.trainer = engine
        super().attach(engine)


class TensorBoardPanels:
    """Validator handler: a few image panels (source | model | target, soft-tissue window)."""

    def __init__(self, log_dir: str, max_volumes: int = 2, window=(-160.0, 240.0)) -> None:
        self.log_dir = log_dir
        self.max_volumes = max_volumes
        self.window = window
        self._writer = None

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        index = engine.state.iteration - (engine.state.epoch - 1) * (engine.state.epoch_length or 0)
        if index > self.max_volumes:
            return
        from torch.utils.tensorboard import SummaryWriter

        if self._writer is None:
            self._writer = SummaryWriter(self.log_dir)
        out = engine.state.output
        lo, hi = self.window
        middle = out["source"].shape[2] // 2
        row = [((out[k][0, 0, middle].float().cpu().clamp(lo, hi) - lo) / (hi - lo)) for k in ("source", "pred", "target")]
        self._writer.add_image(f"validation/volume{index}", torch.cat(row, dim=1)[None], engine.state.epoch)
        self._writer.flush()
