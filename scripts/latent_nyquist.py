"""Where the noise lives: the share of low-dose noise power an 8x in-plane latent can hold at all.

For the datalist's test list (``--dose``, 0.25 by default) and each ``test_dose<d>`` list, per
dose: the 2D noise power spectrum (bundle/metrics/nps.py) of the source's noise (source - clean
truth where the datalist has it, else source - target, which also holds the target's noise) over
whole slices (the finest frequency grid; the simulated noise covers the field of view), and the share of its power below 1/8, 1/4 and 1/2 of the image's
Nyquist frequency per axis (1/8: the latent grid of the 8x VAE, the band a latent can
represent); the same for the anatomy (the clean truth, each ROI's mean removed) for comparison.
A latent model can only remove what the latent sees; what lies above its Nyquist is the
decoder's (and the fidelity path's) to remove. Run from the bundle root:

    python scripts/latent_nyquist.py --datalist data/demo/datalist.json

Prints a markdown table (docs/quality.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

CUTOFFS = (1 / 8, 1 / 4, 1 / 2)


def shares(volume: np.ndarray, pixel_mm, detrend: str) -> tuple[list[float], float, float]:
    """(share of power below each cutoff, sigma, mean frequency / Nyquist) of ``volume``'s slices."""
    from bundle.metrics import noise_power_spectrum

    nps = noise_power_spectrum(volume, pixel_mm, detrend=detrend)
    nyquist = min(0.5 / pixel_mm[0], 0.5 / pixel_mm[1])
    return [nps.share_below(c) for c in CUTOFFS], float(np.sqrt(nps.variance)), nps.mean_frequency / nyquist


def main() -> None:
    import bundle.data.datalist
    from monai.bundle import ConfigParser

    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--datalist", default="data/demo/datalist.json")
    args.add_argument("--dose", type=float, default=0.25, help="the dose of the datalist's 'test' list")
    opts = args.parse_args()
    parser = ConfigParser()
    parser.read_config("configs/common.yaml")
    transform = parser.get_parsed_content("val_transforms")
    lists = {opts.dose: "test"}
    for key in json.loads(Path(opts.datalist).read_text()):
        if key.startswith("test_dose"):
            lists[float(key[len("test_dose"):])] = key
    header = " | ".join(f"noise < {c:g} Nyq" for c in CUTOFFS)
    print(f"| dose | volume | noise from | noise sigma (HU) | {header} | noise mean freq / Nyq | anatomy < 1/8 Nyq |")
    print("|" + "---|" * (6 + len(CUTOFFS)))
    for dose in sorted(lists, reverse=True):
        for item in bundle.data.datalist.load_datalist(opts.datalist, lists[dose]):
            data = transform(item)
            source = data["source"][0].numpy()
            truth_key = "clean" if "clean" in data else "target"
            truth = data[truth_key][0].numpy()
            pixel_mm = tuple(float(p) for p in data["source"].pixdim[1:3])  # (S, H, W): in-plane
            noise_shares, sigma, mean_freq = shares(source - truth, pixel_mm, "none")
            anatomy = shares(truth, pixel_mm, "mean")[0][0] if truth_key == "clean" else float("nan")
            cells = " | ".join(f"{100 * s:.1f} %" for s in noise_shares)
            name = item.get("patient", Path(str(item["source"])).name)
            print(f"| {dose:g} | {name} | source - {truth_key} | {sigma:.1f} | {cells} | {mean_freq:.2f} | {100 * anatomy:.1f} % |")


if __name__ == "__main__":
    main()
