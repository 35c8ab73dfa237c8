"""TorchScript by tracing: one ``.pt`` per part, loadable with ``torch.jit.load`` (Python or libtorch).

Why tracing and not scripting: ``torch.jit.script`` rejects the networks (``blocks.checkpointed``
takes ``*args``, which TorchScript cannot compile), and the parts have no data-dependent control
flow, so a trace records them completely. What a trace does bake in:

- the shape checks of the networks (``if x.shape[1] != channels: raise``) run once at trace time
  and are not in the graph; these are the ``TracerWarning``s silenced below;
- the device: tensors the networks create (the U-Net's timestep frequencies) are made on the
  trace's device, so a CPU trace runs on CPU only; trace with ``device="cuda"`` for a GPU runtime.

The timestep is a graph input, not a constant: the exporter checks the U-Net at another timestep
than the one it traced with.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["jit_quiet", "load_traced", "save_traced", "trace_part"]


@contextlib.contextmanager
def jit_quiet():
    """Silence torch.jit's deprecation notices (torch 2.13 marks trace/save/load deprecated; the
    files still load in torch and libtorch, docs/export.md says what that means) and the
    ``TracerWarning``s of the networks' shape checks (module docstring)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        yield


def trace_part(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of ``module`` at ``inputs`` (no autograd; the exporter compares the
    result with the eager module on other inputs, so ``check_trace`` would only repeat work)."""
    with torch.no_grad(), jit_quiet():
        return torch.jit.trace(module, inputs, check_trace=False)


def load_traced(path: Path, device: str = "cpu") -> torch.jit.ScriptModule:
    with jit_quiet():
        return torch.jit.load(str(path), map_location=device)


def save_traced(traced: torch.jit.ScriptModule, path: Path, metadata: dict[str, Any]) -> None:
    """Save with MONAI's TorchScript writer (the one ``monai.bundle ckpt_export`` uses): the file
    carries ``metadata`` as its ``metadata.json`` extra file, readable with
    ``monai.data.load_net_with_metadata`` or ``torch.jit.load(..., _extra_files=...)``."""
    from monai.data import save_net_with_metadata

    json.dumps(metadata)  # fail here, with the offending value, rather than inside the writer
    with jit_quiet():
        save_net_with_metadata(traced, str(path), include_config_vals=False, append_timestamp=False,
                               meta_values=metadata)
