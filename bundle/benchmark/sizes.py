"""The model sizes a benchmark runs: the training recipe's own configs, parsed as training parses them.

``demo``  configs/train.yaml + configs/demo.yaml (the README's CPU-sized model)
``full``  configs/train.yaml alone (the spec's sizes with the recipe's default fidelity path)
a path   configs/train.yaml + that YAML file (e.g. tests/tiny.yaml, configs/spec_exact.yaml)

Networks come from the configs' ``autoencoder_def`` and ``unet_def``, randomly initialised
(timings do not depend on the weights), so the benchmark measures exactly what training builds.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from monai.bundle import ConfigParser

__all__ = ["SizeSpec", "load_size", "SIZE_CONFIGS"]

SIZE_CONFIGS = {
    "demo": ["configs/train.yaml", "configs/demo.yaml"],
    "full": ["configs/train.yaml"],
}


@dataclass
class SizeSpec:
    """One model size: its name, the parsed recipe config, and what the rows need from it."""

    name: str
    parser: ConfigParser
    bundle_root: Path
    patch: tuple[int, int, int]      # (slices, H, W) of one training crop
    batch_size: int
    hu_windows: list

    def get(self, item: str, **kwargs):
        """A parsed (instantiated) config item, read with the bundle root as working directory
        (macros like ``%configs/common.yaml#...`` are relative to it). Every call builds anew."""
        with contextlib.chdir(self.bundle_root):
            return self.parser.get_parsed_content(item, lazy=False, **kwargs)

    def build_networks(self, device="cpu"):
        """Fresh ``(vae, unet)`` of this size on ``device``, randomly initialised."""
        return self.get("autoencoder_def").to(device), self.get("unet_def").to(device)

    def build_schedule(self):
        return self.get("schedule")

    def enhancer_settings(self) -> dict:
        """The tiling geometry training stores in ``model.pt`` for this size."""
        return dict(self.get("enhancer_settings"))


def load_size(name: str, bundle_root: str | Path = ".") -> SizeSpec:
    """``demo``, ``full`` or a YAML override path (relative to ``bundle_root`` or absolute)."""
    root = Path(bundle_root).resolve()
    if name in SIZE_CONFIGS:
        files = SIZE_CONFIGS[name]
        label = name
    else:
        path = Path(name)
        if not (path if path.is_absolute() else root / path).is_file():
            raise FileNotFoundError(f"size {name!r}: neither 'demo', 'full' nor a YAML file under {root}")
        files = ["configs/train.yaml", str(path)]
        label = path.stem
    missing = [f for f in files if not (Path(f) if Path(f).is_absolute() else root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"size {name!r} needs {', '.join(missing)} under the bundle root {root} "
                                "(run ctv2v benchmark from the bundle folder or pass --bundle-root)")
    parser = ConfigParser()
    with contextlib.chdir(root):
        parser.read_config(files)
        # no data, outputs or checkpoints: only network and recipe items are ever parsed
        patch = tuple(int(v) for v in parser.get_parsed_content("train_patch_size"))
        batch_size = int(parser.get_parsed_content("batch_size"))
        hu_windows = [list(w) for w in parser.get_parsed_content("hu_windows")]
    return SizeSpec(name=label, parser=parser, bundle_root=root, patch=patch, batch_size=batch_size,
                    hu_windows=hu_windows)
