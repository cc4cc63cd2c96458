"""Loading printers and materials: the bundled ones by name, and a printer from a file of any supported kind.

:func:`load_printer` takes a bundled profile name (``sim_bridge/profiles/*.yaml``), a profile ``.yaml``, a
Klipper ``printer.cfg`` (:mod:`sim_bridge.klipper_cfg`), a PrusaSlicer-family ``.ini`` or sliced G-code
file (:mod:`sim_bridge.slicer_config`) or a Prunt config ``.json`` (:mod:`sim_bridge.prunt_config`); :func:`load_material` a bundled material.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from sim_bridge.config import ConfigError, from_dict, load_yaml
from sim_bridge.profiles import Material, PrinterProfile

PROFILE_DIR = Path(__file__).parent / "profiles"
"""Where the bundled printer profiles live (one YAML file per printer)."""

MATERIALS: dict[str, Material] = {
    "PLA": Material("PLA", 190.0, 230.0, 50.0, 70.0, 1.24, 1.0, 50.0, 15.0, True),
    "PETG": Material("PETG", 220.0, 250.0, 70.0, 90.0, 1.27, 0.8, 45.0, 10.0, True),
    "ABS": Material("ABS", 230.0, 260.0, 90.0, 110.0, 1.04, 0.9, 45.0, 8.0, False),
}
"""Bundled materials (temperature windows from common vendor datasheets; see docs/simulator.md)."""


def bundled_printers() -> list[str]:
    """Names of the bundled printer profiles."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_material(name: str) -> Material:
    """A bundled material by name (case-insensitive)."""
    try:
        return MATERIALS[name.upper()]
    except KeyError:
        raise ConfigError(f"material {name!r}: unknown, choose one of {', '.join(MATERIALS)}") from None


def printer_from_dict(data: dict[str, object], source: str = "") -> PrinterProfile:
    """Build and validate a profile from a mapping (YAML keys = field names)."""
    return from_dict(PrinterProfile, dict(data), source)


@lru_cache(maxsize=64)
def _load_bundled(name: str) -> PrinterProfile:
    # Profiles are frozen: one parsed copy per bundled name can be shared.
    return load_yaml(PrinterProfile, PROFILE_DIR / f"{name}.yaml")


def load_printer(name_or_path: str | Path) -> PrinterProfile:
    """Load a printer: a bundled name, a profile ``.yaml``, a Klipper ``.cfg``, a PrusaSlicer ``.ini``/``.gcode``
    or a Prunt config ``.json`` (:mod:`sim_bridge.prunt_config`)."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix.lower() in {".yaml", ".yml"}:
        return load_yaml(PrinterProfile, path)
    # Each importer loads with its file type: a bundled name (the command line's default) needs none of them.
    if path.suffix.lower() == ".cfg":
        from sim_bridge.klipper_cfg import printer_from_klipper_cfg  # see above

        return printer_from_klipper_cfg(path)
    if path.suffix.lower() in {".ini", ".gcode", ".gco"}:
        from sim_bridge.slicer_config import printer_from_prusaslicer  # see above

        return printer_from_prusaslicer(path)
    if path.suffix.lower() == ".json":
        from sim_bridge.prunt_config import printer_from_prunt_config  # see above

        return printer_from_prunt_config(path)
    bundled = PROFILE_DIR / f"{text}.yaml"
    if bundled.is_file():
        return _load_bundled(text)
    raise ConfigError(f"printer {text!r}: not a bundled profile ({', '.join(bundled_printers())}) "
                      "nor a .yaml/.cfg/.ini/.gcode/.json file")
