"""Fixtures every test folder shares."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(autouse=True)
def _one_thread():
    # two OpenMP threads on a shared 2-core runner spin against each other: one is faster
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _restore_logging():
    # an in-process ``monai.bundle run`` applies the bundle's logging config: a root handler on this
    # test's captured stderr (closed by the next test, whose log writes then print tracebacks) and
    # existing loggers disabled; each test starts from the logging state before it
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    saved = [(lg, list(lg.handlers), lg.level, lg.disabled, lg.propagate) for lg in loggers]
    yield
    for lg, handlers, level, disabled, propagate in saved:
        lg.handlers[:] = handlers
        lg.level, lg.disabled, lg.propagate = level, disabled, propagate
    known = {id(entry[0]) for entry in saved}
    for lg in list(logging.Logger.manager.loggerDict.values()):  # loggers the test created
        if isinstance(lg, logging.Logger) and id(lg) not in known:
            lg.handlers.clear()


@pytest.fixture(scope="session")
def load_script():
    """``load_script(name)``: the module ``scripts/<name>.py`` (the scripts are not a package)."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """The demo dataset at test size: 4 phantoms of 8 x 64 x 64 (2 training, 1 validation, 1 test)."""
    from bundle.data.demo import make_demo_dataset

    out = tmp_path_factory.mktemp("demo")
    make_demo_dataset(out, num_volumes=4, slices=8, size=64, seed=0, workers=1, log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def batch_model(tmp_path_factory) -> Path:
    """A random tiny ctv2v model file for the batch tool's tests (default tiling geometry), its
    U-Net perturbed so that the output depends on it."""
    from bundle.inference import CTEnhancer
    from bundle.networks import ConditionalUNet3D, VideoVAE

    torch.manual_seed(0)
    vae = VideoVAE(channels=(8, 16, 16, 16), norm_num_groups=4, num_res_blocks=1, num_mid_blocks=1)
    unet = ConditionalUNet3D(model_channels=16, channel_mult=(1, 2, 2, 2), num_heads=2, norm_num_groups=4,
                             time_embed_dim=32, num_res_blocks=1)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp("batch_model") / "model.pt"
    CTEnhancer(vae, unet).save(path)
    return path

