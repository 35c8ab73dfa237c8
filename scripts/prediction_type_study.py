"""Epsilon vs v-prediction on the same data, VAE and budget: which one should be the default?

Trains the VAE once (or takes --vae), then runs phases 1 and 2 once per prediction type with
everything else equal, and prints the validation metrics side by side (the validator's rows:
identity, VAE ceiling, model). Run from the bundle root:

    python scripts/prediction_type_study.py                       # demo data and demo sizes
    python scripts/prediction_type_study.py --config configs/train.yaml --output runs/ptype_full
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from monai.bundle import ConfigParser

TYPES = ("v_prediction", "epsilon")
ROWS = ("identity", "vae_ceiling", "model")


def parser_for(configs: list[str], overrides: dict) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(configs)
    parser.update(overrides)
    parser.get_parsed_content("training#0")  # seed, as the run list does
    return parser


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--config", nargs="+", default=["configs/train.yaml", "configs/demo.yaml"])
    args.add_argument("--output", default="runs/prediction_type_study")
    args.add_argument("--vae", default=None, help="trained VAE (vae_final.pt); trained once if absent")
    args.add_argument("--set", nargs="*", default=[], metavar="ID=JSON", help="extra config overrides")
    opts = args.parse_args()
    out = Path(opts.output)
    extra = {k: json.loads(v) for k, v in (item.split("=", 1) for item in opts.set)}

    vae = opts.vae
    if vae is None:
        parser = parser_for(opts.config, {**extra, "output_dir": str(out / "vae")})
        stage = parser.get_parsed_content("vae_stage")
        start = time.perf_counter()
        stage.run()
        print(f"VAE stage: {time.perf_counter() - start:.0f} s -> {stage.final_path}")
        vae = str(stage.final_path)

    results = {}
    for kind in TYPES:
        overrides = {
            **extra,
            "output_dir": str(out / kind),
            "model_path": str(out / kind / "model.pt"),
            "pretrained_vae": vae,
            "prediction_type": kind,
            "val_interval": 10**6,  # validate once, at the end, below
        }
        parser = parser_for(opts.config, overrides)
        parser.get_parsed_content("vae_stage").run()
        trainer = parser.get_parsed_content("diffusion_trainer")
        start = time.perf_counter()
        trainer.run()
        seconds = time.perf_counter() - start
        validator = parser.get_parsed_content("validator")
        validator.run(trainer.state.epoch)
        results[kind] = {"seconds": seconds, "loss": trainer.state.output["loss_diffusion"], **validator.state.metrics}

    windows = sorted({k.split("/")[1] for k in results[TYPES[0]] if k.count("/") == 2})
    print("\n| prediction type | final diffusion loss | train s | " + " | ".join(f"{r} PSNR {w}" for w in windows for r in ROWS) + " |")
    print("|---" * (3 + len(windows) * len(ROWS)) + "|")
    for kind, r in results.items():
        cells = " | ".join(f"{r[f'{row}/{w}/psnr']:.2f}" for w in windows for row in ROWS)
        print(f"| {kind} | {r['loss']:.4f} | {r['seconds']:.0f} | {cells} |")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nall numbers: {out / 'results.json'}")


if __name__ == "__main__":
    main()
