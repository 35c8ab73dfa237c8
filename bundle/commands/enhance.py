"""``ctv2v enhance INPUT OUTPUT``: enhance every CT series found under INPUT into OUTPUT.

INPUT is a folder tree of DICOM files (any names, nested, mixed with other files) and/or NIfTI
files, or one file. Axial ORIGINAL CT series are enhanced with one model and written as derived
CT series (new UIDs, same study, patient and geometry, "NOT FOR DIAGNOSTIC USE") under OUTPUT,
one folder per series; everything else is skipped with the reason. OUTPUT/summary.csv lists every
series found. Re-running skips the series already done. Nothing is written inside INPUT.

Exit code: 0 when nothing failed, 1 when a series failed, 2 when the batch could not start.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "enhance",
        help="enhance the CT series of a DICOM/NIfTI folder into derived series (batch tool)",
        description=__doc__,
    )
    parser.add_argument("input", type=Path, metavar="INPUT", help="DICOM folder tree, NIfTI folder or file")
    parser.add_argument("output", type=Path, metavar="OUTPUT", help="output folder (not inside INPUT)")
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"),
                        help="model file (default models/model.pt)")
    parser.add_argument("--steps", type=int, default=10,
                        help="DDIM steps (default 10; the spec: 50; quality is flat from 5 to 50: docs/benchmarks.md)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); recorded in the output")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic (default), 1 DDPM-like")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: a GPU when present (default)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"), default="auto",
                        help="network precision: auto = bf16 where the device computes it natively (GPUs, CPUs with AVX512-BF16/AMX), else fp32 (default; bf16 is within 0.2 HU of fp32 on the demo test volume, docs/benchmarks.md); fp16 needs a GPU")
    parser.add_argument("--format", choices=("dicom", "nifti", "both"), default="dicom", dest="output_format",
                        help="output for DICOM inputs (default dicom); NIfTI inputs give NIfTI")
    parser.add_argument("--num-samples", type=int, default=1,
                        help="samples averaged per series; > 1 also writes an uncertainty map (default 1)")
    parser.add_argument("--strength", type=float, default=1.0,
                        help="in (0, 1]: < 1 starts from the noised source, fewer steps, closer to it (default 1)")
    parser.add_argument("--fidelity-weight", type=float, default=None,
                        help="scale of a fidelity path's source skips (default: the model's; 0 = the spec "
                             "decoder, more generated detail; docs/fidelity.md)")
    parser.add_argument("--source-lowpass-sigma", type=float, default=None,
                        help="in-plane Gaussian sigma (px) below which the output's band is the input's (default: "
                             "the model's; 0 = all the model's). Lower passes more of a lesion's contrast and of the input's "
                             "noise (docs/quality.md: the measured trade-off)")
    parser.add_argument("--source-lowpass-levels", default=None,
                        help="that band per tissue level: 'tissue' (the built-in HU levels), 'none' (one Gaussian "
                             "across materials) or ascending HU values 'a,b,...' (default: the model's; docs/quality.md)")
    parser.add_argument("--source-lowpass-min-support", type=float, default=None,
                        help="with levels: the share of the Gaussian's mass in (0, 1] below which a level's own "
                             "band leans towards the plain one (default: the model's; docs/quality.md)")
    parser.add_argument("--source-lowpass-sigma-z", type=float, default=None,
                        help="that band's Gaussian along the slices too (slices; 0 = each slice alone; default: "
                             "the model's). Less of the input's noise returns, lesion detectability rises (docs/quality.md)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args) -> int:
    from bundle.inference.batch import (
        BatchError,
        check_output_location,
        load_enhancer,
        run_batch,
    )
    from bundle.inference.low_frequency import (
        check_lowpass_levels,
        check_min_support,
        check_sigma_z,
    )
    from bundle.utils.model_files import ModelFileError
    from bundle.utils.validation import (
        SettingError,
        check_eta,
        check_fidelity_weight,
        check_lowpass_sigma,
        check_num_samples,
        check_steps,
        check_strength,
    )

    logging.getLogger("pydicom").setLevel(logging.ERROR)  # its messages can quote header values
    try:
        check_output_location(args.input, args.output)  # before loading a model: fail fast
        check_steps("--steps", args.steps)
        check_strength("--strength", args.strength)
        check_eta("--eta", args.eta)
        check_num_samples("--num-samples", args.num_samples)
        if args.fidelity_weight is not None:
            check_fidelity_weight("--fidelity-weight", args.fidelity_weight)
        if args.source_lowpass_sigma is not None:
            check_lowpass_sigma("--source-lowpass-sigma", args.source_lowpass_sigma)
        levels = None if args.source_lowpass_levels is None else check_lowpass_levels(
            "--source-lowpass-levels", args.source_lowpass_levels)
        if args.source_lowpass_min_support is not None:
            check_min_support("--source-lowpass-min-support", args.source_lowpass_min_support)
        if args.source_lowpass_sigma_z is not None:
            check_sigma_z("--source-lowpass-sigma-z", args.source_lowpass_sigma_z)
        enhancer, model_version = load_enhancer(args.model, args.device, args.precision, args.fidelity_weight,
                                                args.source_lowpass_sigma, levels, args.source_lowpass_min_support,
                                                args.source_lowpass_sigma_z)
        result = run_batch(
            args.input,
            args.output,
            enhancer,
            steps=args.steps,
            eta=args.eta,
            strength=args.strength,
            num_samples=args.num_samples,
            seed=args.seed,
            output_format=args.output_format,
            model_version=model_version,
            progress=not args.no_progress,
        )
    except (BatchError, ModelFileError, SettingError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = result.counts()
    print(
        f"{len(result.rows)} series: {counts.get('enhanced', 0)} enhanced, {counts.get('skipped', 0)} skipped, "
        f"{counts.get('failed', 0)} failed; summary: {result.summary_path}"
    )
    return result.exit_code
