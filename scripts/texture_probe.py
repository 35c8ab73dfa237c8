"""The texture term at a trained model's operating point: on a few validation crops decoded from the
target's own latent (the path's input in training), the path loss of ``configs/train.yaml`` and the
texture term read over the crop and in the flat tissue, each with its gradient norm (what a weight
is chosen against), and the flat tissue's radial spectrum of the output against the target's.

    python scripts/texture_probe.py --model runs/lidc10/q_s0/model.pt --datalist data/lidc10/datalist.json

Run from the bundle root; docs/quality.md ("The texture term in the flat tissue") has the numbers.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

# (first slice, row, column) of the 8x128x128 crops, spread over a 15x256x256 validation slab
CROPS = ((0, 40, 40), (4, 64, 90), (7, 100, 60), (2, 20, 110))


def load_pair(datalist: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's first (source, target) pair as ``(slices, columns, rows)`` HU tensors: the
    orientation the crops above (and docs/quality.md's numbers) were placed on."""
    from bundle.data.datalist import load_datalist
    from bundle.data.volume_io import load_ct

    item = load_datalist(datalist, split)[0]
    return tuple(torch.from_numpy(load_ct(item[key]).hu).transpose(1, 2) for key in ("source", "target"))


def main() -> None:
    from monai.bundle import ConfigParser

    from bundle.engines.losses import (
        ReconstructionLoss,
        _flat_tissue,
        _minus_local_mean,
        radial_power_spectrum,
    )
    from bundle.inference.enhancer import CTEnhancer

    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--model", required=True)
    args.add_argument("--datalist", type=Path, required=True)
    args.add_argument("--split", default="validation")
    opts = args.parse_args()

    enhancer = CTEnhancer.from_file(opts.model).eval()
    source, target = load_pair(opts.datalist, opts.split)
    need = tuple(max(c[i] + size for c in CROPS) for i, size in enumerate((8, 128, 128)))
    if any(n < m for n, m in zip(target.shape, need)):
        raise SystemExit(f"{opts.datalist} {opts.split}: a slab of {tuple(target.shape)} voxels; the crops need {need}")
    crops = [(source, target)[i][None, t:t + 8, y:y + 128, x:x + 128] for t, y, x in CROPS for i in (0, 1)]
    channels = torch.stack([enhancer.windows.to_channels(c, channel_dim=0) for c in crops])
    src, tgt = channels[0::2], channels[1::2]
    with torch.no_grad():
        recon = enhancer.autoencoder.decode(enhancer.autoencoder.encode_moments(tgt)[0], source=src)
    recon.requires_grad_(True)

    parser = ConfigParser()
    parser.read_config("configs/train.yaml")
    path_loss = {k: v for k, v in parser.get("fidelity_loss").items() if k != "_target_"}
    windows = enhancer.windows.as_config()
    path_loss["hu_windows"] = windows
    losses = {"path loss (configs/train.yaml)": ReconstructionLoss(**path_loss),
              "texture, crop": ReconstructionLoss(l1=0, texture=1.0),
              "texture, flat": ReconstructionLoss(l1=0, texture=1.0, texture_region="flat", hu_windows=windows)}
    flat = _flat_tissue(losses["texture, flat"]._smoothed_hu(tgt))
    print("flat share per crop:", " ".join(f"{float(f.mean()):.3f}" for f in flat))
    for name, loss in losses.items():
        recon.grad = None
        total, _ = loss(recon, tgt)
        total.backward()
        print(f"{name:30s} value {float(total.detach()):.5f}   gradient norm {float(recon.grad.norm()):.5f}")
    with torch.no_grad():
        spectra = {name: radial_power_spectrum(flat * _minus_local_mean(x.detach()))[:, 1].mean(0)
                   for name, x in (("output", recon), ("target", tgt))}
    ratio = spectra["output"] / spectra["target"].clamp(min=1e-12)
    print("flat tissue, output / target power per ring, key-window channel (every 4th ring, to Nyquist):")
    print(" ".join(f"{v:.2f}" for v in ratio[1::4].tolist()), f"(top ring {float(ratio[-1]):.2f})")


if __name__ == "__main__":
    main()
