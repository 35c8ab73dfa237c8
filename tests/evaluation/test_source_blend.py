"""scripts/source_blend.py: ``out + a (source - out)`` from one sample per volume, shared by every ``a``."""

from __future__ import annotations

import pytest
import torch

from bundle.evaluation.methods import Enhancement


class CountingSampling:
    """Stands in for DiffusionSampling: a fixed 'denoised' output, and how often it was asked."""

    def __init__(self):
        self.calls = 0

    def settings(self):
        return {"num_inference_steps": 20}

    def enhance(self, source_hu, target_hu=None):
        self.calls += 1
        return Enhancement(hu=torch.full_like(source_hu, 40.0))


@pytest.fixture(scope="module")
def blend(load_script):
    return load_script("source_blend")


def test_blend_gives_back_alpha_of_the_source_from_one_sample(blend):
    sampling = CountingSampling()
    rows = [blend.SourceBlend(sampling, alpha, f"blend{alpha:g}_seed0") for alpha in (0.0, 0.25, 1.0)]
    source = torch.randn(1, 8, 16, 16) * 100.0
    outs = [row.enhance(source).hu for row in rows]
    assert torch.equal(outs[0], torch.full_like(source, 40.0))
    torch.testing.assert_close(outs[1], 40.0 + 0.25 * (source - 40.0))
    torch.testing.assert_close(outs[2], source)
    assert sampling.calls == 1  # every alpha reused the volume's one sample
    rows[0].enhance(source + 1.0)  # the next volume is sampled anew
    assert sampling.calls == 2
    assert rows[1].settings() == {"source_blend": 0.25, "num_inference_steps": 20}


def test_rows_share_one_sampling_per_model_and_alpha_is_checked(blend):
    samplings, rows = blend.rows_config(["a.pt", "b.pt"], [0.0, 0.2], steps=20)
    assert sorted(samplings) == ["sampling_0", "sampling_1"]
    assert [(r["name"], r["sampling"]) for r in rows] == [
        ("blend0_seed0", "@sampling_0"), ("blend0.2_seed0", "@sampling_0"),
        ("blend0_seed1", "@sampling_1"), ("blend0.2_seed1", "@sampling_1")]
    with pytest.raises(ValueError, match="alpha = 1.5"):
        blend.SourceBlend(CountingSampling(), 1.5, "x")
