"""A printer profile from a Prunt configuration, as Prunt's ``GET /config/values`` returns it and as its
``prunt_sim.json`` stores it: ``{"Properties": {"Kinematics$Maximum acceleration": 3000.0, ...},
"Schema version": 5}``.

Prunt's setting names are written here once (:data:`KEYS`). What the profile takes from them: the
cartesian or Core XY kinematics, position limits, the tangential and axial velocity limits, acceleration,
jerk, snap, crackle, chord error, "Ignore E in XYZE", pressure advance and whether every axis homes by
"Set to value" (instant homing). Heaters and thermal constants stay those of the ``base`` profile (Prunt's
heater settings are PID gains of a different model). Input shaping and corner shifting are not modelled by
the ``prunt`` planner; a config that enables them still loads (the planner then estimates without them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sim_bridge.config import ConfigError, load_yaml
from sim_bridge.foreign_config import check_field_range
from sim_bridge.profiles import PrinterProfile, PruntMotion

BASE_PROFILE = Path(__file__).parent / "profiles" / "prunt-sim.yaml"
"""The profile a Prunt config is read onto by default (the bundled ``prunt-sim``)."""
KEYS = {
    "kind": "Kinematics$Kinematics kind",
    "accel": "Kinematics$Maximum acceleration",
    "jerk": "Kinematics$Maximum jerk",
    "snap": "Kinematics$Maximum snap",
    "crackle": "Kinematics$Maximum crackle",
    "chord": "Kinematics$Maximum chord error",
    "tangential_v": "Kinematics$Maximum tangential velocity",
    "axial_v": "Kinematics$Axial velocity limits$",
    "lower": "Kinematics$Lower position limit$",
    "upper": "Kinematics$Upper position limit$",
    "ignore_e": "Kinematics$Ignore E in XYZE",
    "pressure_advance": "Kinematics$Pressure advance time",
    "homing": "Homing$",
}
"""Prunt's names of the settings read here (axis-wise ones end in ``$`` and take ``X_AXIS`` ...)."""
AXES = ("X_AXIS", "Y_AXIS", "Z_AXIS", "E_AXIS")
KIND_NAMES = {"Cartesian": "cartesian", "Core XY": "corexy"}
"""Prunt's kinematics kinds and the profile's names for them."""
INSTANT_HOMING = "Set to value"


def read_prunt_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``Properties`` mapping of a Prunt config file (a :class:`ConfigError` naming the file otherwise)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the Prunt config: {getattr(exc, 'strerror', None) or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}): {exc.msg}") from None
    properties = data.get("Properties") if isinstance(data, dict) else None
    if not isinstance(properties, dict):
        raise ConfigError(f"{path}: not a Prunt config: no 'Properties' mapping at the top level")
    return properties


def printer_from_prunt_config(config: str | os.PathLike[str] | dict[str, Any], base: PrinterProfile | None = None,
                              name: str | None = None) -> PrinterProfile:
    """A ``prunt`` profile from a Prunt config (a file, or its ``Properties`` mapping), on top of ``base``
    (default: the bundled ``prunt-sim``) for what Prunt's config does not say."""
    if base is None:
        base = load_yaml(PrinterProfile, BASE_PROFILE)
    if isinstance(config, dict):
        props, source = config, "Prunt config"
    else:
        props, source = read_prunt_config(config), str(config)
        name = name or Path(config).stem

    def number(key: str, target: tuple[type, str]) -> float:
        if key not in props:
            raise ConfigError(f"{source}: {key!r} is missing")
        value = props[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key!r} = {value!r}: not a number")
        check_field_range(float(value), target, f"{source}: {key!r} = {value!r}")
        return float(value)

    kind = props.get(KEYS["kind"], "Cartesian")
    if kind not in KIND_NAMES:
        raise ConfigError(f"{source}: {KEYS['kind']!r} = {kind!r}: unsupported, allowed: {', '.join(KIND_NAMES)}")
    P, M = PrinterProfile, PruntMotion
    motion = M(jerk_mm_s3=number(KEYS["jerk"], (M, "jerk_mm_s3")),
               snap_mm_s4=number(KEYS["snap"], (M, "snap_mm_s4")),
               crackle_mm_s5=number(KEYS["crackle"], (M, "crackle_mm_s5")),
               chord_error_mm=number(KEYS["chord"], (M, "chord_error_mm")),
               ignore_e_in_xyze=bool(props.get(KEYS["ignore_e"], True)),
               instant_homing=all(props.get(f"{KEYS['homing']}{axis}$Homing method", INSTANT_HOMING)
                                  == INSTANT_HOMING for axis in AXES[:3]))
    axial = [number(KEYS["axial_v"] + axis, (P, "max_feedrate_mm_s")) for axis in AXES]
    lower = [number(KEYS["lower"] + axis, (P, "position_min_mm")) for axis in AXES[:3]]
    upper = [number(KEYS["upper"] + axis, (P, "position_max_mm")) for axis in AXES[:3]]
    changes: dict[str, Any] = {
        "name": name or "prunt", "description": f"imported from Prunt config {Path(source).name}",
        "firmware": "prunt", "kinematics": KIND_NAMES[kind],
        "max_velocity_mm_s": number(KEYS["tangential_v"], (P, "max_velocity_mm_s")),
        "max_accel_mm_s2": number(KEYS["accel"], (P, "max_accel_mm_s2")),
        "max_feedrate_mm_s": axial, "max_z_velocity_mm_s": axial[2],
        "position_min_mm": lower, "position_max_mm": upper,
        "position_endstop_mm": [min(max(0.0, lo), hi) for lo, hi in zip(lower, upper, strict=True)],
        "pressure_advance_s": float(props.get(KEYS["pressure_advance"], 0.0)), "prunt": motion,
    }
    try:
        return base.replace(**changes)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
