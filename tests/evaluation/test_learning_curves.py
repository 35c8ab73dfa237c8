"""scripts/learning_curves.py: the validation rows and the path's loss read back from a training log."""

from __future__ import annotations

import pytest

LOG = """\
2026-12-04 10:00:00,000 - INFO - Setting logging properties based on config: configs/logging.conf.
2026-12-04 10:00:30,000 - INFO - Epoch: 1/2, Iter: 1/2 -- fidelity_gradient: 0.0300 fidelity_l1: 0.0200 l1: 0.2 loss: 0.5
2026-12-04 10:01:00,000 - INFO - Epoch: 1/2, Iter: 2/2 -- fidelity_gradient: 0.0300 fidelity_l1: 0.0100 l1: 0.2 loss: 0.5
2026-12-04 10:02:00,000 - INFO - Epoch: 2/2, Iter: 1/2 -- fidelity_l1: 0.0080 loss: 0.4
2026-12-04 10:03:00,000 - INFO - Epoch: 1/3, Iter: 1/2 -- latent_std: 1.0 loss: 1.3 loss_diffusion: 1.3 phase: 1.0
2026-12-04 10:06:00,000 - bundle.engines.validator - INFO - validation at epoch 3, window [-160,240]: identity PSNR 33.02 dB SSIM 0.916; ceiling PSNR 35.67 dB SSIM 0.946; model PSNR 35.64 dB SSIM 0.946
2026-12-04 10:07:00,000 - INFO - Epoch: 3/3, Iter: 1/2 -- loss: 0.9 loss_diffusion: 0.6 loss_fidelity: 0.0230 phase: 2.0
"""


@pytest.fixture(scope="module")
def curves(load_script):
    return load_script("learning_curves")


def test_validation_rows_and_path_loss_per_epoch_against_minutes(curves, tmp_path):
    log = tmp_path / "run.log"
    log.write_text(LOG)
    run = curves.parse(log)
    assert run["validation"] == [(6.0, 3, {"identity": 33.02, "ceiling": 35.67, "model": 35.64})]
    # (minute of the epoch's last line, stage, epoch, term, mean): the VAE stage's epochs, then phase 2's
    assert run["path"] == [(1.0, 0, 1, "fidelity_l1", pytest.approx(0.015)), (2.0, 0, 2, "fidelity_l1", 0.008),
                           (7.0, 1, 3, "loss_fidelity", 0.023)]
    assert "| 3 | 6.0 | 35.67 | 33.02 | 35.64 |" in curves.table("run", run)
    curves.plot({"run": run}, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
