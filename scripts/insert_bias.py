"""Where the QA inserts' HU bias comes from: per insert, the mean error against the clean truth in
discs of 30 % and 60 % of its radius (the evaluation uses 60 %), for outputs that switch the
model's output formula on and off part by part: the stored formula (low band from the source,
fidelity path), without the low band, without the path (the spec's decoder), and the ceiling.
An edge (resolution) effect grows from the centre outwards; a level error does not.

    python scripts/insert_bias.py --model models/model.pt --datalist data/demo/datalist.json

Run from the bundle root; docs/quality.md has the table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def disc_bias(output: np.ndarray, clean: np.ndarray, insert: dict, fraction: float, pixel_mm: float) -> float:
    """Mean error in the central disc of ``fraction`` of the insert's radius, every slice."""
    from bundle.evaluation.physics import _disc

    roi = np.broadcast_to(_disc(output.shape[1:], insert["centre"], fraction * insert["radius_mm"] / pixel_mm),
                          output.shape)
    return float((output[roi] - clean[roi]).mean())


def main() -> None:
    from monai.bundle import ConfigParser

    import bundle.data.datalist
    from bundle.evaluation.physics import objects_in_layout
    from bundle.inference import CTEnhancer

    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--model", default="models/model.pt")
    args.add_argument("--datalist", default="data/demo/datalist.json")
    args.add_argument("--patient", default="qa000", help="a volume with QA inserts")
    args.add_argument("--split", default="test", help="the datalist's list that holds --patient (validation: qa001)")
    opts = args.parse_args()
    torch.set_grad_enabled(False)
    parser = ConfigParser()
    parser.read_config("configs/common.yaml")
    transform = parser.get_parsed_content("val_transforms")
    items = bundle.data.datalist.load_datalist(opts.datalist, opts.split)
    item = next((i for i in items if i.get("patient") == opts.patient), None)
    if item is None:
        raise SystemExit(f"{opts.datalist}: no patient {opts.patient!r} in its {opts.split!r} list "
                         f"(it has {[i.get('patient') for i in items]}).")
    data = transform(item)
    source, target = data["source"].as_tensor().float(), data["target"].as_tensor().float()
    clean = data["clean"].as_tensor().float().numpy()[0]
    objects = json.loads(Path(item["objects"]).read_text())
    _, inserts = objects_in_layout(objects, np.asarray(data["target"].affine, dtype=np.float64))
    pixel_mm = float(objects["spacing_mm"][1])
    enhancer = CTEnhancer.from_file(opts.model).eval()
    sigma = enhancer.source_lowpass_sigma
    outputs = {"input": source, f"no_diffusion as stored (low band sigma {sigma:g}, path on)": enhancer.ceiling(source, source)}
    enhancer.source_lowpass_sigma = 0.0
    outputs["no_diffusion, sigma 0 (decoder + path)"] = enhancer.ceiling(source, source)
    enhancer.fidelity_weight = 0.0
    outputs["no_diffusion, sigma 0, path off (the spec's decoder)"] = enhancer.ceiling(source, source)
    enhancer.fidelity_weight, enhancer.source_lowpass_sigma = 1.0, sigma
    outputs["ceiling (the target's latent, as stored)"] = enhancer.ceiling(source, target)
    print(f"model {opts.model}, {opts.patient}: mean error vs clean (HU) in the central 30 % / 60 % of each insert\n")
    print("| output | " + " | ".join(f"{i['name']} ({i['hu']:g})" for i in inserts) + " |")
    print("|---|" + "---|" * len(inserts))
    for name, output in outputs.items():
        out = output.numpy().reshape(clean.shape)
        cells = [f"{disc_bias(out, clean, i, 0.3, pixel_mm):+.1f} / {disc_bias(out, clean, i, 0.6, pixel_mm):+.1f}"
                 for i in inserts]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
