"""``ctv2v benchmark``: training and inference speed, memory and FLOP/s of a model size, one table.

Measures the matmul peak of each precision, then per size (``demo``, ``full`` or a YAML override
of configs/train.yaml such as tests/tiny.yaml) the sections ``training`` (phase iterations/s),
``inference`` (whole-volume ``enhance`` per volume length: seconds, encode / U-Net per step /
decode, seconds per slab, peak memory, FLOP/s; variants against the plain fp32 output of one
volume) and ``peer`` (MONAI core's AutoencoderKL and DiffusionModelUNet at the same widths). Prints the machine, the parameter counts, a
Markdown table and the ratios measured side by side; ``--json`` writes all of it (rewritten after
every section). The defaults (demo size, lengths 32 64 128, 10 steps as ``ctv2v enhance``) take about 5-10 minutes on a
2-core CPU. A full-size check: ``--size full --lengths 8x128x128 32x256x256``.

Variants (``--variant``): bf16, fp16, channels_last_3d, compile, no_diffusion, or KEY=VALUE of a
CTEnhancer setting: steps=10, strength=0.5, window_batch_size=16, image_overlap=2,16,16,
image_tile=16,128,128, latent_overlap=2,4,4, eta=1, fidelity_weight=0, ...; several joined by +

Exit code: 0 when measured, 2 for an argument that cannot be used (the message names it).
"""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_MODEL = Path("models/model.pt")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="speed, memory and FLOP/s of training and inference, one table",
        description=__doc__,
    )
    parser.add_argument("--size", nargs="+", default=["demo"], dest="sizes", metavar="SIZE",
                        help="demo (default), full, or a YAML override of configs/train.yaml (e.g. tests/tiny.yaml)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: a GPU when present (default)")
    parser.add_argument("--sections", nargs="+", choices=("training", "inference", "peer"),
                        default=["training", "inference", "peer"], help="what to measure (default all three)")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16", "fp16"), default=["fp32"],
                        dest="precisions", help="network precisions of the plain rows (default fp32)")
    parser.add_argument("--model", default=None,
                        help="model file for the inference rows, or 'random' (default: models/model.pt for the "
                             "demo size when it exists, random weights of the size otherwise)")
    parser.add_argument("--lengths", nargs="+", default=["32", "64", "128"],
                        help="inference volumes: slices (in-plane --in-plane) or SxHxW (default 32 64 128)")
    parser.add_argument("--in-plane", type=int, default=128, help="in-plane size of the volumes (default 128)")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps of the inference rows (default 10, as ctv2v enhance)")
    parser.add_argument("--variant", nargs="*", default=[], dest="variants",
                        help="inference variants against plain fp32, on the middle length or --volume "
                             "(default none; an empty --variant clears earlier ones)")
    parser.add_argument("--setting", nargs="*", default=[], dest="settings", metavar="KEY=VALUE",
                        help="CTEnhancer settings of every inference row, plain ones included "
                             "(e.g. window_batch_size=32; default: the model's)")
    parser.add_argument("--training-variant", nargs="*", default=[], dest="training_variants",
                        help="training variants (bundle/benchmark/training.py names them)")
    parser.add_argument("--iterations", type=int, default=3, help="timed training / peer iterations (default 3)")
    parser.add_argument("--volume", default=None,
                        help="a real CT (NIfTI file or DICOM folder, HU) the variants run on, e.g. a demo test source")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="no untimed 1-step enhance per precision before the inference rows")
    parser.add_argument("--json", default=None, dest="json_path", help="write the results here (JSON)")
    parser.add_argument("--bundle-root", default=None,
                        help="folder holding configs/ (default: the current folder if it has configs/train.yaml, "
                             "else the package's)")
    parser.set_defaults(func=run)


def bundle_root(given: str | None) -> Path:
    if given is not None:
        return Path(given)
    here = Path.cwd()
    if (here / "configs" / "train.yaml").is_file():
        return here
    return Path(__file__).resolve().parents[2]


def model_paths(sizes: list[str], model: str | None, root: Path) -> dict:
    """Per size: the model file, or None for random weights."""
    from bundle.benchmark.sizes import SIZE_CONFIGS

    def label(size: str) -> str:
        return size if size in SIZE_CONFIGS else Path(size).stem

    if model == "random":
        return {label(size): None for size in sizes}
    if model is not None:
        return {label(size): Path(model) for size in sizes}
    default = root / DEFAULT_MODEL
    return {label(size): (default if size == "demo" and default.is_file() else None) for size in sizes}


def run(args) -> int:
    from bundle.benchmark.inference import BenchmarkArgumentError
    from bundle.benchmark.run import run_benchmark
    from bundle.utils.model_files import ModelFileError

    root = bundle_root(args.bundle_root)
    try:
        if not (root / "configs" / "train.yaml").is_file():
            raise BenchmarkArgumentError(f"--bundle-root {root}: no configs/train.yaml there")
        if args.threads is not None and args.threads < 1:
            raise BenchmarkArgumentError("--threads must be at least 1")
        run_benchmark(
            sizes=args.sizes, device=args.device, sections=args.sections, precisions=args.precisions,
            model_path=model_paths(args.sizes, args.model, root), lengths=args.lengths, in_plane=args.in_plane,
            steps=args.steps, variants=args.variants, settings=args.settings, training_variants=args.training_variants,
            iterations=args.iterations, volume=args.volume, json_path=args.json_path, bundle_root=root,
            num_threads=args.threads, warmup=not args.no_warmup,
        )
    except (BenchmarkArgumentError, ModelFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
