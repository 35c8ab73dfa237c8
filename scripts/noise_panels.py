"""Side by side: the clean truth and low-dose scans of the same slice, with each scan's noise
(scan - truth) below it, in fixed HU windows. Shows what a simulator setting does to the noise,
e.g. photon starvation (``--reading-i0``, docs/quality.md):

    python scripts/noise_panels.py data/demo/demo002_clean.nii.gz \\
        data/demo/demo002_source_dose0.05.nii.gz data/demo_s5/demo002_source_dose0.05.nii.gz \\
        --titles "5 % dose" "5 % dose, starvation (3e4)" --output docs/starvation.png

The noise row also shows its low band (Gaussian, sigma 8 px: below the 8x latent's Nyquist),
the part of the noise a latent can hold.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy.ndimage import gaussian_filter

from bundle.data.volume_io import load_ct
from bundle.utils.io import atomic_path


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("truth", help="the clean truth (NIfTI or DICOM series)")
    args.add_argument("scans", nargs="+", help="scans of the same volume")
    args.add_argument("--titles", nargs="*", help="one per scan (default: file names)")
    args.add_argument("--slice", type=int, help="axial slice (default: the middle one)")
    args.add_argument("--window", type=float, nargs=2, default=(-160.0, 240.0), help="HU window of the images")
    args.add_argument("--noise-window", type=float, default=100.0, help="+- HU of the noise images")
    args.add_argument("--output", required=True, help="PNG file")
    opts = args.parse_args()
    titles = opts.titles or opts.scans
    if len(titles) != len(opts.scans):
        args.error("give one title per scan")
    truth = load_ct(opts.truth).hu
    k = truth.shape[0] // 2 if opts.slice is None else opts.slice
    n = len(opts.scans)
    fig, axes = plt.subplots(3, n + 1, figsize=(3.6 * (n + 1), 10.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].imshow(truth[k], cmap="gray", vmin=opts.window[0], vmax=opts.window[1])
    axes[0, 0].set_title("clean truth")
    for i, (path, title) in enumerate(zip(opts.scans, titles), start=1):
        scan = load_ct(path).hu
        if scan.shape != truth.shape:
            raise SystemExit(f"error: {path} has shape {scan.shape}, the truth {truth.shape}")
        noise = (scan - truth).astype(np.float64)
        low = gaussian_filter(noise, (0, 8, 8))
        axes[0, i].imshow(scan[k], cmap="gray", vmin=opts.window[0], vmax=opts.window[1])
        axes[0, i].set_title(title)
        axes[1, i].imshow(noise[k], cmap="RdBu_r", vmin=-opts.noise_window, vmax=opts.noise_window)
        axes[1, i].set_title(f"noise, sigma {noise[k].std():.1f} HU")
        axes[2, i].imshow(low[k], cmap="RdBu_r", vmin=-opts.noise_window / 5, vmax=opts.noise_window / 5)
        axes[2, i].set_title(f"its low band (+-{opts.noise_window / 5:g} HU), rms {low[k].std():.1f}")
    fig.tight_layout()
    with atomic_path(opts.output) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    print(opts.output)


if __name__ == "__main__":
    main()
