"""The package's layers: every import between sub-packages goes down, never up or sideways.

From the bottom (docs/architecture.md says why each sits where it does):

    utils
    metrics, networks, diffusion        measures of image quality; the networks; schedule and sampler
    dicom                               DICOM series in and out
    data                                HU windows, transforms, datalists, phantoms, the simulator
    inference                           CTEnhancer (the one network) and the batch tool
    engines, export                     training and validation (they train and write CTEnhancer);
                                        the networks as TorchScript/ONNX files
    evaluation, benchmark               methods, baselines, the run and its report; speed, memory
                                        and FLOP/s of training and inference (ctv2v benchmark)
    commands, then cli, then __main__   the ctv2v command line

Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bundle"
LAYERS = [
    {"utils"},
    {"metrics", "networks", "diffusion"},
    {"dicom"},
    {"data"},
    {"inference"},
    {"engines", "export"},
    {"evaluation", "benchmark"},
    {"commands"},
    {"cli"},
    {"__main__"},
]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


def part_of(module: Path) -> str | None:
    """The sub-package (or top-level module) a file belongs to; None for bundle/__init__.py."""
    relative = module.relative_to(PACKAGE)
    return None if relative.parts == ("__init__.py",) else relative.parts[0].removesuffix(".py")


def imported_parts(module: Path) -> set[str]:
    """Sub-packages of ``bundle`` that ``module`` imports (absolute or relative, at any depth)."""
    tree = ast.parse(module.read_text(), filename=str(module))
    package = module.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ((base,) if base else ()))
            names = [f"{base}.{alias.name}" if base == "bundle" else base for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "bundle" and len(parts) > 1 and parts[1] in LAYER_OF:
                found.add(parts[1])
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if part_of(p) is not None)


def test_every_part_has_a_layer():
    parts = {part_of(p) for p in MODULES}
    assert parts <= set(LAYER_OF), f"place {sorted(parts - set(LAYER_OF))} in LAYERS"


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_go_down(module):
    own = part_of(module)
    wrong = sorted(p for p in imported_parts(module) if p != own and LAYER_OF[p] >= LAYER_OF[own])
    assert not wrong, f"{module.relative_to(PACKAGE)} ({own}, layer {LAYER_OF[own]}) imports {wrong} from its layer or above"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: a function-level import and a relative import are found."""
    probe = PACKAGE / "diffusion" / "ddim.py"
    assert "diffusion" in imported_parts(probe)  # `from .schedule import ...`
    batch = PACKAGE / "inference" / "batch" / "run.py"  # function-level imports of both
    assert {"dicom", "data"} <= imported_parts(batch)
