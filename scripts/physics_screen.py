"""Screen trained models on the physics measures a decision rule reads, one row per model and volume.

Per model: the ``no_diffusion`` output (the model's output formula decoded from the source's own
latent; the DDIM rows of the evaluation match it within 0.1 dB at 25 % dose, docs/quality.md) is
computed once per volume with the output's low band the model's own, then each
``source_lowpass_sigma`` of ``--sigmas`` is applied to it (``keep_source_low_frequencies`` is
linear and applied after decoding, so this equals the enhancer with that setting), blended with the
input at each of ``--blends`` if given (the texture knob of vendors' reconstructions), and scored by
the evaluation's ``VolumePhysics`` against the clean truth: key-window PSNR, lesion d' (NPW),
``contrast_kept``, the largest QA insert |bias|, the bone bias, the largest tissue class |bias| and class RMSE
above the input's, noise sigma, NPS mean frequency and (QA volumes) TTF50 relative to the full-dose scan.
Volumes need the simulation's truth (demo data).
Several seeds of one arm at a time: the table ends with each column's mean per arm and sigma.
Run from the bundle root, alone (one model takes ~30 s per demo volume on 2 CPU cores):

    python scripts/physics_screen.py --datalist data/demo_qa/datalist.json --split validation \\
        --model runs/a_s0/model.pt runs/a_s1/model.pt --model runs/b_s0/model.pt runs/b_s1/model.pt
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

COLUMNS = ["psnr", "d_prime", "contrast_kept", "insert_bias", "bone_bias", "class_bias", "class_rmse_excess",
           "noise", "nps_frequency", "ttf50"]


def table_row(labels, values: dict) -> str:
    """One markdown row: the labels, then each column (ratios to 3 decimals, the rest to 2)."""
    cells = [f"{values[c]:.3f}" if c in ("noise", "nps_frequency", "ttf50") else f"{values[c]:.2f}" for c in COLUMNS]
    return "| " + " | ".join([*map(str, labels), *cells]) + " |"


def scores(measured: dict, window: str, input_hu: dict | None = None) -> dict:
    """The rule's numbers from one ``VolumePhysics.measure`` result; ``input_hu`` (the input's
    ``measured["hu"]``) gives ``class_rmse_excess``: the largest class RMSE above the input's (HU)."""
    lesions = measured.get("lesion_summary", {})
    inserts = [abs(v["bias"]) for v in measured.get("inserts", {}).values()]
    classes = measured["hu"]
    excess = [classes[c]["rmse"] - input_hu[c]["rmse"] for c in classes if input_hu and c in input_hu]
    return {
        "class_bias": max((abs(v["bias"]) for v in classes.values()), default=math.nan),
        "class_rmse_excess": max(excess, default=math.nan),
        "psnr": measured["vs_clean"][window]["psnr"],
        "d_prime": lesions.get("d_prime", math.nan),
        "contrast_kept": lesions.get("contrast_kept", math.nan),
        "insert_bias": max(inserts) if inserts else math.nan,
        "bone_bias": measured["hu"].get("bone", {}).get("bias", math.nan),
        "noise": measured["noise"]["sigma_rel"],
        "nps_frequency": measured["noise"]["nps_mean_frequency_rel"],
        "ttf50": measured.get("ttf50", {}).get("mean_rel", math.nan),  # QA inserts' edges only
    }


def main() -> None:
    from monai.bundle import ConfigParser

    import bundle.data.datalist
    from bundle.evaluation.evaluate import as_pair, pair_physics
    from bundle.inference import CTEnhancer
    from bundle.inference.low_frequency import (
        MIN_SUPPORT,
        TISSUE_LEVELS,
        keep_source_low_frequencies,
    )

    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--datalist", default="data/demo_qa/datalist.json")
    args.add_argument("--split", default="validation")
    args.add_argument("--model", nargs="+", action="append", required=True,
                      help="one arm's model files (its seeds); repeat --model for each arm")
    args.add_argument("--sigmas", type=float, nargs="+", default=[3.0], help="source_lowpass_sigma values (px)")
    args.add_argument("--levels", action="store_true",
                      help="also score each sigma with the band per tissue level (TISSUE_LEVELS), rows '<sigma> tissue'")
    args.add_argument("--min-supports", type=float, nargs="+", default=None,
                      help="with --levels: the support thresholds to score (default the enhancer's MIN_SUPPORT), "
                           "rows '<sigma> tissue s<threshold>'")
    args.add_argument("--sigmas-z", type=float, nargs="+", default=None,
                      help="with --levels: the band's Gaussian along the slices too (slices; 0 = each slice alone), "
                           "rows '<sigma> tissue z<sigma_z>'")
    args.add_argument("--blends", type=float, nargs="+", default=None,
                      help="each band's output blended with the input too, output + b * (input - output) (the "
                           "scanner vendors' texture knob), rows '<band> b<b>'")
    args.add_argument("--window", type=float, nargs=2, default=(-160.0, 240.0))
    opts = args.parse_args()
    torch.set_grad_enabled(False)
    window = f"[{opts.window[0]:g},{opts.window[1]:g}]"
    parser = ConfigParser()
    parser.read_config("configs/common.yaml")
    transform = parser.get_parsed_content("val_transforms")

    volumes = []
    for index, item in enumerate(bundle.data.datalist.load_datalist(opts.datalist, opts.split)):
        pair = as_pair(transform(item), index)
        if pair.clean is None:
            raise SystemExit(f"{opts.datalist}: {pair.patient} has no clean truth; this screen needs simulated data")
        physics = pair_physics(pair, [tuple(opts.window)])
        source_hu = physics.measure(pair.source.float().numpy().reshape(physics.target.shape))["hu"]
        volumes.append((pair, physics, source_hu))

    header = ["| arm | model | sigma | volume | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 4) + "|"]
    print(f"{opts.split} split of {opts.datalist}; key window {window}; no_diffusion output\n")
    print("\n".join(header))
    for pair, physics, _ in volumes:
        full = physics.full_dose.get("lesion_summary", {})
        print(f"| full-dose scan | - | - | {pair.patient} | | {full.get('d_prime', math.nan):.2f} "
              f"| {full.get('contrast_kept', math.nan):.2f} | | | | | 1.000 | 1.000 | 1.000 |")
    supports = opts.min_supports or [MIN_SUPPORT]
    sigmas_z = opts.sigmas_z or [0.0]
    bands = [(sigma, (), MIN_SUPPORT, 0.0) for sigma in opts.sigmas]
    bands += [(sigma, TISSUE_LEVELS, s, z) for sigma in opts.sigmas for s in supports for z in sigmas_z if opts.levels]
    summary = []
    for arm, paths in enumerate(opts.model):
        rows = {}
        for path in paths:
            enhancer = CTEnhancer.from_file(path, source_lowpass_sigma=0.0).eval()
            for pair, physics, source_hu in volumes:
                own = enhancer.ceiling(pair.source, pair.source).reshape(pair.source.shape).float()
                for sigma, levels, support, sigma_z in bands:
                    output = keep_source_low_frequencies(own, pair.source.float(), sigma, levels, support, sigma_z)
                    label = f"{sigma:g}" if not levels else f"{sigma:g} tissue" + (f" s{support:g}" if opts.min_supports else "")
                    label += f" z{sigma_z:g}" if levels and opts.sigmas_z else ""
                    for blend in opts.blends or [None]:
                        blended = output if blend is None else output + blend * (pair.source.float() - output)
                        row = scores(physics.measure(blended.numpy().reshape(physics.target.shape)), window, source_hu)
                        name = label if blend is None else f"{label} b{blend:g}"
                        rows.setdefault((name, pair.patient), []).append(row)
                        print(table_row((arm, path, name, pair.patient), row), flush=True)
        for (label, patient), values in rows.items():
            means = {c: float(np.mean([v[c] for v in values])) for c in COLUMNS}
            summary.append(table_row((arm, f"mean of {len(values)}", label, patient), means))
    print("\n".join(["", *header, *summary]))


if __name__ == "__main__":
    main()
