"""ONNX export of the parts (optional: ``pip install 'ct-v2v-diffusion[export]'``).

``torch.onnx.export(..., dynamo=True)``: the exporter captures each part with ``torch.export``
and translates the graph with ``onnxscript``; the TorchScript-based (legacy) exporter is not
used. Shapes are static (the slab); weights go to ``<part>.onnx.data`` next to ``<part>.onnx``
(external data: the spec U-Net alone approaches the 2 GB protobuf limit), so keep the two together.
``onnxruntime`` is only needed to check the files against the eager networks and to run them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = ["EXPORTER_PACKAGES", "export_onnx", "missing_packages", "onnxruntime_available", "run_onnx"]

# what torch.onnx.export(dynamo=True) imports; onnxruntime is only for checking and running
EXPORTER_PACKAGES = ("onnx", "onnxscript")


def missing_packages(names=EXPORTER_PACKAGES) -> list[str]:
    """The packages of ``names`` that are not installed."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken or stubbed-out package
            found = False
        if not found:
            missing.append(name)
    return missing


def onnxruntime_available() -> bool:
    return not missing_packages(("onnxruntime",))


@contextlib.contextmanager
def _quiet_exporter():
    # the exporter logs that torchvision's ops are not registered (irrelevant here) and torch's
    # pytree warns about its own deprecations: neither concerns the parts
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.onnx._internal.exporter._registration")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_onnx(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, input_names, output_name: str):
    """Write ``path`` (and ``path.data``) for ``module`` at the static shapes of ``inputs``."""
    with torch.no_grad(), _quiet_exporter():
        torch.onnx.export(
            module.eval(), tuple(inputs), str(path), dynamo=True, verbose=False, external_data=True,
            input_names=list(input_names), output_names=[output_name],
        )


def run_onnx(path: Path, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run an exported part with onnxruntime on CPU; inputs by name."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {name: np.ascontiguousarray(x.detach().cpu().numpy()) for name, x in inputs.items()}
    return torch.from_numpy(session.run(None, feed)[0])
