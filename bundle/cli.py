"""The ``ctv2v`` command: one sub-command per module in ``bundle.commands``.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func(args) -> int`` as the parser default.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from bundle import __version__

# Order is the order shown by ``ctv2v --help``.
COMMAND_MODULES = [
    "bundle.commands.info",
    "bundle.commands.datalist",
    "bundle.commands.demo_data",
    "bundle.commands.sample_data",
    "bundle.commands.simulate",
    "bundle.commands.evaluate",
    "bundle.commands.enhance",
    "bundle.commands.export",
    "bundle.commands.benchmark",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctv2v",
        description="Low-dose CT enhancement with a 3D latent diffusion model (MONAI bundle).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)
