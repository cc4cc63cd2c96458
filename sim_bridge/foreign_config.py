"""What the readers of foreign printer configs share (:mod:`sim_bridge.klipper_cfg`,
:mod:`sim_bridge.slicer_config`): a profile field's allowed range, number parsing, and building a profile
whose errors name where the bad value came from in the input."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from sim_bridge.config import ConfigError, from_dict
from sim_bridge.profiles import PrinterProfile


def field_bounds(cls: type, name: str) -> tuple[float | None, float | None]:
    """The allowed range of a profile field (its ``ranged`` metadata)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("min"), f.metadata.get("max")
    raise KeyError(name)


def check_field_range(value: float, target: tuple[type, str], where: str) -> None:
    """Raise a :class:`ConfigError` naming ``where`` when ``value`` is outside the allowed range of the
    profile field ``target`` (its class and name)."""
    lo, hi = field_bounds(*target)
    if not ((lo is None or value >= lo) and (hi is None or value <= hi)):
        raise ConfigError(f"{where}: out of range, allowed [{lo}, {hi}] (for {target[1]})")


def parse_float(text: str) -> float | None:
    """A finite number, or ``None`` if ``text`` is not one."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def build_profile(data: dict[str, Any], source: str, origins: dict[str, str],
                  resolve: Callable[[str], str] | None = None) -> PrinterProfile:
    """Validate ``data`` as a profile; an error is prefixed with where its key came from in the input.

    ``origins`` maps profile keys to where their values came from (passed through ``resolve``, which may be
    costly, only when an error needs it).
    """
    try:
        return from_dict(PrinterProfile, data)
    except ConfigError as exc:
        raise located(exc, source, origins, resolve) from None


def located(exc: ConfigError, source: str, origins: dict[str, str],
            resolve: Callable[[str], str] | None = None) -> ConfigError:
    """``exc`` (about a profile key) prefixed with where that key's value came from in the input."""
    message = str(exc)
    best = ""
    for key in origins:
        if message.startswith(key) and len(key) > len(best):
            best = key
    where = origins[best] if best else source
    if best and resolve is not None:
        where = resolve(where)
    return ConfigError(f"{where}: {message}")
