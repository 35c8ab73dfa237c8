"""Settings checked before any heavy work, each refused with one line:
``<setting> = <value>: <what is allowed>``.

The constructors and loaders that receive a setting call these checks (``DiffusionSchedule``,
``DDIMSampler``, ``CTEnhancer``, ``load_datalist``), so a bad value fails where it enters whatever
the caller (configs, ``ctv2v`` commands, Python). :func:`bundle.engines.settings.check_training_settings` gathers the
training recipe's settings that only meet each other late (the patch size against the networks'
factors, the datalist) and runs first in ``configs/train.yaml``'s run list, before any network,
dataset, output folder or checkpoint is made.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "SettingError",
    "check_choice",
    "check_eta",
    "check_lowpass_sigma",
    "check_num_samples",
    "check_patch_size",
    "check_steps",
    "check_strength",
    "first_error_line",
    "user_error",
]


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, tuple):
        value = list(value)
    return str(value)


class SettingError(ValueError):
    """A setting with a value it cannot take. ``str()`` is one line:
    ``<setting> = <value>: <what is allowed>``."""

    def __init__(self, setting: str, value: Any, allowed: str) -> None:
        self.setting, self.value, self.allowed = setting, value, allowed
        super().__init__(f"{setting} = {_show(value)}: {allowed}")

    def __str__(self) -> str:  # one line, also for subclasses that are KeyErrors (no quotes)
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):
        return type(self), (self.setting, self.value, self.allowed)


def first_error_line(error: BaseException | str, limit: int = 300) -> str:
    """The first non-empty line of an error's text, at most ``limit`` characters."""
    text = str(error).strip()
    line = next((part.strip() for part in text.splitlines() if part.strip()), type(error).__name__)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def user_error(error: BaseException) -> BaseException | None:
    """The error in ``error``'s cause/context chain that is the user's to fix (a bad setting, a
    bad model file, a missing file), or None. Config runs wrap errors in ``RuntimeError``s
    ("Failed to instantiate ..."); commands report the one that says what is wrong."""
    from bundle.utils.model_files import ModelFileError

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (SettingError, ModelFileError, FileNotFoundError)):
            return error
        error = error.__cause__ or error.__context__
    return None


# --- single settings ----------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or (
        isinstance(value, float) and value.is_integer()
    )


def check_bool(setting: str, value: Any) -> bool:
    """A switch: a bool, or the words a command line gives (``--flag true``: MONAI's bundle runner
    passes the text); anything else is refused (``bool("false")`` would switch it on)."""
    if isinstance(value, bool):
        return value
    words = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
    if isinstance(value, str) and value.strip().lower() in words:
        return words[value.strip().lower()]
    raise SettingError(setting, value, "true or false")


def check_choice(setting: str, value: Any, choices: Iterable[Any]) -> Any:
    choices = tuple(choices)
    if value not in choices:
        raise SettingError(setting, value, "one of " + ", ".join(_show(c) for c in choices))
    return value


def check_steps(setting: str, value: Any, maximum: int | None = None) -> int:
    """A number of steps: an integer >= 1 (and <= ``maximum`` when given)."""
    allowed = "an integer >= 1" if maximum is None else f"an integer from 1 to {maximum}"
    if not _is_int(value) or value < 1 or (maximum is not None and value > maximum):
        raise SettingError(setting, value, allowed)
    return int(value)


def check_strength(setting: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise SettingError(setting, value, "a number in (0, 1]: 1 starts from noise, < 1 from the noised source")
    return float(value)


def check_eta(setting: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
        raise SettingError(setting, value, "a number >= 0 (0: deterministic DDIM, 1: DDPM-like)")
    return float(value)


def check_lowpass_sigma(setting: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
        raise SettingError(setting, value, "a number of pixels >= 0 (0: none of the output's band from the source)")
    return float(value)


def check_fidelity_weight(setting: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise SettingError(setting, value, "a number >= 0 (1: what training used, 0: the specification's decoder)")
    return float(value)


def check_num_samples(setting: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise SettingError(setting, value, "an integer >= 1")
    return int(value)


# --- the training recipe ------------------------------------------------------------------------
def network_factors(network: Mapping[str, Any]) -> tuple[int, int]:
    """(VAE in-plane factor, U-Net in-plane factor) of a ``configs/common.yaml#network`` dict."""
    return 2 ** (len(network["vae_channels"]) - 1), 2 ** (len(network["unet_channel_mult"]) - 1)


def check_patch_size(setting: str, patch: Any, network: Mapping[str, Any]) -> list[int]:
    """``(slices, rows, columns)`` the networks of ``network`` can train on: rows and columns
    multiples of the VAE factor times the U-Net factor (the VAE divides the slab in-plane, the
    U-Net the latent again), at least ``network#num_slices`` slices (the slab)."""
    vae_factor, unet_factor = network_factors(network)
    multiple = vae_factor * unet_factor
    num_slices = int(network.get("num_slices", 1))
    allowed = (
        f"three integers (slices, rows, columns), slices >= network#num_slices = {num_slices}, rows and "
        f"columns multiples of {multiple} (VAE factor {vae_factor} x U-Net factor {unet_factor})"
    )
    try:
        values = list(patch)
    except TypeError:
        raise SettingError(setting, patch, allowed) from None
    if len(values) != 3 or not all(_is_int(v) and v >= 1 for v in values):
        raise SettingError(setting, patch, allowed)
    slices, rows, columns = (int(v) for v in values)
    if slices < num_slices or rows % multiple or columns % multiple:
        raise SettingError(setting, patch, allowed)
    return [slices, rows, columns]
