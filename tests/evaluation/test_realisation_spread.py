"""scripts/realisation_spread.py: more noise realisations of a demo test volume, and their spread."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spread(load_script):
    return load_script("realisation_spread")


def test_realisations_are_fresh_noise_on_the_same_anatomy_at_the_datasets_dose(spread, tiny_dataset):
    from monai.bundle import ConfigParser

    from bundle.data.datalist import load_datalist
    from bundle.evaluation.evaluate import as_pair

    settings = json.loads((tiny_dataset / "demo.json").read_text())["settings"]
    item = next(e for e in load_datalist(tiny_dataset / "datalist.json", "test") if e["patient"] == "qa000")
    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "common.yaml"))
    transform = parser.get_parsed_content("val_transforms")
    dataset = as_pair(transform(item))
    first, again, second = (spread.draw_pair(item, settings, k, transform) for k in (0, 0, 1))

    assert first.source.shape == first.target.shape == dataset.source.shape
    assert torch.equal(first.clean, dataset.clean) and first.objects == dataset.objects  # the same truth
    assert first.repeat is None  # the dataset's second full-dose scan is not this realisation's
    torch.testing.assert_close(first.source, again.source)  # realisation k is a function of k
    body = (dataset.labels > 0).flatten()

    def noise(image):
        return (image - dataset.clean).flatten()[body].numpy()

    low, full = noise(first.source), noise(first.target)
    assert 1.6 < low.std() / full.std() < 2.4  # 25 % of the dose: twice the full-dose noise
    assert abs(full.mean()) < 0.2 * full.std()  # noise around the truth, not an offset
    for other in (second.source, dataset.source):  # fresh draws: neither the next one's nor the dataset's
        assert abs(np.corrcoef(low, noise(other))[0, 1]) < 0.2
    quarter = spread.draw_pair(item, settings, 0, transform, dose=0.1)
    assert noise(quarter.source).std() > 1.3 * low.std()


def test_spread_and_measures_read_what_a_volume_has(spread):
    assert spread.spread([1.0, 2.0, 3.0, math.nan]) == "2.000 +- 1.000 (1.000..3.000)"
    assert spread.spread([math.nan]) == "-"
    row = spread.measures({"noise": {"sigma": 4.0}, "ttf50": {"mean": 0.08}})
    assert row["noise_sigma"] == 4.0 and row["ttf50"] == 0.08
    assert math.isnan(row["d_prime"]) and math.isnan(row["contrast_kept"])  # no lesions: nan, not 0

