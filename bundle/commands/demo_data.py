"""``ctv2v demo-data OUT``: a small synthetic low-dose/full-dose dataset (phantoms + simulation).

See :mod:`bundle.data.demo` for what is written. A second call with the same settings finds the
complete dataset (``OUT/demo.json``) and returns at once; ``--force`` rebuilds it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo-data",
        help="write a synthetic demo dataset: phantom NIfTI pairs, a DICOM series, datalist.json",
        description=__doc__,
    )
    parser.add_argument("output", type=Path, metavar="OUT", help="output folder")
    parser.add_argument("--num-volumes", type=int, default=8, help="patients (default 8: 6 training, 1 validation, 1 test)")
    parser.add_argument("--slices", type=int, default=32, help="slices per volume (default 32, 2.5 mm)")
    parser.add_argument("--size", type=int, default=128, help="rows = columns (default 128; pixel = 345.6 mm / size)")
    parser.add_argument("--seed", type=int, default=0, help="anatomy, noise and split seed (default 0)")
    parser.add_argument("--dose", type=float, default=0.25, help="dose fraction of the sources (default 0.25)")
    parser.add_argument("--dtype", choices=("int16", "float32"), default="int16", help="NIfTI data type (default int16)")
    parser.add_argument("--workers", type=int, default=2, help="threads, one slice each (default 2)")
    parser.add_argument("--qa-volumes", type=int, default=0, metavar="N",
                        help="N more QA cylinders drawn at random: the first in validation when N >= 2, the rest in "
                             "training (default 0; the test split is the same either way)")
    parser.add_argument("--qa-validation", type=int, default=0, metavar="M",
                        help="M more QA cylinders drawn at random, all in validation, after the --qa-volumes ones "
                             "(per-insert HU limits need more than one; default 0: every other volume unchanged)")
    parser.add_argument("--reading-i0", type=float, default=None, metavar="PHOTONS",
                        help="photon starvation: full-dose photons per reading of the modelled scanner "
                             "(ctv2v simulate --help; default: none)")
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT holds a complete dataset")
    parser.set_defaults(func=run)


def run(args) -> int:
    from bundle.data.demo import make_demo_dataset

    start = time.perf_counter()
    try:
        manifest = make_demo_dataset(
            args.output,
            num_volumes=args.num_volumes,
            slices=args.slices,
            size=args.size,
            seed=args.seed,
            dose=args.dose,
            dtype=args.dtype,
            force=args.force,
            workers=args.workers,
            qa_volumes=args.qa_volumes,
            reading_i0=args.reading_i0,
            qa_validation=args.qa_validation,
            log=print,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if manifest["skipped"]:
        return 0
    out = Path(args.output)
    size_mb = sum((out / f).stat().st_size for f in manifest["files"]) / 1e6
    counts = {split: 0 for split in ("training", "validation", "test")}
    for record in manifest["patients"].values():
        counts[record["split"]] += 1
    print(
        f"{len(manifest['patients'])} volumes ({counts['training']} training, {counts['validation']} validation, "
        f"{counts['test']} test), {len(manifest['files'])} files, {size_mb:.1f} MB in {out}, "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0
