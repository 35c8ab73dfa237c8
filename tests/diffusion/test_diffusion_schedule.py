"""DiffusionSchedule: the cosine table, the forward process, targets and their inverse, persistence."""

import io
import math

import pytest
import torch

from bundle.diffusion import DiffusionSchedule

T = 1000
S = 8e-3


def cosine_alphas_cumprod(num_train_timesteps=T, s=S):
    """Closed form abar(t) = f(t) / f(0), f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2), t = 1..T,
    in float64 (MONAI's table index i is the closed form at t = i + 1)."""
    t = torch.arange(num_train_timesteps + 1, dtype=torch.float64)
    f = torch.cos((t / num_train_timesteps + s) / (1 + s) * math.pi / 2) ** 2
    return (f / f[0])[1:]


def test_cosine_matches_closed_form():
    schedule = DiffusionSchedule(T, "cosine", schedule_args={"s": S})
    abar = schedule.alphas_cumprod
    assert abar.dtype == torch.float64 and abar.shape == (T,)
    reference = cosine_alphas_cumprod()
    # MONAI evaluates the formula in float32, so the betas carry float32 rounding: agreement is
    # ~1e-5 relative / ~4e-7 absolute (measured), not 1e-15. No clipping happens below t = 999.
    head = slice(0, T - 1)
    torch.testing.assert_close(abar[head], reference[head], rtol=2e-5, atol=1e-6)
    # The tail: the unclipped last beta is 1 - f(T)/f(T-1) = 1 (f(T) ~ 0), MONAI clips it to 0.999,
    # so abar[999] = 0.001 * abar[998] ~ 2.4e-9 where the closed form gives ~4e-33.
    assert reference[-1] < 1e-30
    assert abar[-1].item() == pytest.approx(0.001 * abar[-2].item(), rel=1e-12)
    assert abar[-1].item() == pytest.approx(2.43e-9, rel=1e-2)
    assert bool((abar[1:] < abar[:-1]).all())


def test_cosine_default_is_s_0008_and_other_schedules_build():
    assert torch.equal(DiffusionSchedule().alphas_cumprod, DiffusionSchedule(schedule_args={"s": 8e-3}).alphas_cumprod)
    linear = DiffusionSchedule(100, "linear_beta", schedule_args={"beta_start": 1e-4, "beta_end": 2e-2})
    expected = torch.cumprod(1 - torch.linspace(1e-4, 2e-2, 100, dtype=torch.float32).double(), 0)
    torch.testing.assert_close(linear.alphas_cumprod, expected, rtol=1e-12, atol=0)
    with pytest.raises(TypeError):  # MONAI's cosine takes only s
        DiffusionSchedule(schedule_args={"beta_start": 1e-4})
    with pytest.raises(ValueError):
        DiffusionSchedule(prediction_type="noise")


@pytest.mark.parametrize("shape", [(3,), (3, 4), (3, 4, 8, 16, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_add_noise_formula_and_dtype(shape, dtype):
    schedule = DiffusionSchedule()
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(shape, generator=g, dtype=dtype)
    noise = torch.randn(shape, generator=g, dtype=torch.float64)  # noise dtype follows z0
    t = torch.tensor([0, 500, 999])
    z_t = schedule.add_noise(z0, noise, t)
    assert z_t.dtype == dtype and z_t.shape == z0.shape
    for i, ti in enumerate(t.tolist()):
        abar = schedule.alphas_cumprod[ti].item()
        expected = math.sqrt(abar) * z0[i].double() + math.sqrt(1 - abar) * noise[i]
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        torch.testing.assert_close(z_t[i].double(), expected, rtol=tol, atol=tol)
    # an int timestep applies to the whole batch
    torch.testing.assert_close(schedule.add_noise(z0, noise, 500), schedule.add_noise(z0, noise, torch.full((3,), 500)))


def test_training_targets():
    g = torch.Generator().manual_seed(2)
    z0 = torch.randn(4, 2, 3, dtype=torch.float64, generator=g)
    noise = torch.randn(4, 2, 3, dtype=torch.float64, generator=g)
    t = torch.tensor([0, 10, 700, 999])
    abar = DiffusionSchedule().alphas_cumprod[t].view(-1, 1, 1)
    v = abar.sqrt() * noise - (1 - abar).sqrt() * z0
    torch.testing.assert_close(DiffusionSchedule(prediction_type="v_prediction").training_target(z0, noise, t), v)
    torch.testing.assert_close(DiffusionSchedule(prediction_type="epsilon").training_target(z0, noise, t), noise)
    torch.testing.assert_close(DiffusionSchedule(prediction_type="sample").training_target(z0, noise, t), z0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_predict_x0_eps_inverts_training_target(prediction_type):
    schedule = DiffusionSchedule(prediction_type=prediction_type)
    g = torch.Generator().manual_seed(3)
    z0 = torch.randn(6, 4, 2, 5, 5, dtype=torch.float64, generator=g)
    noise = torch.randn(6, 4, 2, 5, 5, dtype=torch.float64, generator=g)
    # t = 999 is the hard case for epsilon (x0 = (z - s eps) / sqrt(2.4e-9)): float64 still holds
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    z_t = schedule.add_noise(z0, noise, t)
    x0_hat, eps_hat = schedule.predict_x0_eps(schedule.training_target(z0, noise, t), z_t, t)
    atol = 1e-10 if prediction_type == "epsilon" else 1e-12  # epsilon: rounding of z_t times 2e4
    torch.testing.assert_close(x0_hat, z0, rtol=0, atol=atol)
    # sample prediction: eps = (z - a x0) / s, s = sqrt(1 - abar_0) = 6e-3 at t = 0
    torch.testing.assert_close(eps_hat, noise, rtol=0, atol=1e-12)


def test_sample_timesteps():
    schedule = DiffusionSchedule()
    t = schedule.sample_timesteps(20000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.shape == (20000,)
    assert int(t.min()) == 0 and int(t.max()) == T - 1
    again = schedule.sample_timesteps(20000, generator=torch.Generator().manual_seed(0), device="cpu")
    assert torch.equal(t, again)


def test_config_round_trip_through_weights_only_load():
    schedule = DiffusionSchedule(1000, "cosine", "epsilon", {"s": 0.008})
    buffer = io.BytesIO()
    torch.save({"schedule": schedule.state_dict(), "config": schedule.to_config()}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    for state in (loaded["schedule"], loaded["config"]):
        rebuilt = DiffusionSchedule.from_config(state)
        assert rebuilt.to_config() == schedule.to_config()
        assert torch.equal(rebuilt.alphas_cumprod, schedule.alphas_cumprod)
    other = DiffusionSchedule()
    other.load_state_dict(loaded["schedule"])
    assert other.prediction_type == "epsilon"


def test_load_state_dict_rejects_a_different_table():
    state = DiffusionSchedule().state_dict()
    state["alphas_cumprod"] = [a * (1 + 1e-3) for a in state["alphas_cumprod"]]
    with pytest.raises(ValueError, match="another schedule"):
        DiffusionSchedule.from_config(state)
