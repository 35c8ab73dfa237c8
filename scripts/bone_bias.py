"""Where a model's bone bias sits on a volume without tissue labels (the LIDC sample): the error
against the clean truth in the evaluation's bone class (reference >= 300 HU, eroded 1 pixel
in-plane), split into its rim and core (eroded 3), into density bands, and in the soft tissue
within 3 pixels of bone. A level error shows in the core and the dense band; blur at bone edges
shows in the rim and the soft tissue beside it. The output is ``no_diffusion`` (the source's own
latent), which the DDIM rows match to 0.1 dB (docs/quality.md).

    python scripts/bone_bias.py --model runs/lidc3/q_s0/model.pt --datalist data/lidc/datalist.json

Run from the bundle root; docs/quality.md has the table.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import ndimage


def regions(clean: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of ``clean`` ``(S, H, W)`` in HU: the evaluation's bone class (bundle.metrics.hu_accuracy)
    split further, eroded and dilated in-plane only as that class is (slices are thick)."""
    from bundle.metrics.hu_accuracy import HU_CLASSES, class_masks

    plane = np.zeros((3, 3, 3), bool)
    plane[1] = ndimage.generate_binary_structure(2, 1)
    bone_lo = HU_CLASSES["bone"][0]
    soft_lo, soft_hi = HU_CLASSES["soft tissue"]
    eroded = class_masks(clean)["bone"]
    core = ndimage.binary_erosion(clean >= bone_lo, plane, iterations=3)
    near = ndimage.binary_dilation(clean >= bone_lo, plane, iterations=3) & (clean >= soft_lo) & (clean < soft_hi)
    return {"bone (the metric's)": eroded, "rim": eroded & ~core, "core": core,
            f"{bone_lo:g}-600 HU": eroded & (clean < 600), "600-1000 HU": eroded & (clean >= 600) & (clean < 1000),
            ">= 1000 HU": eroded & (clean >= 1000), "soft tissue within 3 px": near}


def main() -> None:
    from monai.bundle import ConfigParser

    import bundle.data.datalist
    from bundle.inference import CTEnhancer
    from bundle.inference.band_arguments import (
        add_source_band_arguments,
        source_band_settings,
    )

    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--model", nargs="+", default=["models/model.pt"], help="one or more model files")
    args.add_argument("--datalist", default="data/lidc/datalist.json")
    args.add_argument("--split", default="test")
    add_source_band_arguments(args)
    args.add_argument("--decimals", type=int, default=1, help="decimals of the table's HU")
    opts = args.parse_args()
    torch.set_grad_enabled(False)
    parser = ConfigParser()
    parser.read_config("configs/common.yaml")
    transform = parser.get_parsed_content("val_transforms")
    items = bundle.data.datalist.load_datalist(opts.datalist, opts.split)
    settings = source_band_settings(opts)
    enhancers = {path: CTEnhancer.from_file(path, **settings).eval() for path in opts.model}  # once, not per volume
    print("mean error / RMSE vs clean (HU)\n")
    for item in items:
        if not item.get("clean"):
            raise SystemExit(f"{opts.datalist}: {item.get('patient')!r} in {opts.split!r} has no clean truth.")
        data = transform(item)
        source = data["source"].as_tensor().float()
        clean = data["clean"].as_tensor().float().numpy()[0]
        masks = regions(clean)
        outputs = {"input": source.numpy().reshape(clean.shape)}
        for path, enhancer in enhancers.items():
            outputs[path] = enhancer.ceiling(source, source).numpy().reshape(clean.shape)
        print(f"{item.get('patient')}:\n")
        print("| output | " + " | ".join(f"{name} ({mask.sum()} voxels)" for name, mask in masks.items()) + " |")
        print("|---|" + "---|" * len(masks))
        for name, output in outputs.items():
            error = output.astype(np.float64) - clean
            cells = [f"{error[m].mean():+.{opts.decimals}f} / {np.sqrt((error[m] ** 2).mean()):.{opts.decimals}f}" for m in masks.values()]
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
