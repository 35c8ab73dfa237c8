"""Whole-volume inference benchmark: seconds per stage, per slab and per volume, and peak memory.

    python scripts/benchmark_inference.py --model models/model.pt --shape 32 128 128 --steps 20
    python scripts/benchmark_inference.py --model models/model.pt --precision fp32 bf16

Precisions run side by side in one process (this machine is shared and noisy: compare ratios
measured together, not numbers from different runs). The volume is a synthetic phantom with
low-dose noise. Peak memory is the process's maximum resident set size (it only grows, so the
first row is the most meaningful when several run).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from bundle.data.phantom import make_phantom
from bundle.inference import CTEnhancer
from bundle.utils.precision import PRECISIONS, autocast


class Timer:
    """Accumulates wall time of wrapped calls (encode, U-Net, decode)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.calls[name] = self.calls.get(name, 0) + 1
            return out

        return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--shape", nargs=3, type=int, default=[32, 128, 128], metavar=("S", "H", "W"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=sorted(PRECISIONS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    enhancer = CTEnhancer.from_file(args.model, num_inference_steps=args.steps).to(device)
    phantom = make_phantom(0, shape=tuple(args.shape))
    rng = np.random.default_rng(0)
    source = torch.from_numpy(phantom.hu + rng.normal(0, 20, phantom.hu.shape).astype(np.float32))[None, None]
    slab_pixels = np.prod(enhancer.latent_window) * enhancer.vae_factor**2
    slabs = np.prod(args.shape) / slab_pixels

    rows = []
    for precision in args.precision:
        timer = Timer()
        enhancer.autoencoder.encode = timer.wrap("encode", type(enhancer.autoencoder).encode.__get__(enhancer.autoencoder))
        enhancer.autoencoder.decode = timer.wrap("decode", type(enhancer.autoencoder).decode.__get__(enhancer.autoencoder))
        enhancer.unet.forward = timer.wrap("unet", type(enhancer.unet).forward.__get__(enhancer.unet))
        amp = autocast(device, precision)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        start = time.perf_counter()
        with amp:
            out = enhancer(source.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        total = time.perf_counter() - start
        peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        rows.append((precision, total, total / slabs, timer, peak, float(out.float().std())))

    print(f"\nvolume {tuple(args.shape)}, {args.steps} DDIM steps, window {enhancer.latent_window} latent, "
          f"{slabs:.1f} slab-equivalents, device {device}, threads {torch.get_num_threads()}\n")
    print("| precision | volume s | s per slab | encode s | U-Net s (calls) | decode s | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for precision, total, per_slab, timer, peak, _ in rows:
        s, c = timer.seconds, timer.calls
        print(f"| {precision} | {total:.1f} | {per_slab:.2f} | {s.get('encode', 0):.1f} | "
              f"{s.get('unet', 0):.1f} ({c.get('unet', 0)}) | {s.get('decode', 0):.1f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
