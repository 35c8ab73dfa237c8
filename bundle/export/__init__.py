"""Export of the networks for runtimes without this repository's Python (``ctv2v export``).

The encoder, one U-Net step and the decoder of a model file become TorchScript traces (and ONNX
files, with the optional ``[export]`` packages) plus ``export.json``; ``scripts/run_exported.py``
runs DDIM with them on one slab. See ``docs/export.md``.
"""

from bundle.export.exporter import FORMATS, ExportError, export_model, load_model
from bundle.export.manifest import FORMAT, FORMAT_VERSION, build_manifest
from bundle.export.parts import (
    DecodePart,
    EncodePart,
    UNetStep,
    default_slab,
    make_parts,
)

__all__ = [
    "FORMAT",
    "FORMATS",
    "FORMAT_VERSION",
    "DecodePart",
    "EncodePart",
    "ExportError",
    "UNetStep",
    "build_manifest",
    "default_slab",
    "export_model",
    "load_model",
    "make_parts",
]
