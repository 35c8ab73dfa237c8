"""Mean and spread over training seeds of the learned rows, on one split of a datalist.

One training seed can move a learned row by tenths of a dB, so a single run cannot rank methods
that close. This scores every given model file (one per seed) through the evaluation's own
protocol (``configs/evaluate.yaml``: clean truth, HU per class and insert, noise texture, TTF,
lesion d') beside the input, and prints each measure's mean and standard deviation per method.
Nothing is tuned here. Choose settings with ``--split validation``, then report them once on
``--split test`` (the default) or a dose of the sweep (``--split test_dose0.1``). Run from the
bundle root, e.g. on the demo data:

    python scripts/seed_spread.py --output runs/seed_spread \\
        --redcnn runs/redcnn_sweep/3d/lr0.001_seed{0,1,2}/redcnn.pt \\
        --redcnn-2d runs/redcnn_sweep/2d/lr0.001_seed{0,1,2}/redcnn.pt \\
        --model models/model.pt runs/seed1/model.pt --steps 20

Writes the evaluation's usual files into ``--output`` and ``seed_spread.md`` beside them.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

KEY = "[-160,240]"

# (column, decimals, how to read it from one row of physics.json)
MEASURES = (
    (f"PSNR {KEY} vs clean", 2, lambda r: r["vs_clean"][KEY]["psnr"]),
    (f"SSIM {KEY} vs clean", 4, lambda r: r["vs_clean"][KEY]["ssim"]),
    ("bone bias (HU)", 1, lambda r: r["hu"]["bone"]["bias"]),
    ("largest insert bias, abs (HU)", 1, lambda r: max(abs(v["bias"]) for v in r["inserts"].values())),
    ("noise sigma / full dose", 2, lambda r: r["noise"]["sigma_rel"]),
    ("NPS mean freq / full dose", 2, lambda r: r["noise"]["nps_mean_frequency_rel"]),
    ("TTF50 / full dose", 2, lambda r: r["ttf50"]["mean_rel"]),
    ("lesion contrast kept", 2, lambda r: r["lesion_summary"]["contrast_kept"]),
    ("lesion d'", 2, lambda r: r["lesion_summary"]["d_prime"]),
    ("lesion d' / attainable", 2, lambda r: r["lesion_summary"]["d_prime_attainable_rel"]),
    ("ideal observer's d', one slice (input: the bound)", 2, lambda r: r["lesion_summary"]["d_prime_ideal"]),
    ("ideal observer's d', 3D (input: the bound)", 2, lambda r: r["lesion_summary"]["d_prime_ideal_3d"]),
)


def rows_config(redcnn: list[str], redcnn_2d: list[str], models: list[str], steps: int) -> tuple[list, list]:
    """Config entries of the rows: the input, then one row per file, named ``<kind>_seed<i>``."""
    baselines = [{"_target_": "bundle.evaluation.methods.Identity"}]
    for kind, paths in (("redcnn", redcnn), ("redcnn_2d", redcnn_2d)):
        baselines += [{"_target_": "bundle.evaluation.redcnn.RedCNNMethod", "path": path, "device": "@device",
                       "name": f"{kind}_seed{i}"} for i, path in enumerate(paths)]
    diffusion = [{**sampling_config(path, steps), "name": f"ddim_{steps}_seed{i}"} for i, path in enumerate(models)]
    return baselines, diffusion


def sampling_config(path: str, steps: int) -> dict:
    """Config of one model file's DDIM row (``DiffusionSampling``), the evaluation's seed."""
    return {"_target_": "bundle.evaluation.methods.DiffusionSampling", "num_inference_steps": steps, "seed": "@seed",
            "enhancer": f"$bundle.inference.CTEnhancer.from_file({path!r}, map_location=@device, "
                        "**@enhancer_settings).to(@device)"}


def split_overrides(split: str) -> dict:
    """Config overrides that score the datalist's list ``split`` in place of its ``test`` list;
    a ``test_dose<d>`` list is scored at its own dose."""
    if split != "validation" and split != "test" and not split.startswith("test_dose"):
        raise ValueError(f"--split = {split!r}: 'test', 'validation' or 'test_dose<d>' (a list of the datalist)")
    overrides = {"test_dataset#data": f"$bundle.data.datalist.load_datalist(@datalist, {split!r})"}
    if split.startswith("test_dose"):
        try:
            overrides["dose"] = float(split[len("test_dose"):])
        except ValueError:
            raise ValueError(f"--split = {split!r}: the dose after 'test_dose' is not a number, e.g. test_dose0.1") from None
    return overrides


def summarise(physics: dict) -> str:
    """``seed_spread.md``: per method kind, each measure's mean and std over its seeds."""
    rows = physics["methods"]
    kinds: dict[str, list[str]] = {}
    for name in rows:
        kinds.setdefault(name.rsplit("_seed", 1)[0], []).append(name)
    head = "| method | seeds | " + " | ".join(column for column, _, _ in MEASURES) + " |"
    lines = [head, "|" + "---|" * (len(MEASURES) + 2)]
    for kind, names in kinds.items():
        cells = []
        for _, digits, read in MEASURES:
            try:
                values = [read(rows[name]) for name in names]
            except (KeyError, TypeError, ValueError):
                cells.append("-")
                continue
            spread = f" +- {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.{digits}f}{spread}")
        lines.append(f"| {kind} | {len(names)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def score(config: list[str], settings: dict, command: str) -> str:
    """Run ``configs/evaluate.yaml`` with the ``config`` overrides and ``settings`` (rows, data,
    ``output_dir``; no dose sweep) and return :func:`summarise` of its ``physics.json``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(["configs/evaluate.yaml", *config])
    parser.update({"sweep_doses": [], "command": command, **settings})
    parser.get_parsed_content("evaluate")
    return summarise(json.loads((Path(settings["output_dir"]) / "physics.json").read_text()))


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--redcnn", nargs="*", default=[], help="3D RED-CNN files, one per seed")
    args.add_argument("--redcnn-2d", nargs="*", default=[], help="2D RED-CNN files, one per seed")
    args.add_argument("--model", nargs="*", default=[], help="diffusion model files, one per seed")
    args.add_argument("--steps", type=int, default=20, help="DDIM steps of the model rows")
    args.add_argument("--datalist", default="data/demo/datalist.json")
    args.add_argument("--split", default="test",
                      help="the datalist's list to score: test (report), validation (choose) or test_dose<d>")
    args.add_argument("--config", nargs="*", default=["configs/demo.yaml"], help="overrides of configs/evaluate.yaml")
    args.add_argument("--output", default="runs/seed_spread")
    opts = args.parse_args()
    if not (opts.redcnn or opts.redcnn_2d or opts.model):
        args.error("give at least one model file (--redcnn, --redcnn-2d or --model)")
    for path in opts.redcnn + opts.redcnn_2d + opts.model:
        if not Path(path).is_file():
            args.error(f"no such model file: {path}")

    try:
        overrides = split_overrides(opts.split)
    except ValueError as error:
        args.error(str(error))

    baselines, diffusion = rows_config(opts.redcnn, opts.redcnn_2d, opts.model, opts.steps)
    table = score(opts.config, {"datalist": opts.datalist, "output_dir": opts.output, "baselines": baselines,
                                "diffusion_rows": diffusion, **overrides},
                  "python scripts/seed_spread.py (see seed_spread.md)")
    (Path(opts.output) / "seed_spread.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
