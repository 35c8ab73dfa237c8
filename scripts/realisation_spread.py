"""How far the physics measures move with the noise draw: more realisations of each test volume.

The evaluation scores one noise realisation per volume: its full-dose row is one full-dose scan,
each method's row the output for one low-dose scan. Lesion d' reads the contrast measured in a
few voxels and TTF50 an edge measured through the noise, so before "at least the full-dose
scan's" can be judged, each number needs its spread over noise draws. Here the test volumes'
phantoms are drawn again from the dataset's settings (:func:`bundle.data.demo.demo_phantom`, the
same anatomy), and ``--realisations`` K new (low-dose, full-dose) pairs are simulated per volume
with fresh seeds (``SeedSequence([seed, index, 2, k])``; the dataset's own files use ``[seed,
index]`` and ``[seed, index, 1]``). Each realisation is written like the dataset's files (same
affine and dtype), read back through ``val_transforms`` and scored by the evaluation's
``VolumePhysics`` against the clean truth: the full-dose scan, the input and each model's
``no_diffusion`` output (the model's output formula decoded from the source's own latent, with
the file's source band unless ``--source-lowpass-*`` says otherwise; the DDIM rows match it within 0.1 dB at 25 % dose,
docs/quality.md). The noise-free scan's TTF50 is the scanner's resolution without noise.

Prints per volume and image the mean, sample standard deviation and range over the realisations
of lesion d' (NPW), contrast_kept, noise sigma and TTF50, then each model's ratio to the
full-dose scan of the same realisation (paired) and to the dataset's own full-dose scan (what the
report divides by). ``--redcnn`` and ``--nlm`` add the baselines (the evaluation's methods).
Demo data only (it needs the phantom). Run from the bundle root, alone (~10 s per method, volume
and realisation on 2 CPU cores: 15 min for docs/quality.md's 8 realisations of 5 methods):

    python scripts/realisation_spread.py --datalist data/demo_qa/datalist.json --realisations 8 \\
        --model runs/q8/edge50_s{0,1,2}/model.pt --redcnn runs/q11/redcnn_s0/redcnn.pt --nlm 1.5
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

MEASURES = ("d_prime", "contrast_kept", "noise_sigma", "ttf50")


def measures(result: dict) -> dict[str, float]:
    """The four numbers of one ``VolumePhysics`` result (nan where the volume has none)."""
    lesions = result.get("lesion_summary", {})
    return {
        "d_prime": lesions.get("d_prime", math.nan),
        "contrast_kept": lesions.get("contrast_kept", math.nan),
        "noise_sigma": result.get("noise", {}).get("sigma", math.nan),
        "ttf50": result.get("ttf50", {}).get("mean", math.nan),
    }


def spread(values) -> str:
    """``mean +- sd (min..max)`` of the finite values, or ``-``."""
    values = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if not values.size:
        return "-"
    sd = values.std(ddof=1) if values.size > 1 else math.nan
    return f"{values.mean():.3f} +- {sd:.3f} ({values.min():.3f}..{values.max():.3f})"


def draw_pair(item: dict, settings: dict, k: int, transform, dose: float | None = None, phantom=None):
    """Realisation ``k`` of a demo datalist entry: a new (low-dose, full-dose) pair of its phantom,
    written and read back through ``transform`` like the dataset's own files, as an evaluation
    :class:`~bundle.evaluation.methods.Pair` (its clean truth, labels and objects the entry's).

    ``settings``: the dataset manifest's; ``dose``: the low-dose scan's (default: the dataset's);
    ``phantom``: the entry's, if already drawn (``bundle.data.demo.demo_phantom``)."""
    import nibabel as nib

    from bundle.data.demo import demo_patients, demo_phantom
    from bundle.data.simulate import simulate_pair
    from bundle.data.volume_io import save_nifti
    from bundle.evaluation.evaluate import as_pair

    patient = item["patient"]
    phantom = demo_phantom(settings, patient) if phantom is None else phantom
    index = demo_patients(settings)[0].index(patient)
    seed = int(np.random.SeedSequence([settings["seed"], index, 2, k]).generate_state(1)[0])
    low, full = simulate_pair(phantom.hu, settings["spacing_mm"], dose=settings["dose"] if dose is None else dose,
                              seed=seed, reading_i0=settings.get("reading_i0"))
    affine = nib.load(item["clean"]).affine
    with tempfile.TemporaryDirectory() as tmp:
        files = {"source": str(Path(tmp) / "source.nii.gz"), "target": str(Path(tmp) / "target.nii.gz")}
        save_nifti(low, files["source"], affine, dtype=settings["dtype"])
        save_nifti(full, files["target"], affine, dtype=settings["dtype"])
        drawn = {**{key: v for key, v in item.items() if key != "target_repeat"}, **files}
        return as_pair(transform(drawn))


def main() -> None:
    from monai.bundle import ConfigParser

    import bundle.data.datalist
    from bundle.data.demo import MANIFEST_NAME, demo_phantom
    from bundle.evaluation.baselines import NonLocalMeans
    from bundle.evaluation.evaluate import as_pair, pair_physics
    from bundle.evaluation.methods import NoDiffusion
    from bundle.evaluation.redcnn import RedCNNMethod
    from bundle.inference import CTEnhancer
    from bundle.inference.band_arguments import (
        add_source_band_arguments,
        source_band_settings,
    )
    from bundle.metrics.resolution import task_transfer_function

    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--datalist", default="data/demo_qa/datalist.json")
    args.add_argument("--split", default="test")
    args.add_argument("--realisations", type=int, default=6, help="new noise draws per volume")
    args.add_argument("--dose", type=float, default=None, help="the low-dose scans' dose (default: the dataset's)")
    args.add_argument("--model", nargs="*", default=[], help="model files (e.g. one arm's seeds)")
    args.add_argument("--redcnn", nargs="*", default=[], help="RED-CNN baseline files")
    args.add_argument("--nlm", type=float, nargs="*", default=[], help="non-local means at these h factors")
    args.add_argument("--window", type=float, nargs=2, default=(-160.0, 240.0))
    add_source_band_arguments(args)  # e.g. a recipe's newer default on older model files
    opts = args.parse_args()
    if opts.realisations < 2:
        raise SystemExit("--realisations must be at least 2 (a spread needs two draws)")
    torch.set_grad_enabled(False)
    data_dir = Path(opts.datalist).parent
    try:
        settings = json.loads((data_dir / MANIFEST_NAME).read_text())["settings"]
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"{data_dir / MANIFEST_NAME}: no demo dataset manifest ({error}); this needs demo data")
    dose = settings["dose"] if opts.dose is None else opts.dose
    parser = ConfigParser()
    parser.read_config("configs/common.yaml")
    transform = parser.get_parsed_content("val_transforms")
    band = source_band_settings(opts)
    methods = {path: NoDiffusion(CTEnhancer.from_file(path, **band).eval()) for path in opts.model}
    methods.update({f"RED-CNN {path}": RedCNNMethod(path) for path in opts.redcnn})
    methods.update({f"NLM h_factor {h:g}": NonLocalMeans(h_factor=h) for h in opts.nlm})
    images = ["full-dose scan", "input", *methods]
    window = [tuple(opts.window)]
    headline: dict[str, dict[int, list[float]]] = {name: {} for name in images}  # d' per realisation, per volume

    print(f"{opts.split} split of {opts.datalist}; {opts.realisations} new noise realisations per volume at dose "
          f"{dose:g} (full-dose scan at 1); models: no_diffusion output, "
          f"source band {band or 'their own'}\n")
    for item in bundle.data.datalist.load_datalist(opts.datalist, opts.split):
        patient = item["patient"]
        phantom = demo_phantom(settings, patient)
        base = pair_physics(as_pair(transform({k: v for k, v in item.items() if k != "target_repeat"})), window)
        clean_ttf = [task_transfer_function(base.reference, i["centre"], i["radius_mm"], base.truth.pixel_mm).ttf50
                     for i in base.ttf_inserts]
        dataset = measures(base.full_dose)
        rows: dict[str, list[dict]] = {name: [] for name in images}
        ratios: dict[str, list[dict]] = {name: [] for name in methods}
        for k in range(opts.realisations):
            pair = draw_pair(item, settings, k, transform, dose, phantom)
            physics = pair_physics(pair, window)
            rows["full-dose scan"].append(measures(physics.full_dose))
            rows["input"].append(measures(physics.measure(pair.source.numpy())))
            for name, method in methods.items():
                row = measures(physics.measure(method.enhance(pair.source).hu.float().numpy()))
                rows[name].append(row)
                ratios[name].append({
                    **{f"{m}_paired": row[m] / rows["full-dose scan"][-1][m] for m in ("d_prime", "ttf50")},
                    **{f"{m}_dataset": row[m] / dataset[m] for m in ("d_prime", "ttf50")},
                })
            for name in images:
                headline[name].setdefault(k, []).append(rows[name][-1]["d_prime"])
            print(f"[{patient} realisation {k}: "
                  + ", ".join(f"{name} d' {rows[name][-1]['d_prime']:.2f}"
                              f" ttf50 {rows[name][-1]['ttf50']:.4f}" for name in images) + "]", flush=True)

        print(f"\n{patient}: the dataset's full-dose scan d' {dataset['d_prime']:.2f}, TTF50 {dataset['ttf50']:.4f} /mm;"
              f" the noise-free scan's TTF50 {np.mean(clean_ttf) if clean_ttf else math.nan:.4f} /mm\n")
        print("| image | " + " | ".join(MEASURES) + " |")
        print("|---" * (len(MEASURES) + 1) + "|")
        for name in images:
            print(f"| {name} | " + " | ".join(spread([r[m] for r in rows[name]]) for m in MEASURES) + " |")
        if methods:
            keys = ("d_prime_paired", "d_prime_dataset", "ttf50_paired", "ttf50_dataset")
            print("\n| method / full-dose scan | d' (same realisation) | d' (the dataset's scan) "
                  "| TTF50 (same realisation) | TTF50 (the dataset's scan) |")
            print("|---" * 5 + "|")
            for name in methods:
                print(f"| {name} | " + " | ".join(spread([r[key] for r in ratios[name]]) for key in keys) + " |")
            if len(opts.model) > 1:
                pooled = [r for path in opts.model for r in ratios[path]]
                print("| every model | " + " | ".join(spread([r[key] for r in pooled]) for key in keys) + " |")
        print(flush=True)

    # the report's headline d' is the mean over the test volumes; realisation k of each volume is one draw
    print("lesion d', the mean over the volumes (the report's headline), over the realisations:\n")
    print("| image | d' |\n|---|---|")
    for name in images:
        print(f"| {name} | {spread([np.nanmean(v) for v in headline[name].values()])} |")


if __name__ == "__main__":
    main()
