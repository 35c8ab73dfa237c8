"""HU windows: exact round trip, the narrowest unsaturated window decodes, inconsistent channels\nfollow the wider estimate, decoding is continuous, one window works."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.data.windows import DEFAULT_WINDOWS, ChannelsToHUd, HUToChannelsd, HUWindows

ATOL_HU = 1e-3


def encode(window, hu):
    lo, hi = window
    return 2.0 * (np.clip(hu, lo, hi) - lo) / (hi - lo) - 1.0


def test_defaults_and_config_form():
    windows = HUWindows()
    assert windows.num_channels == 3
    config = windows.as_config()
    assert config == [[-1024.0, 3072.0], [-160.0, 240.0], [-1000.0, 200.0]]
    assert json.loads(json.dumps(config)) == config  # plain python: fits a config and a checkpoint
    assert HUWindows(config) == windows
    assert HUWindows(windows) == windows


@pytest.mark.parametrize("window", DEFAULT_WINDOWS)
def test_round_trip_is_exact_across_each_window(window):
    lo, hi = window
    hu = torch.linspace(lo, hi, 4001, dtype=torch.float32).reshape(1, -1)
    windows = HUWindows()
    channels = windows.to_channels(hu, channel_dim=0)
    assert channels.shape == (3, hu.shape[1]) and channels.dtype == torch.float32
    assert channels.min() >= -1 and channels.max() <= 1
    torch.testing.assert_close(windows.to_hu(channels, channel_dim=0), hu, atol=ATOL_HU, rtol=0)


@pytest.mark.parametrize("shape", [(2, 1, 4, 6, 5), (1, 1, 4, 6, 5), (1, 4, 6, 5)])
def test_default_channel_axis_fits_volumes_and_batches(shape):
    """(C, S, H, W) and (B, C, S, H, W), also B = 1: the channel axis is the 4th from the end."""
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1024, 3072, size=shape).astype(np.float32)
    windows = HUWindows()
    channels = windows.to_channels(hu)
    expected = list(shape)
    expected[-4] = 3
    assert isinstance(channels, np.ndarray) and channels.shape == tuple(expected)
    np.testing.assert_allclose(channels[..., 1:2, :, :, :], encode((-160, 240), hu), atol=1e-6)
    back = windows.to_hu(channels)
    assert isinstance(back, np.ndarray) and back.shape == hu.shape
    np.testing.assert_allclose(back, hu, atol=ATOL_HU, rtol=0)


def test_other_layouts_name_their_channel_axis():
    hu = torch.tensor([[[-100.0, 0.0], [100.0, 200.0]]])  # a 2D slice (1, H, W)
    windows = HUWindows()
    with pytest.raises(ValueError, match="channel_dim"):
        windows.to_channels(hu)
    channels = windows.to_channels(hu, channel_dim=0)
    assert channels.shape == (3, 2, 2)
    torch.testing.assert_close(windows.to_hu(channels, channel_dim=0), hu, atol=ATOL_HU, rtol=0)
    last = windows.to_channels(hu.reshape(2, 2, 1), channel_dim=-1)  # channels-last works too
    assert last.shape == (2, 2, 3)


def test_integer_hu_becomes_float():
    channels = HUWindows().to_channels(torch.tensor([[-1024, 40, 3072]], dtype=torch.int16), channel_dim=0)
    assert channels.dtype == torch.float32
    torch.testing.assert_close(channels[0], torch.tensor([-1.0, 2 * 1064 / 4096 - 1, 1.0]))


def test_values_outside_the_widest_window_clip_to_it():
    windows = HUWindows()
    back = windows.to_hu(windows.to_channels(torch.tensor([[-3000.0, 5000.0]]), channel_dim=0), channel_dim=0)
    torch.testing.assert_close(back, torch.tensor([[-1024.0, 3072.0]]))


def channels_for(wide, soft, lung):
    """Channels encoding (possibly inconsistent) HU values per window, as a network might output."""
    return torch.tensor(
        [[encode((-1024, 3072), wide)], [encode((-160, 240), soft)], [encode((-1000, 200), lung)]],
        dtype=torch.float32,
    )


@pytest.mark.parametrize(
    "wide, soft, lung, expected, why",
    [
        (60.0, 50.0, 40.0, 50.0, "soft tissue: the soft window is the narrowest unsaturated"),
        (-640.0, -160.0, -700.0, -700.0, "lung: soft saturated low, lung unsaturated"),
        (500.0, 240.0, 200.0, 500.0, "bone: soft and lung saturated high, fall back to the full range"),
        (-1024.0, -160.0, -1000.0, -1024.0, "air below every window: the widest, clipped"),
        (230.0, 236.0, 200.0, 230.0, "soft within the margin of its edge counts as saturated"),
        (-120.0, -140.0, -130.0, -140.0, "soft just inside the margin is used"),
    ],
)
def test_saturation_picks_the_narrowest_unsaturated_window(wide, soft, lung, expected, why):
    hu = HUWindows().to_hu(channels_for(wide, soft, lung), channel_dim=0)
    assert hu.shape == (1, 1)
    assert hu.item() == pytest.approx(expected, abs=ATOL_HU), why


@pytest.mark.parametrize(
    "wide, soft, lung, expected, why",
    [
        (1500.0, 40.0, 100.0, 1500.0, "bone by the full range: unsaturated soft and lung channels are not trusted"),
        (-900.0, 40.0, -850.0, -850.0, "lung by the full and lung ranges: an unsaturated soft channel is not"),
        (3000.0, -100.0, -1000.0, 3000.0, "metal: a soft channel claiming fat changes nothing"),
    ],
)
def test_inconsistent_channels_follow_the_wider_estimate(wide, soft, lung, expected, why):
    """A network output whose channels disagree decodes near the wider windows' estimate, not
    in a narrow window the full-range channel rules out (the old decoding gave 40 HU here)."""
    hu = HUWindows().to_hu(channels_for(wide, soft, lung), channel_dim=0)
    assert hu.item() == pytest.approx(expected, abs=ATOL_HU), why


@pytest.mark.parametrize("channel", [0, 1, 2])
def test_decoding_is_continuous_in_the_channels(channel):
    """Sweeping one channel through [-1, 1] in steps of 1e-6, the others fixed at inconsistent
    values, moves the decoded HU a little at every step, never by a window switch (the old
    decoding jumped by 250 HU in one step where the soft channel crossed its saturation margin). The
    gates ramp over 10-60 HU while inconsistent estimates differ by thousands: steep, but finite."""
    sweep = torch.arange(-1.0, 1.0, 1e-6, dtype=torch.float64)
    fixed = {0: [encode((-1024, 3072), 1500.0), encode((-1024, 3072), -900.0), 0.0],
             1: [0.0, encode((-160, 240), 40.0), -0.93],
             2: [encode((-1000, 200), 100.0), 0.93, -0.5]}
    windows = HUWindows()
    for k in range(3):
        channels = torch.empty(3, sweep.numel(), dtype=torch.float64)
        for c in range(3):
            channels[c] = sweep if c == channel else float(fixed[c][k])
        hu = windows.to_hu(channels, channel_dim=0)[0]
        step = hu.diff().abs().max().item()
        assert step < 5.0, f"sweeping channel {channel}: a 1e-6 step moved the HU by {step:.0f}"


def test_window_order_does_not_change_decoding():
    rng = np.random.default_rng(1)
    hu = torch.from_numpy(rng.uniform(-1100, 3100, size=(1, 500)).astype(np.float32))
    forward, reverse = HUWindows(), HUWindows(DEFAULT_WINDOWS[::-1])
    torch.testing.assert_close(
        forward.to_hu(forward.to_channels(hu, 0), 0), reverse.to_hu(reverse.to_channels(hu, 0), 0), atol=ATOL_HU, rtol=0
    )


def test_single_window():
    windows = HUWindows([[-160, 240]])
    assert windows.num_channels == 1
    hu = torch.tensor([[[[-500.0, -160.0, 0.0, 239.0, 900.0]]]])  # (1, S, H, W)
    channels = windows.to_channels(hu)
    assert channels.shape == hu.shape
    torch.testing.assert_close(windows.to_hu(channels), hu.clamp(-160, 240), atol=ATOL_HU, rtol=0)


@pytest.mark.parametrize("bad", [[[240, -160]], [[0, 0]], [], [[1, 2, 3]]])
def test_invalid_windows_raise(bad):
    with pytest.raises(ValueError):
        HUWindows(bad)


def test_wrong_channel_count_raises():
    windows = HUWindows()
    with pytest.raises(ValueError, match="size 1"):
        windows.to_channels(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="size 3"):
        windows.to_hu(torch.zeros(1, 1, 4, 4, 4))


def test_dict_transforms_keep_metadata_and_invert():
    affine = torch.diag(torch.tensor([2.5, 0.8, 0.8, 1.0]))
    hu = MetaTensor(torch.linspace(-1024, 3072, 2 * 3 * 4).reshape(1, 2, 3, 4), affine=affine)
    hu.meta["filename_or_obj"] = "scan.nii.gz"
    hu.push_applied_operation({"class": "SpatialPad", "id": 0})
    data = HUToChannelsd(keys="source", windows=[[-1024, 3072], [-160, 240], [-1000, 200]])({"source": hu})
    channels = data["source"]
    assert isinstance(channels, MetaTensor) and channels.shape == (3, 2, 3, 4)
    torch.testing.assert_close(channels.affine, hu.affine)
    assert channels.meta["filename_or_obj"] == "scan.nii.gz"
    assert [op["class"] for op in channels.applied_operations] == ["SpatialPad"]  # Invertd still works
    back = ChannelsToHUd(keys="source")(data)["source"]
    assert isinstance(back, MetaTensor) and back.shape == hu.shape
    torch.testing.assert_close(back.as_tensor(), hu.as_tensor(), atol=ATOL_HU, rtol=0)
