"""Fixtures every test folder shares."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # two OpenMP threads on a shared 2-core runner spin against each other: one is faster
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """The demo dataset at test size: 4 phantoms of 8 x 64 x 64 (2 training, 1 validation, 1 test)."""
    from bundle.data.demo import make_demo_dataset

    out = tmp_path_factory.mktemp("demo")
    make_demo_dataset(out, num_volumes=4, slices=8, size=64, seed=0, workers=1, log=lambda _: None)
    return out
