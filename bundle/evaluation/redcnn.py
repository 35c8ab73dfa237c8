"""The supervised CNN baseline: a 3D RED-CNN (residual encoder-decoder CNN) and its training.

RED-CNN (Chen et al., IEEE TMI 2017) is the reference supervised denoiser of low-dose CT: five
convolutions without padding shrink the image, five transposed convolutions grow it back, and
three shortcuts add the input to the output and two encoder activations to decoder activations
(so the network learns a residual: the noise to take away). Here it is 3D: kernels
``(k_s, k, k)`` are padded along the slice axis only, so a slab keeps its slice count and the
in-plane design is the paper's. It works on the same HU-window channels as the diffusion model
(``configs/common.yaml#hu_windows``) and is trained by the same data pipeline
(``train_transforms``: paired body-centred crops) with a mean-squared error on the channels.

Training is a :class:`RedCNNTrainer` (the recipe's ``RecipeTrainer``: checkpoints every
``save_every`` iterations, resume by running again, bf16/fp16, clipping), run by
``configs/redcnn.yaml``; :meth:`RedCNNTrainer.export` writes ``models/redcnn.pt``:
``{"format": "ctv2v-redcnn", "config": ..., "hu_windows": ..., "state_dict": ...}``, loadable with
``torch.load(weights_only=True)``. :class:`RedCNNEnhancer` applies it to whole volumes in HU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bundle.data.windows import HUWindows
from bundle.diffusion.tiling import tiled_apply
from bundle.engines.base import RecipeTrainer
from bundle.evaluation.methods import Method
from bundle.inference.enhancer import Enhancement
from bundle.utils.io import atomic_torch_save
from bundle.utils.model_files import ModelFileError, describe_contents, load_weights
from bundle.utils.validation import first_error_line

__all__ = ["RedCNN3D", "RedCNNEnhancer", "RedCNNMethod", "RedCNNTrainer", "load_redcnn", "train_redcnn"]

FORMAT = "ctv2v-redcnn"
FORMAT_VERSION = 1

logger = logging.getLogger(__name__)


class RedCNN3D(nn.Module):
    """RED-CNN with 3D kernels: ``(B, C, S, H, W)`` -> same shape.

    Args:
        in_channels: input channels (the HU windows); the output has as many.
        channels: feature maps of every hidden layer (96 in the paper).
        kernel_size: ``(slices, rows, cols)``; in-plane unpadded as in the paper (10 layers shrink
            and regrow H and W by ``4 (k - 1)`` each way, so H, W >= ``5 (k - 1) + 1``), slices padded.

    Layers: ``conv1..conv5`` (ReLU after each), ``deconv1..deconv5``; shortcuts: conv4's output
    joins deconv1's, conv2's joins deconv3's, the input joins deconv5's (a ReLU follows each join
    inside the network; the final output is not rectified, channels live in [-1, 1]).
    """

    def __init__(self, in_channels: int = 3, channels: int = 96, kernel_size=(3, 5, 5)) -> None:
        super().__init__()
        kernel_size = tuple(int(k) for k in kernel_size)
        if len(kernel_size) != 3 or any(k < 1 or k % 2 == 0 for k in kernel_size):
            raise ValueError(f"kernel_size must be three odd sizes (slices, rows, cols), got {kernel_size}.")
        self.config = {"in_channels": int(in_channels), "channels": int(channels), "kernel_size": list(kernel_size)}
        padding = (kernel_size[0] // 2, 0, 0)
        widths = [in_channels] + [channels] * 5
        self.encoder = nn.ModuleList(
            nn.Conv3d(widths[i], widths[i + 1], kernel_size, padding=padding) for i in range(5)
        )
        self.decoder = nn.ModuleList(
            nn.ConvTranspose3d(widths[5 - i], widths[4 - i], kernel_size, padding=padding) for i in range(5)
        )

    @property
    def min_size(self) -> int:
        """Smallest in-plane size the unpadded layers accept."""
        return 5 * (self.config["kernel_size"][1] - 1) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3, c4, c5 = self.encoder
        d1, d2, d3, d4, d5 = self.decoder
        shortcut_in = x
        out = F.relu(c2(F.relu(c1(x))))
        shortcut_2 = out
        out = F.relu(c4(F.relu(c3(out))))
        shortcut_4 = out
        out = F.relu(c5(out))
        out = F.relu(d1(out) + shortcut_4)
        out = F.relu(d3(F.relu(d2(out))) + shortcut_2)
        return d5(F.relu(d4(out))) + shortcut_in


class RedCNNEnhancer(nn.Module):
    """A trained RED-CNN applied to whole volumes in HU.

    Args:
        network: the :class:`RedCNN3D`.
        hu_windows: the windows that map HU to its channels (those it was trained with).
        tile, overlap: volumes larger than ``tile`` (slices, rows, cols) are processed in
            overlapping tiles (blended), which bounds memory; smaller ones in one pass.
    """

    def __init__(self, network: RedCNN3D, hu_windows, tile=(32, 256, 256), overlap=(8, 32, 32)) -> None:
        super().__init__()
        self.network = network
        self.windows = HUWindows(hu_windows)
        if self.windows.num_channels != network.config["in_channels"]:
            raise ValueError(
                f"{self.windows.num_channels} HU windows but the RED-CNN takes {network.config['in_channels']} channels."
            )
        self.tile = tuple(int(t) for t in tile)
        self.overlap = tuple(int(o) for o in overlap)

    @torch.no_grad()
    def forward(self, source_hu: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, H, W)`` or ``(1, S, H, W)`` HU -> HU of the same shape."""
        if hasattr(source_hu, "as_tensor"):
            source_hu = source_hu.as_tensor()
        unbatched = source_hu.dim() == 4
        x = source_hu.unsqueeze(0) if unbatched else source_hu
        device = next(self.network.parameters()).device
        x = x.to(device=device, dtype=torch.float32)
        # In-plane: at least the network's minimum size (pad with air, cropped afterwards).
        h, w = x.shape[-2:]
        need = self.network.min_size
        if h < need or w < need:
            x = F.pad(x, (0, max(0, need - w), 0, max(0, need - h)), value=-1000.0)
        channels = self.windows.to_channels(x)
        spatial = channels.shape[2:]
        if all(s <= t for s, t in zip(spatial, self.tile)):
            out = self.network(channels)
        else:
            window = tuple(min(s, t) for s, t in zip(spatial, self.tile))
            overlap = tuple(min(o, max(0, wi - 1)) for o, wi in zip(self.overlap, window))
            out = tiled_apply(self.network, channels, window=window, overlap=overlap, out_channels=channels.shape[1])
        hu = self.windows.to_hu(out)[..., :h, :w]
        return hu[0] if unbatched else hu

    def save(self, path: str | Path) -> None:
        atomic_torch_save(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "config": dict(self.network.config),
                "hu_windows": self.windows.as_config(),
                "state_dict": self.network.state_dict(),
            },
            path,
        )


def load_redcnn(path: str | Path, map_location="cpu", **settings) -> RedCNNEnhancer:
    """Rebuild a :class:`RedCNNEnhancer` from its file (architecture from the file itself)."""
    what = "RED-CNN baseline file"
    state = load_weights(path, map_location=map_location, what=what)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ModelFileError(path, f"not a RED-CNN baseline ({describe_contents(state)}; expected a '{FORMAT}' file)", what)
    if not isinstance(state.get("format_version", 1), int) or state.get("format_version", 1) > FORMAT_VERSION:
        raise ModelFileError(path, f"format version {state.get('format_version')!r} is newer than this ctv2v reads "
                             f"({FORMAT_VERSION}): update ctv2v", what)
    try:
        network = RedCNN3D(**state["config"])
        network.load_state_dict(state["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ModelFileError(path, f"its weights do not fit the architecture it declares "
                             f"({type(error).__name__}: {first_error_line(error)})", what) from None
    return RedCNNEnhancer(network.eval(), state["hu_windows"], **settings).eval()


class RedCNNTrainer(RecipeTrainer):
    """Supervised training of :class:`RedCNN3D` on paired crops of window channels.

    Args (beyond :class:`RecipeTrainer`): ``network``; ``loss``: ``"mse"`` (the paper's) or ``"l1"``.
    Batches are dicts with ``source`` and ``target`` channels ``(B, C, S, H, W)``.
    """

    checkpoint_prefix = "redcnn"

    def __init__(self, network: RedCNN3D, *args, loss: str = "mse", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if loss not in ("mse", "l1"):
            raise ValueError(f"loss must be 'mse' or 'l1', got {loss!r}.")
        self.network = network
        self.loss = loss

    def compute_loss(self, batch: dict):
        device = self.state.device
        source = batch["source"].to(device)
        target = batch["target"].to(device)
        pred = self.network(source).float()
        loss = F.mse_loss(pred, target.float()) if self.loss == "mse" else F.l1_loss(pred, target.float())
        return loss, {}

    def checkpoint_objects(self) -> dict:
        return {"network": self.network}

    def run(self) -> None:  # type: ignore[override]
        self.network.train()
        super().run()
        self.network.eval()

    def export(self, path: str | Path, hu_windows) -> None:
        """Write the baseline's model file (atomically)."""
        RedCNNEnhancer(self.network, hu_windows).save(path)
        logger.info("RED-CNN baseline written to %s", path)


def train_redcnn(config_files, overrides: dict[str, Any] | None = None, run_id: str = "training") -> None:
    """Run ``configs/redcnn.yaml``'s ``training`` list (with ``overrides``), as
    ``python -m monai.bundle run training`` would: used by the evaluation to train it first."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files)
    parser.update(overrides or {})
    parser.get_parsed_content(run_id)


class RedCNNMethod(Method):
    """The report's ``redcnn`` row: the trained baseline at ``path``, or "not trained".

    Args:
        path: the model file (``models/redcnn.pt``).
        device: where to run it.
        tile, overlap: see :class:`RedCNNEnhancer`.
        name: the row's name (``redcnn_2d`` for the per-slice variant, ``configs/redcnn_2d.yaml``).
    """

    name = "redcnn"

    def __init__(self, path: str | Path, device="cpu", tile=(32, 256, 256), overlap=(8, 32, 32),
                 name: str = "redcnn") -> None:
        self.name = name
        self.path = Path(path)
        self.device = torch.device(device)
        self.tile = tile
        self.overlap = overlap
        self._enhancer: RedCNNEnhancer | None = None

    @property
    def status(self) -> str | None:
        if not self.path.is_file():
            return (
                f"not trained (no {self.path}; python -m monai.bundle run training --config_file configs/redcnn.yaml, "
                "or train_redcnn: true in the evaluation config)"
            )
        return None

    @property
    def per_slice(self) -> bool:
        """Whether the network's kernels span one slice (the 2D variant)."""
        return self.status is None and self._load().network.config["kernel_size"][0] == 1

    def settings(self) -> dict[str, Any]:
        if self._enhancer is None and self.status is None:
            self._load()
        config = dict(self._enhancer.network.config) if self._enhancer is not None else {}
        return {"path": str(self.path), **config}

    def _load(self) -> RedCNNEnhancer:
        if self._enhancer is None:
            self._enhancer = load_redcnn(self.path, map_location=self.device, tile=self.tile, overlap=self.overlap)
        return self._enhancer

    def enhance(self, source_hu, target_hu=None) -> Enhancement:
        return Enhancement(hu=self._load()(source_hu).cpu())
