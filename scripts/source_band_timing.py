"""Time the output's source band (``bundle/inference/low_frequency.py``) side by side on one
synthetic volume: one Gaussian, per tissue level, each with and without the Gaussian along the
slices, at the default sigmas and at ``--compare``'s (0.8.0's by default). Prints a table; run alone
(other jobs skew the seconds).

    python scripts/source_band_timing.py --shape 133 512 512 --repeats 2
"""
from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    from bundle.inference.low_frequency import (
        TISSUE_LEVELS,
        keep_source_low_frequencies,
    )

    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--shape", type=int, nargs=3, default=(133, 512, 512), help="slices, rows, columns")
    args.add_argument("--repeats", type=int, default=2)
    args.add_argument("--sigma", type=float, default=1.0, help="in-plane sigma (px; configs/train.yaml's)")
    args.add_argument("--sigma-z", type=float, default=3.0, help="sigma along the slices (configs/train.yaml's)")
    args.add_argument("--compare", type=float, nargs=2, default=(1.5, 3.0), metavar=("SIGMA", "SIGMA_Z"),
                      help="a second (sigma, sigma_z) for the per-level band along slices (default 0.8.0's)")
    opts = args.parse_args()
    torch.set_grad_enabled(False)
    s, h, w = opts.shape
    generator = torch.Generator().manual_seed(0)
    clean = torch.full((1, 1, s, h, w), -1000.0)  # air, a soft-tissue body, a bone block
    clean[..., h // 5 : 4 * h // 5, w // 5 : 4 * w // 5] = 40.0
    clean[..., 2 * h // 5 : h // 2, 2 * w // 5 : w // 2] = 1200.0
    output = clean + 5 * torch.randn(clean.shape, generator=generator)
    source = clean + 20 * torch.randn(clean.shape, generator=generator)
    sigma, sigma_z = opts.sigma, opts.sigma_z
    other, other_z = opts.compare
    bands = {f"one Gaussian ({sigma:g} px)": (sigma, {}),
             f"one Gaussian, along slices ({sigma:g} px, {sigma_z:g} slices)": (sigma, {"sigma_z": sigma_z}),
             f"per tissue level ({sigma:g} px)": (sigma, {"levels": TISSUE_LEVELS}),
             f"per tissue level, along slices ({sigma:g} px, {sigma_z:g} slices)": (sigma, {"levels": TISSUE_LEVELS, "sigma_z": sigma_z}),
             f"per tissue level, along slices ({other:g} px, {other_z:g} slices)": (other, {"levels": TISSUE_LEVELS, "sigma_z": other_z})}
    print(f"| band | seconds per {s} x {h} x {w} volume ({torch.get_num_threads()} threads), each repeat |")
    print("|---|---|")
    for name, (band_sigma, kwargs) in bands.items():
        seconds = []
        for _ in range(opts.repeats):
            start = time.perf_counter()
            keep_source_low_frequencies(output, source, band_sigma, **kwargs)
            seconds.append(time.perf_counter() - start)
        print(f"| {name} | {' / '.join(f'{t:.1f}' for t in seconds)} |", flush=True)


if __name__ == "__main__":
    main()
