"""Choose ``source_lowpass_sigma`` on the VALIDATION split: the output's low band from the source.

``CTEnhancer(source_lowpass_sigma=s)`` replaces the output's in-plane frequencies below a
Gaussian of ``s`` pixels by the source's own (``bundle/inference/low_frequency.py``): the band
where under 1 % of the low-dose noise lives, so a model's HU bias there goes and little noise
comes back. This runs the model once per validation volume (``s = 0``) and applies the same
function for each ``s`` (it is linear and applied after decoding, so the result equals the
enhancer's with that setting), then prints per ``s``: key-window PSNR/SSIM against the clean
truth (or the target), the noise sigma in flat regions, and bias/RMSE per tissue class (classes
from the truth's HU ranges). Run from the bundle root:

    python scripts/lowpass_study.py --model models/model.pt --datalist data/demo/datalist.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    import bundle.data.datalist
    from bundle.inference import CTEnhancer
    from bundle.inference.low_frequency import keep_source_low_frequencies
    from bundle.metrics import class_masks, flat_region_mask, hu_accuracy, volume_metrics
    from monai.bundle import ConfigParser

    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--model", default="models/model.pt")
    args.add_argument("--datalist", default="data/demo/datalist.json")
    args.add_argument("--split", default="validation")
    args.add_argument("--sigmas", type=float, nargs="+", default=[0, 1.5, 3, 6])
    args.add_argument("--steps", type=int, default=10)
    args.add_argument("--window", type=float, nargs=2, default=(-160.0, 240.0))
    opts = args.parse_args()
    torch.set_grad_enabled(False)
    parser = ConfigParser()
    parser.read_config("configs/common.yaml")
    transform = parser.get_parsed_content("val_transforms")
    enhancer = CTEnhancer.from_file(opts.model, source_lowpass_sigma=0.0).eval()
    print(f"model {opts.model}, {opts.split} split of {opts.datalist}, DDIM {opts.steps}, key window {opts.window}\n")
    print("| volume | sigma (px) | PSNR | SSIM | noise sigma (HU) | worst class bias (HU) | bias per class (HU) | RMSE per class (HU) |")
    print("|---|---|---|---|---|---|---|---|")
    for item in bundle.data.datalist.load_datalist(opts.datalist, opts.split):
        data = transform(item)
        truth_key = "clean" if "clean" in data else "target"
        source, truth = (data[k].as_tensor().float() for k in ("source", truth_key))
        output = enhancer.enhance(source, num_inference_steps=opts.steps).hu
        truth_np = truth[0].numpy()
        masks = class_masks(truth_np)
        flat = flat_region_mask(truth_np)
        name = item.get("patient", Path(str(item["source"])).name)
        rows = [("input", source)] + [(f"{s:g}", keep_source_low_frequencies(output, source, s)) for s in opts.sigmas]
        for label, hu in rows:
            metrics = volume_metrics(hu, truth, opts.window, flat_mask=flat)
            classes = hu_accuracy(hu[0].numpy(), truth_np, masks)
            bias = " ".join(f"{c}: {v['bias']:+.1f}" for c, v in classes.items())
            rmse = " ".join(f"{c}: {v['rmse']:.1f}" for c, v in classes.items())
            worst = max(abs(v["bias"]) for v in classes.values())
            print(f"| {name} | {label} | {metrics['psnr']:.2f} | {metrics['ssim']:.4f} | {metrics['noise_sigma']:.2f} "
                  f"| {worst:.1f} | {bias} | {rmse} |", flush=True)


if __name__ == "__main__":
    main()
