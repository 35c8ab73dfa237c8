#!/usr/bin/env python
"""Full-size forward timings of the specification's networks on this machine.

Builds ``autoencoder_def`` and ``unet_def`` from configs/common.yaml through MONAI's ConfigParser
(randomly initialised: timings do not depend on the weights), prints the parameter count of each
component, then times one slab through the inference path: VAE encode of ``(B, 3, 8, 128, 128)``,
one U-Net evaluation on the ``(B, 4, 8, 16, 16)`` latent, VAE decode; in float32 and/or under
bfloat16 autocast.

Usage (from anywhere; paths resolve against the repository root)::

    .venv/bin/python scripts/forward_full.py --dtype both --repeats 1 --threads 2

The machine may be shared: the load average is printed before and after so a reader can judge
the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "both"), default="both",
                        help="float32, bfloat16 autocast, or both (default)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per stage (default 1)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed runs per stage first; the first call pays for kernel selection (default 1)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help=f"intra-op threads (default {torch.get_num_threads()})")
    parser.add_argument("--batch", type=int, default=1, help="slabs per batch (default 1)")
    parser.add_argument("--config", default="configs/common.yaml", help="relative to the repository root")
    return parser.parse_args(argv)


def build_networks(config: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    from monai.bundle import ConfigParser

    with contextlib.chdir(REPO_ROOT):
        parser = ConfigParser()
        parser.read_config(config)
        vae = parser.get_parsed_content("autoencoder_def")
        unet = parser.get_parsed_content("unet_def")
    return vae.eval(), unet.eval()


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def print_parameter_table(vae: torch.nn.Module, unet: torch.nn.Module) -> None:
    rows = [("VAE encoder", n_params(vae.encoder), "86M"), ("VAE decoder", n_params(vae.decoder), "86M"),
            ("U-Net", n_params(unet), "270M table / 163M summary")]
    rows.append(("Total", sum(r[1] for r in rows), "441M table / 335M summary"))
    print(f"{'component':<12} {'parameters':>13} {'':>8}  specification")
    for name, count, spec in rows:
        print(f"{name:<12} {count:>13,d} {count / 1e6:>7.1f}M  {spec}")
    print()


def time_call(fn, repeats: int, warmup: int) -> tuple[list[float], torch.Tensor]:
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return times, out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, load average before: "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    vae, unet = build_networks(args.config)
    print_parameter_table(vae, unet)

    x = torch.randn(args.batch, 3, 8, 128, 128)
    timesteps = torch.full((args.batch,), 500)
    dtypes = ["float32", "bfloat16"] if args.dtype == "both" else [args.dtype]
    results, outputs = {}, {}
    for dtype in dtypes:
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16"
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            t_enc, z = time_call(lambda: vae.encode(x), args.repeats, args.warmup)
            t_unet, _ = time_call(lambda: unet(z, timesteps, z), args.repeats, args.warmup)
            t_dec, recon = time_call(lambda: vae.decode(z), args.repeats, args.warmup)
        results[dtype] = {"VAE encode": t_enc, "U-Net (1 step)": t_unet, "VAE decode": t_dec}
        outputs[dtype] = (z.float(), recon.float())
        print(f"[{dtype}] done: encode {min(t_enc):.2f}s, U-Net {min(t_unet):.2f}s, decode {min(t_dec):.2f}s",
              flush=True)

    print(f"\nForward timings, batch {args.batch} x (3, 8, 128, 128), {args.repeats} timed run(s) after "
          f"{args.warmup} warm-up, seconds (min / mean)")
    print(f"{'stage':<26}" + "".join(f"{d:>22}" for d in dtypes))
    stages = ["VAE encode", "U-Net (1 step)", "VAE decode"]
    for stage in stages:
        cells = "".join(f"{min(results[d][stage]):>12.2f} / {statistics.mean(results[d][stage]):>6.2f}"
                        for d in dtypes)
        print(f"{stage:<26}{cells}")
    for label, steps in (("encode + 1 step + decode", 1), ("encode + 50 steps + decode", 50)):
        totals = [
            min(results[d]["VAE encode"]) + steps * min(results[d]["U-Net (1 step)"]) + min(results[d]["VAE decode"])
            for d in dtypes
        ]
        cells = "".join(f"{total:>21.1f} " for total in totals)
        print(f"{label:<26}{cells}")
    if len(dtypes) == 2:
        speedup = "".join(f"  {s}: {min(results['float32'][s]) / min(results['bfloat16'][s]):.2f}x" for s in stages)
        print(f"\nbfloat16 speed-up:{speedup}")
        for name, a, b in zip(("latent", "reconstruction"), outputs["float32"], outputs["bfloat16"]):
            rel = ((a - b).norm() / a.norm().clamp_min(1e-12)).item()
            print(f"bfloat16 vs float32 {name}: relative L2 difference {rel:.2e} (random weights)")
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
