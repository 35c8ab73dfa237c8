"""What the HU decoding of the window channels changes: the gated decoding (``HUWindows.to_hu``)
against the earlier rule (the narrowest channel that looks unsaturated wins), on the same network
outputs of a trained model, scored on a datalist split in every metric window.

    python scripts/hu_decoding_study.py --model models/model.pt --datalist data/demo/datalist.json

The model enhances each volume once; both decodings read the same decoded channels, so the
difference is the decoding alone. Run from the bundle root.
"""

from __future__ import annotations

import argparse

import torch

from bundle.data.datalist import load_datalist
from bundle.data.windows import HUWindows
from bundle.inference import CTEnhancer
from bundle.metrics import METRIC_WINDOWS, window_metrics


def narrowest_unsaturated(windows: HUWindows, channels: torch.Tensor) -> torch.Tensor:
    """The earlier decoding: per voxel, the narrowest window whose channel is strictly inside
    (-1 + margin, 1 - margin) decodes it; the widest where all are saturated."""
    upper = 1.0 - windows.margin
    hu = None
    for index in windows._widest_first:
        lo, hi = windows.windows[index]
        channel = channels.narrow(-4, index, 1)
        decoded = lo + (channel.clamp(-1.0, 1.0) + 1.0) * (0.5 * (hi - lo))
        hu = decoded if hu is None else torch.where(channel.abs() < upper, decoded, hu)
    return hu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--datalist", default="data/demo/datalist.json")
    parser.add_argument("--split", default="test")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    from monai.bundle import ConfigParser

    config = ConfigParser()
    config.read_config("configs/common.yaml")
    config.update({"network": {"num_slices": 8}})
    transforms = config.get_parsed_content("val_transforms")
    enhancer = CTEnhancer.from_file(args.model, num_inference_steps=args.steps)
    windows = enhancer.windows
    captured = []
    original = HUWindows.to_hu

    def capture(self, channels, channel_dim=-4):
        captured.append(channels.detach().clone())
        return original(self, channels, channel_dim)

    print("| volume | window | decoding | PSNR | SSIM | RMSE (HU) |\n|---|---|---|---|---|---|")
    for item in load_datalist(args.datalist, args.split):
        pair = transforms(item)
        source, target = pair["source"].as_tensor(), pair["target"].as_tensor()
        captured.clear()
        HUWindows.to_hu = capture
        try:
            gated = enhancer.enhance(source).hu
        finally:
            HUWindows.to_hu = original
        channels = captured[-1]  # the sample's decoded channels, padded like the enhancer pads
        old = narrowest_unsaturated(windows, channels)[..., : source.shape[-3], : source.shape[-2], : source.shape[-1]]
        rows = {"gated (now)": gated, "narrowest unsaturated (before)": old.reshape(gated.shape), "identity": source}
        name = item.get("patient", item["source"])
        for label, hu in rows.items():
            for window, m in window_metrics(hu, target, METRIC_WINDOWS).items():
                print(f"| {name} | {window} | {label} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['rmse']:.1f} |")
        changed = (rows["gated (now)"] - rows["narrowest unsaturated (before)"]).abs()
        print(f"\n{name}: voxels changed by more than 1 HU: {(changed > 1).float().mean().item():.4%}, "
              f"max change {changed.max().item():.0f} HU\n")


if __name__ == "__main__":
    main()
