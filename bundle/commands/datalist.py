"""``ctv2v datalist``: find source/target pairs in a folder and split them by patient."""

from __future__ import annotations

import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "datalist",
        help="write a datalist JSON of source/target pairs, split by patient",
        description=(
            "Find <patient>[_...]_source.nii[.gz] / ..._target.nii[.gz] pairs (or DICOM series folders "
            "named *_source / *_target) under FOLDER, split them into training/validation/test by "
            "patient (all pairs of a patient in one split), and write the datalist atomically. "
            "Paths in it are relative to the output file's folder."
        ),
    )
    parser.add_argument("folder", type=Path, help="data folder (searched recursively)")
    parser.add_argument("-o", "--output", type=Path, help="datalist path (default: FOLDER/datalist.json)")
    parser.add_argument("--val", type=float, default=0.15, help="fraction of patients for validation (0.15)")
    parser.add_argument("--test", type=float, default=0.15, help="fraction of patients for test (0.15)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (0)")
    parser.add_argument(
        "--patient-regex",
        help="regex matched against each pair's stem relative to FOLDER (e.g. 'L067/full_1mm'); the patient "
        "id is its group 'patient', else group 1, else the match. Default: the file name's prefix before "
        "the first '_'. One folder per patient: '(?P<patient>[^/]+)/'",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from bundle.data.datalist import SPLITS, make_datalist
    from bundle.utils.io import atomic_write_json

    output = args.output or args.folder / "datalist.json"
    try:
        datalist = make_datalist(
            args.folder,
            val_fraction=args.val,
            test_fraction=args.test,
            seed=args.seed,
            pattern=args.patient_regex,
            relative_to=output.parent,
        )
    except (ValueError, OSError) as error:
        print(f"ctv2v datalist: error: {error}", file=sys.stderr)
        return 1
    for split in SPLITS:
        entries = datalist[split]
        patients = len({entry["patient"] for entry in entries})
        print(f"{split:<10} {patients:4d} patients {len(entries):5d} pairs")
    unpaired = datalist["unpaired"]
    if unpaired:
        print(f"unpaired (left out): {len(unpaired)}", file=sys.stderr)
        for path in unpaired:
            print(f"  {path}", file=sys.stderr)
    atomic_write_json(output, datalist)
    print(f"wrote {output}")
    return 0
