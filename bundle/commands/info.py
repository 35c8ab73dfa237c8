"""``ctv2v info``: versions and where the bundle looks for things (for bug reports)."""

from __future__ import annotations

import platform


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", help="print versions and environment (for bug reports)")
    parser.set_defaults(func=run)


def run(args) -> int:
    import monai
    import numpy
    import torch

    from bundle import __version__

    print(f"ctv2v {__version__}")
    print(f"python {platform.python_version()} on {platform.machine()}")
    print(f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()})")
    print(f"monai {monai.__version__}, numpy {numpy.__version__}")
    return 0
