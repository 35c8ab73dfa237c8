"""``ctv2v export MODEL OUTPUT_DIR``: the networks for runtimes without this repository's Python.

Writes the VAE encoder, one U-Net step and the VAE decoder (with the fidelity path, if the model
has one) as TorchScript traces and, with ``--format onnx`` and the optional packages, as ONNX
files, plus ``export.json`` (HU windows, latent scale, noise schedule table, DDIM timestep rule,
output settings, slab shape, model sha256, and each file's measured difference to the eager
network). ``scripts/run_exported.py`` runs DDIM with them on one slab. See docs/export.md.

Exit code: 0 when written, 2 when the export could not be made (the message says why).
"""

from __future__ import annotations

import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export encoder, U-Net step and decoder (TorchScript, ONNX) for runtimes without this repo",
        description=__doc__,
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="model file (e.g. models/model.pt)")
    parser.add_argument("output", type=Path, metavar="OUTPUT_DIR", help="folder for the exported files")
    parser.add_argument("--format", nargs="+", choices=("torchscript", "onnx"), default=["torchscript"],
                        dest="formats", help="torchscript (default) and/or onnx (needs the [export] extra)")
    parser.add_argument("--slab", type=int, nargs=3, metavar=("S", "H", "W"), default=None,
                        help="slab in image voxels the parts are traced at (default: the model's U-Net window, "
                             "latent_window slices x latent_window * VAE factor pixels)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="device of the TorchScript traces: a trace runs only where it was made (default cpu)")
    parser.add_argument("--fidelity-weight", type=float, default=None,
                        help="fidelity-path weight baked into the decoder (default: the model file's)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from bundle.export import ExportError, export_model

    try:
        manifest = export_model(args.model, args.output, formats=args.formats, slab=args.slab, device=args.device,
                                fidelity_weight=args.fidelity_weight, log=lambda message: print(message, file=sys.stderr))
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {manifest['model']['version']} at slab {tuple(manifest['slab'])} to {args.output}")
    for fmt, differences in manifest["verification"].items():
        if fmt == "what":
            continue
        shown = ", ".join(
            f"{part} " + ("not checked" if d is None else f"{d['max_abs_difference']:.1e} (of {d['max_abs_output']:.3g})")
            for part, d in differences.items()
        )
        print(f"  {fmt}: max |exported - eager| {shown}")
    if not manifest["one_window"]:
        print("  note: the slab is not the model's U-Net window: scripts/run_exported.py then differs from "
              "CTEnhancer.enhance, which tiles (docs/export.md)")
    return 0
