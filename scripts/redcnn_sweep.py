"""RED-CNN at full strength: learning rates (and seeds) chosen on the VALIDATION split.

Trains ``configs/redcnn.yaml`` (3D) or its 2D variant (``--variant 2d``: + ``configs/redcnn_2d.yaml``)
on top of ``configs/demo.yaml`` once per learning rate and seed, scores every model on the
validation pairs (soft-tissue window PSNR against the clean truth where the datalist has it, else
against the full-dose scan), prints the table, and copies the best learning rate's first seed to
``--output-model`` (e.g. ``models/redcnn.pt``, the evaluation's row). The test split is never
read here. Run from the bundle root:

    python scripts/redcnn_sweep.py --lrs 1e-4 3e-4 1e-3 --epochs 40
    python scripts/redcnn_sweep.py --lrs 1e-3 --seeds 0 1 2 --epochs 40 --output-model models/redcnn.pt
    python scripts/redcnn_sweep.py --variant 2d --lrs 1e-3 --seeds 0 1 2 --epochs 40 --output-model models/redcnn_2d.pt

The measured table (demo data) is in docs/evaluation.md, "The RED-CNN baseline".

Results are cached per run under ``--output`` (re-running skips finished runs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

KEY = (-160.0, 240.0)


def validation_psnr(model_path: Path | None, datalist: str) -> float:
    """Mean soft-window PSNR of the model on the validation pairs (clean truth if known);
    ``model_path=None`` scores the low-dose input itself, the line every row must clear."""
    from monai.bundle import ConfigParser

    from bundle.evaluation.evaluate import as_pair
    from bundle.evaluation.redcnn import load_redcnn
    from bundle.metrics import volume_metrics

    parser = ConfigParser()
    parser.read_config(["configs/evaluate.yaml", "configs/demo.yaml"])
    parser.update({"datalist": datalist})
    dataset = parser.get_parsed_content("validation_dataset")
    network = load_redcnn(model_path) if model_path is not None else (lambda source: source)
    scores = []
    for index in range(len(dataset)):
        pair = as_pair(dataset[index], index)
        reference = pair.clean if pair.clean is not None else pair.target
        scores.append(volume_metrics(network(pair.source), reference, KEY)["psnr"])
    return sum(scores) / len(scores)


def main() -> None:
    from bundle.evaluation.redcnn import train_redcnn

    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--variant", choices=("3d", "2d"), default="3d")
    args.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    args.add_argument("--seeds", type=int, nargs="+", default=[0])
    args.add_argument("--epochs", type=int, default=20)
    args.add_argument("--datalist", default="data/demo/datalist.json")
    args.add_argument("--output", default="runs/redcnn_sweep")
    args.add_argument("--output-model", default=None, help="copy the best model here")
    opts = args.parse_args()
    configs = ["configs/redcnn.yaml", "configs/demo.yaml"] + (["configs/redcnn_2d.yaml"] if opts.variant == "2d" else [])
    out = Path(opts.output) / opts.variant
    results = {}
    for lr in opts.lrs:
        for seed in opts.seeds:
            name = f"lr{lr:g}_seed{seed}"
            run = out / name
            done = run / "result.json"
            if done.is_file():
                results[name] = json.loads(done.read_text())
                continue
            start = time.perf_counter()
            torch.manual_seed(seed)
            train_redcnn(configs, {"redcnn_lr": lr, "seed": seed, "redcnn_epochs": opts.epochs, "datalist": opts.datalist,
                                   "output_dir": str(run), "redcnn_path": str(run / "redcnn.pt"), "num_workers": 0})
            result = {"lr": lr, "seed": seed, "epochs": opts.epochs, "seconds": time.perf_counter() - start,
                      "validation_psnr": validation_psnr(run / "redcnn.pt", opts.datalist)}
            done.write_text(json.dumps(result, indent=2))
            results[name] = result
            print(f"{opts.variant} {name}: validation {result['validation_psnr']:.2f} dB, {result['seconds']:.0f} s", flush=True)
    by_lr: dict[float, list[float]] = {}
    for result in results.values():
        by_lr.setdefault(result["lr"], []).append(result["validation_psnr"])
    print(f"\n| variant | lr | seeds | validation PSNR {KEY} (mean) | spread (std) |\n|---|---|---|---|---|")
    print(f"| identity (the input) | - | - | {validation_psnr(None, opts.datalist):.2f} | - |")
    for lr, values in sorted(by_lr.items()):
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        print(f"| {opts.variant} | {lr:g} | {len(values)} | {statistics.mean(values):.2f} | {spread:.2f} |")
    best = max(by_lr, key=lambda lr: statistics.mean(by_lr[lr]))
    print(f"\nchosen on validation: lr {best:g}")
    if opts.output_model:
        source = out / f"lr{best:g}_seed{opts.seeds[0]}" / "redcnn.pt"
        shutil.copyfile(source, opts.output_model)
        print(f"{source} -> {opts.output_model}")


if __name__ == "__main__":
    main()
