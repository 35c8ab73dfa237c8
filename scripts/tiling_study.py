"""Quality and time of inference settings (tiling, batching, steps) side by side on real volumes.

Each setting is a set of CTEnhancer overrides (``image_tile``, ``image_overlap``, ``latent_window``,
``latent_overlap``, ``window_batch_size``, ``num_inference_steps``, or ``no_diffusion``); every
setting runs on every volume of one datalist split in the same process, so the seconds compare.
Printed per setting: seconds per volume, the key window's PSNR and SSIM against the clean truth
(the target where there is none), the change from the first (reference) setting, and max / mean
|HU - reference output|. Choose on the validation split, report on the test split:

    python scripts/tiling_study.py --model models/model.pt --split validation
    python scripts/tiling_study.py --model models/model.pt --split test --settings plain chosen

Run from the bundle root. docs/benchmarks.md has the tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

# name -> overrides of the model file's settings ({} = as the file stores them)
SETTINGS = {
    "plain": {},
    "image_overlap_quarter": {"image_overlap": "quarter"},
    "image_overlap_eighth": {"image_overlap": "eighth"},
    "image_tile_2x": {"image_tile": "2x"},
    "image_tile_2x_quarter": {"image_tile": "2x", "image_overlap": "quarter"},
    "latent_overlap_quarter": {"latent_overlap": "quarter"},
    "latent_window_2x": {"latent_window": "2x"},
    "latent_window_2x_quarter": {"latent_window": "2x", "latent_overlap": "quarter"},
    "window_batch_16": {"window_batch_size": 16},
    "steps_10": {"num_inference_steps": 10},
    "steps_5": {"num_inference_steps": 5},
    "no_diffusion": {"no_diffusion": True},
}


def resolve(enhancer, overrides: dict) -> dict:
    """Symbolic overrides ("2x" tile, "quarter" overlap of the resolved tile) -> numbers."""
    out = dict(overrides)
    for tile, overlap in (("image_tile", "image_overlap"), ("latent_window", "latent_overlap")):
        window = list(getattr(enhancer, tile))
        if out.get(tile) == "2x":  # in-plane only: slices stay the training slab's
            window = [window[0], window[1] * 2, window[2] * 2]
            out[tile] = window
        if out.get(overlap) in ("quarter", "eighth"):
            div = 4 if out[overlap] == "quarter" else 8
            unit = enhancer.vae_factor if tile == "image_tile" else 1
            out[overlap] = [max(w // div // unit * unit, unit) if i else max(w // div, 1) for i, w in enumerate(window)]
        elif tile in out and overlap not in out:  # a larger tile keeps half overlap, as training stores it
            out[overlap] = [w // 2 for w in window]
    return out


def run_setting(enhancer, source: torch.Tensor, overrides: dict, steps: int) -> tuple[torch.Tensor, float]:
    saved = {k: getattr(enhancer, k) for k in ("image_tile", "image_overlap", "latent_window", "latent_overlap",
                                              "window_batch_size", "precision")}
    try:
        settings = {k: v for k, v in overrides.items() if k not in ("num_inference_steps", "no_diffusion")}
        for key, value in settings.items():
            setattr(enhancer, key, tuple(value) if isinstance(value, list) else value)
        start = time.perf_counter()
        if overrides.get("no_diffusion"):
            out = enhancer.ceiling(source, source)
        else:
            out = enhancer.enhance(source, num_inference_steps=overrides.get("num_inference_steps", steps)).hu
        return out, time.perf_counter() - start
    finally:
        for key, value in saved.items():
            setattr(enhancer, key, value)


def main() -> None:
    import bundle.data.datalist
    from bundle.inference import CTEnhancer
    from bundle.metrics import volume_metrics
    from monai.bundle import ConfigParser

    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--model", default="models/model.pt")
    args.add_argument("--datalist", default="data/demo/datalist.json")
    args.add_argument("--split", default="validation")
    args.add_argument("--steps", type=int, default=20, help="DDIM steps of every setting that does not set its own")
    args.add_argument("--settings", nargs="+", default=list(SETTINGS),
                      help="names from SETTINGS or of --custom ones; the first is the reference")
    args.add_argument("--custom", nargs="+", default=[], metavar="NAME=JSON",
                      help='more settings, e.g. \'tile16={"image_tile": [16, 64, 64], "image_overlap": [4, 16, 16]}\'')
    args.add_argument("--window", type=float, nargs=2, default=(-160.0, 240.0), help="the key window, HU")
    opts = args.parse_args()
    for custom in opts.custom:
        name, _, text = custom.partition("=")
        SETTINGS[name] = json.loads(text)
    unknown = [name for name in opts.settings if name not in SETTINGS]
    if unknown:
        args.error(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    torch.set_grad_enabled(False)
    parser = ConfigParser()
    parser.read_config("configs/common.yaml")
    transform = parser.get_parsed_content("val_transforms")
    enhancer = CTEnhancer.from_file(opts.model).eval()
    volumes = []
    for item in bundle.data.datalist.load_datalist(opts.datalist, opts.split):
        data = transform(item)
        truth_key = "clean" if "clean" in data else "target"
        volumes.append((Path(str(item["source"])).name, data["source"].as_tensor().float(),
                        data[truth_key].as_tensor().float()))
    shapes = ", ".join(str(tuple(v[1].shape[1:])) for v in volumes)
    print(f"model {opts.model}, split {opts.split} ({len(volumes)} volumes: {shapes}), {opts.steps} DDIM steps, "
          f"threads {torch.get_num_threads()}; file's geometry: tile {enhancer.image_tile} overlap "
          f"{enhancer.image_overlap}, latent window {enhancer.latent_window} overlap {enhancer.latent_overlap}, "
          f"window batch {enhancer.window_batch_size}\n")
    print(f"| setting | overrides | s per volume | x faster | PSNR {opts.window} | d PSNR | SSIM | max / mean |HU - ref| |")
    print("|---|---|---|---|---|---|---|---|")
    reference, ref_time, ref_psnr = None, None, None
    for name in opts.settings:
        overrides = resolve(enhancer, SETTINGS[name])
        outputs, seconds, psnrs, ssims = [], 0.0, [], []
        for _, source, truth in volumes:
            out, s = run_setting(enhancer, source, overrides, opts.steps)
            seconds += s
            m = volume_metrics(out, truth, opts.window)
            psnrs.append(m["psnr"])
            ssims.append(m["ssim"])
            outputs.append(out)
        seconds /= len(volumes)
        psnr, ssim = sum(psnrs) / len(psnrs), sum(ssims) / len(ssims)
        if reference is None:
            reference, ref_time, ref_psnr = outputs, seconds, psnr
        diff = torch.cat([(o - r).abs().flatten() for o, r in zip(outputs, reference)])
        shown = {k: v for k, v in overrides.items()} or "as stored"
        print(f"| {name} | {shown} | {seconds:.2f} | {ref_time / seconds:.2f} | {psnr:.3f} | {psnr - ref_psnr:+.3f} "
              f"| {ssim:.4f} | {diff.max():.1f} / {diff.mean():.2f} |", flush=True)


if __name__ == "__main__":
    main()
