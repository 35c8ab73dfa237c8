"""HU windows: one network channel per window, and back to HU.

A CT voxel spans about 4,000 HU, but the structures that low-dose noise hides are low-contrast:
soft tissue differs by 10-50 HU, lung parenchyma by 50-100 HU. A single channel scaled to
[-1, 1] over the full range gives soft tissue a sliver of the network's output range, so an
output error of 0.01 is already 20 HU. Each window is therefore its own channel, clipped to the
window and scaled to [-1, 1]:

* ``(-1024, 3072)``: the full CT range (12-bit), the only channel that is never saturated by
  anatomy; it carries bone, metal and air.
* ``(-160, 240)``: soft tissue (level 40, width 400), the window the literature reports
  (docs/evaluation.md): liver, muscle, vessels, lesions.
* ``(-1000, 200)``: lung (and fat). Low-dose CT is above all chest CT (lung-cancer screening);
  lung parenchyma (-900 to -500 HU), ground glass and fat (-100 HU) all lie outside the soft
  window, and the full-range channel gives them 3.4 times coarser precision than this one.
  Bone is not given a window: it is high-contrast (hundreds of HU above its surroundings),
  so the full-range channel's precision is enough for it, and noise barely hides it.

Shapes: :meth:`HUWindows.to_channels` takes an array with a channel axis of size 1 at
``channel_dim`` and returns the same shape with ``num_channels`` there; :meth:`HUWindows.to_hu`
is the inverse. The default ``channel_dim=-4`` is the channel axis of both layouts this project
uses, a volume ``(C, S, H, W)`` and a network batch ``(B, C, S, H, W)``; pass ``channel_dim`` for
anything else (``0`` for any channel-first MONAI item, e.g. a 2D slice ``(C, H, W)``). A channel
axis is required, not optional: it keeps the two directions shape-symmetric and no axis is guessed.
Torch tensors (MetaTensor included) and numpy arrays are accepted; the result has the input's
type, float dtype (integers become float32) and device.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type

__all__ = [
    "DEFAULT_WINDOWS",
    "ChannelsToHU",
    "ChannelsToHUd",
    "HUToChannels",
    "HUToChannelsd",
    "HUWindows",
    "WindowsLike",
]

DEFAULT_WINDOWS = ((-1024.0, 3072.0), (-160.0, 240.0), (-1000.0, 200.0))

WindowsLike = Union["HUWindows", Sequence[Sequence[float]]]


class HUWindows:
    """Clip-and-scale HU windows.

    Args:
        windows: ``[[lo, hi], ...]`` in HU, ``lo < hi``; one output channel per window, in this
            order. Plain lists so the setting can live in a YAML config and in a checkpoint
            (:meth:`as_config`).
        margin: in channel units; in :meth:`to_hu` a channel counts as saturated when it is not
            inside ``(-1 + margin, 1 - margin)`` (and as fully trusted inside
            ``(-1 + 2 margin, 1 - 2 margin)``, linear in between). A network rarely outputs
            exactly +-1 for a saturated channel: without a margin, a bone voxel whose soft-tissue
            channel came out as 0.98 would decode as 236 HU. 0.05 is 2.5 % of a window's width
            (10 HU of the soft window); values that close to a narrow window's edge are decoded
            from the next wider window instead, at a coarser but still exact-for-exact-input scale.
    """

    def __init__(self, windows: WindowsLike = DEFAULT_WINDOWS, margin: float = 0.05):
        if isinstance(windows, HUWindows):
            windows = windows.windows
        pairs = []
        for window in windows:
            if len(window) != 2:
                raise ValueError(f"each HU window must be a [lo, hi] pair, got {window!r}")
            lo, hi = float(window[0]), float(window[1])
            if not lo < hi:
                raise ValueError(f"HU window [{lo}, {hi}] must have lo < hi")
            pairs.append((lo, hi))
        if not pairs:
            raise ValueError("at least one HU window is needed")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), got {margin}")
        self.windows: tuple[tuple[float, float], ...] = tuple(pairs)
        self.margin = float(margin)
        widths = [hi - lo for lo, hi in self.windows]
        # Decoding visits windows from widest to narrowest, so the narrowest unsaturated one wins.
        # Of two equally wide windows the one listed first is visited last, so it wins.
        self._widest_first = sorted(range(len(widths)), key=lambda i: (-widths[i], -i))

    @property
    def num_channels(self) -> int:
        return len(self.windows)

    def as_config(self) -> list[list[float]]:
        """``[[lo, hi], ...]``: plain python, for configs and checkpoints."""
        return [[lo, hi] for lo, hi in self.windows]

    def __repr__(self) -> str:
        return f"HUWindows({self.as_config()}, margin={self.margin})"

    def __eq__(self, other) -> bool:
        return isinstance(other, HUWindows) and (self.windows, self.margin) == (other.windows, other.margin)

    def __hash__(self) -> int:
        return hash((self.windows, self.margin))

    def to_channels(self, hu, channel_dim: int = -4):
        """HU ``(..., 1, ...)`` -> window channels ``(..., num_channels, ...)`` in [-1, 1]."""
        values, restore = _as_float_tensor(hu)
        dim = _check_channel_dim(values, channel_dim, 1, "HU input")
        channels = [2.0 * (values.clamp(lo, hi) - lo) / (hi - lo) - 1.0 for lo, hi in self.windows]
        return restore(torch.cat(channels, dim=dim))

    def to_hu(self, channels, channel_dim: int = -4):
        """Window channels ``(..., num_channels, ...)`` -> HU ``(..., 1, ...)``.

        Decoding starts from the widest window and refines the estimate window by window,
        widest to narrowest. A narrower window's value replaces the current estimate only where
        (1) its channel is unsaturated and (2) the widest window's estimate says the voxel lies
        inside that window. Both gates ramp linearly over one ``margin`` (trusted fully inside
        ``(-1 + 2 margin, 1 - 2 margin)``, not at all outside ``(-1 + margin, 1 - margin)``, the
        second gate measured on the widest estimate in this window's units), so the result is a
        continuous function of the channels. Gate (2) keeps an inconsistent network output
        honest: where the full-range channel says bone or air, a soft-tissue channel that came
        out unsaturated does not turn the voxel into soft tissue. Gating on the widest estimate
        rather than on the refined one keeps the slope finite and small: a refined estimate
        feeding the next gate would compound the ramps.

        Channels are clipped to [-1, 1] first, so the result stays inside the widest window's
        range. For channels made by :meth:`to_channels` every window that is used agrees with the
        others, so the result is exact (to float precision) for every HU value inside the widest
        window, whatever the blend weights.
        """
        values, restore = _as_float_tensor(channels)
        dim = _check_channel_dim(values, channel_dim, self.num_channels, "window channels")
        upper, margin = 1.0 - self.margin, max(self.margin, 1e-6)
        hu = widest = None
        for index in self._widest_first:
            lo, hi = self.windows[index]
            half_width = 0.5 * (hi - lo)
            channel = values.narrow(dim, index, 1).clamp(-1.0, 1.0)
            decoded = lo + (channel + 1.0) * half_width
            if widest is None:  # the widest window: the first estimate, and the one every gate reads
                hu = widest = decoded
                continue
            widest_here = (widest - lo) / half_width - 1.0  # the widest estimate in this window's units
            unsaturated = ((upper - channel.abs()) / margin).clamp(0.0, 1.0)
            inside = ((upper - widest_here.abs()) / margin).clamp(0.0, 1.0)
            hu = hu + unsaturated * inside * (decoded - hu)
        return restore(hu)


def _as_float_tensor(data):
    """``data`` as a float torch tensor (no copy where possible) and a function restoring its type."""
    if isinstance(data, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(data))
        if not tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        return tensor, lambda out: out.numpy()
    if isinstance(data, torch.Tensor):
        # Plain tensors inside; MetaTensor meta is put back by the caller (the dict transforms use
        # convert_to_dst_type) so torch ops here never merge or check metadata.
        tensor = data.as_tensor() if hasattr(data, "as_tensor") else data
        if not tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        if hasattr(data, "as_tensor"):
            return tensor, lambda out: convert_to_dst_type(out, data, dtype=out.dtype)[0]
        return tensor, lambda out: out
    raise TypeError(f"expected a torch tensor or numpy array, got {type(data).__name__}")


def _check_channel_dim(values: torch.Tensor, channel_dim: int, size: int, what: str) -> int:
    if values.ndim == 0:
        raise ValueError(f"{what} needs a channel axis, got a scalar")
    dim = channel_dim % values.ndim if -values.ndim <= channel_dim < values.ndim else None
    if dim is None or values.shape[dim] != size:
        raise ValueError(
            f"{what} must have size {size} at channel_dim={channel_dim}, got shape {tuple(values.shape)} "
            "(the default -4 fits (C, S, H, W) and (B, C, S, H, W); pass channel_dim for other layouts)"
        )
    return dim


class HUToChannelsd(MapTransform):
    """HU images ``(1, S, H, W)`` -> window channels ``(num_channels, S, H, W)`` in [-1, 1].

    Not invertible in MONAI's sense (it records nothing in ``applied_operations``), so
    ``Invertd`` skips it; decode network outputs with :class:`ChannelsToHUd`.
    """

    def __init__(self, keys: KeysCollection, windows: WindowsLike = DEFAULT_WINDOWS, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.windows = HUWindows(windows)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.windows.to_channels(d[key], channel_dim=0)
        return d


class ChannelsToHUd(MapTransform):
    """Window channels ``(num_channels, S, H, W)`` -> HU ``(1, S, H, W)`` (postprocessing).

    ``margin``: see :class:`HUWindows`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        windows: WindowsLike = DEFAULT_WINDOWS,
        margin: float = 0.05,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.windows = HUWindows(windows, margin=margin)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.windows.to_hu(d[key], channel_dim=0)
        return d


# Array versions for code that works on tensors rather than dicts.
class HUToChannels(Transform):
    """Array version of :class:`HUToChannelsd`."""

    def __init__(self, windows: WindowsLike = DEFAULT_WINDOWS):
        self.windows = HUWindows(windows)

    def __call__(self, hu):
        return self.windows.to_channels(hu, channel_dim=0)


class ChannelsToHU(Transform):
    """Array version of :class:`ChannelsToHUd`."""

    def __init__(self, windows: WindowsLike = DEFAULT_WINDOWS, margin: float = 0.05):
        self.windows = HUWindows(windows, margin=margin)

    def __call__(self, channels):
        return self.windows.to_hu(channels, channel_dim=0)
