"""A printer profile from a PrusaSlicer-family slicer config: an ``.ini``, or the config dump a sliced G-code
file carries.

:func:`printer_from_prusaslicer` reads a PrusaSlicer ``.ini`` or the config dump a PrusaSlicer, SuperSlicer,
Slic3r, OrcaSlicer, Bambu Studio or Creality Print G-code file carries (at its end, or at its head in
Bambu's ``CONFIG_BLOCK``), reading only the end and the head of the file, never the whole program.

A slicer config cannot tell thermal constants (heater power, heat capacity, losses): those stay at the
:class:`~sim_bridge.profiles.PrinterProfile` defaults.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim_bridge.config import ConfigError, to_dict
from sim_bridge.foreign_config import build_profile, check_field_range, parse_float
from sim_bridge.profiles import PrinterProfile

DUMP_TAIL_MAX_BYTES = 8 * 1024 * 1024
"""Most bytes read backwards from the end of a G-code file in search of its config dump."""
DUMP_HEAD_MAX_LINES = 300
"""Lines searched at the head of a G-code file for a Bambu-style ``CONFIG_BLOCK_START``."""
_BLOCK_BYTES = 64 * 1024
_LINE_LIMIT_BYTES = 1024 * 1024
_DUMP_BEGIN_RE = re.compile(rb";\s*(?:\w+_config\s*=\s*begin|CONFIG_BLOCK_START)\s*$", re.I)
_DUMP_END_RE = re.compile(rb";\s*(?:\w+_config\s*=\s*end|CONFIG_BLOCK_END)\s*$", re.I)
_DUMP_LINE_RE = re.compile(rb";\s*([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")
_INI_LINE_RE = re.compile(rb"([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")
DUMP_SIGNATURE_KEYS = ("bed_shape", "printable_area", "gcode_flavor", "nozzle_diameter")
"""A dump must hold one of these to count as a printer config."""
_HOTEND_TARGET_KEYS = ("temperature", "first_layer_temperature", "nozzle_temperature",
                       "nozzle_temperature_initial_layer")
_BED_TARGET_KEYS = ("bed_temperature", "first_layer_bed_temperature", "hot_plate_temp",
                    "hot_plate_temp_initial_layer", "cool_plate_temp", "cool_plate_temp_initial_layer",
                    "eng_plate_temp", "eng_plate_temp_initial_layer", "textured_plate_temp",
                    "textured_plate_temp_initial_layer")


@dataclass
class _Dump:
    """Slicer config entries: key → (value, byte offset of its line in the file)."""

    path: Path
    entries: dict[str, tuple[str, int]]

    def line_of(self, offset: int) -> int:
        """1-based line number of a byte offset (counted only when an error needs it)."""
        count = 0
        with self.path.open("rb") as fh:
            remaining = offset
            while remaining > 0:
                chunk = fh.read(min(_BLOCK_BYTES * 16, remaining))
                if not chunk:
                    break
                count += chunk.count(b"\n")
                remaining -= len(chunk)
        return count + 1

    def origin(self, key: str) -> str:
        value, offset = self.entries[key]
        return f"{self.path}:{self.line_of(offset)}: {key} = {value}"

    def first_key(self, *keys: str) -> str | None:
        return next((k for k in keys if self.text(k) is not None), None)

    def text(self, key: str) -> str | None:
        entry = self.entries.get(key)
        if entry is None or entry[0].strip() in ("", "nil"):
            return None
        return entry[0].strip()

    def number(self, key: str | None, target: tuple[type, str] | None = None) -> float | None:
        """The first number of a (comma-separated, per extruder or normal/stealth) value."""
        text = self.text(key) if key else None
        if key is None or text is None:
            return None
        value = parse_float(re.split(r"[,;]", text)[0].strip())
        if value is None:
            raise ConfigError(f"{self.origin(key)}: expected a number")
        if target is not None:
            check_field_range(value, target, self.origin(key))
        return value

    def numbers(self, key: str) -> list[float]:
        """Every number of a list value (non-numbers skipped)."""
        text = self.text(key) or ""
        return [v for v in (parse_float(t.strip()) for t in re.split(r"[,;]", text)) if v is not None]


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").strip()


def _lines_backwards(path: Path, max_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line) pairs from the end of the file backwards, reading at most ``max_bytes``."""
    with path.open("rb") as fh:
        pos = fh.seek(0, os.SEEK_END)
        carry = b""
        read = 0
        while pos > 0 and read < max_bytes:
            step = min(_BLOCK_BYTES, pos)
            pos -= step
            fh.seek(pos)
            block = fh.read(step) + carry
            read += step
            parts = block.split(b"\n")
            carry = parts[0]
            offsets = [pos]
            for part in parts[:-1]:
                offsets.append(offsets[-1] + len(part) + 1)
            for index in range(len(parts) - 1, 0, -1):
                yield offsets[index], parts[index]
        if pos == 0 and carry:
            yield 0, carry


def _dump_from_tail(path: Path) -> dict[str, tuple[str, int]]:
    """The trailing run of ``; key = value`` comment lines (PrusaSlicer, Slic3r, SuperSlicer, Orca)."""
    entries: dict[str, tuple[str, int]] = {}
    for offset, raw in _lines_backwards(path, DUMP_TAIL_MAX_BYTES):
        line = raw.strip()
        if not line:
            continue
        if not line.startswith(b";") or _DUMP_BEGIN_RE.match(line):
            break
        match = _DUMP_LINE_RE.match(line)
        if match:
            entries.setdefault(match.group(1).decode(), (_decode(match.group(2)), offset))
    return entries


def _dump_from_head(path: Path) -> dict[str, tuple[str, int]]:
    """A ``CONFIG_BLOCK_START`` … ``END`` block near the head of the file (Bambu Studio)."""
    entries: dict[str, tuple[str, int]] = {}
    inside = False
    read = 0
    line_no = 0
    with path.open("rb") as fh:
        while True:
            offset = fh.tell()
            raw = fh.readline(_LINE_LIMIT_BYTES)
            read += len(raw)
            line_no += 1
            if not raw or read > DUMP_TAIL_MAX_BYTES or (not inside and line_no > DUMP_HEAD_MAX_LINES):
                break
            line = raw.strip()
            if not inside:
                inside = bool(_DUMP_BEGIN_RE.match(line))
                continue
            if _DUMP_END_RE.match(line) or (line and not line.startswith(b";")):
                break
            match = _DUMP_LINE_RE.match(line)
            if match:
                entries[match.group(1).decode()] = (_decode(match.group(2)), offset)
    return entries


def _dump_from_ini(path: Path) -> dict[str, tuple[str, int]]:
    entries: dict[str, tuple[str, int]] = {}
    offset = 0
    for line_no, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        line = raw.strip()
        start, offset = offset, offset + len(raw) + 1
        if not line or line.startswith((b"#", b";")):
            continue
        if line.startswith(b"["):
            raise ConfigError(f"{path}:{line_no}: {_decode(line)}: a config bundle with sections is not "
                              "supported; export one printer's config (File > Export > Export Config)")
        match = _INI_LINE_RE.match(line)
        if not match:
            raise ConfigError(f"{path}:{line_no}: cannot read {_decode(line)!r}: expected 'key = value'")
        entries[match.group(1).decode()] = (_decode(match.group(2)), start)
    return entries


def _read_dump(path: Path) -> _Dump:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    if path.suffix.lower() == ".ini":
        entries = _dump_from_ini(path)
        if not any(k in entries for k in DUMP_SIGNATURE_KEYS):
            raise ConfigError(f"{path}: not a slicer printer config: none of "
                              f"{', '.join(DUMP_SIGNATURE_KEYS)} is set")
        return _Dump(path, entries)
    entries = _dump_from_tail(path)
    if not any(k in entries for k in DUMP_SIGNATURE_KEYS):
        entries = _dump_from_head(path)
    if not any(k in entries for k in DUMP_SIGNATURE_KEYS):
        raise ConfigError(
            f"{path}: no slicer config found: looked for '; key = value' comment lines holding one of "
            f"{', '.join(DUMP_SIGNATURE_KEYS)} at the end of the file ('; prusaslicer_config = begin' … "
            f"or trailing lines) and in a '; CONFIG_BLOCK_START' block in its first {DUMP_HEAD_MAX_LINES} "
            "lines")
    return _Dump(path, entries)


def printer_from_prusaslicer(path: str | os.PathLike[str]) -> PrinterProfile:
    """A profile from a PrusaSlicer-family ``.ini`` or the config dump inside a sliced G-code file.

    The bed comes from ``bed_shape`` (``printable_area`` in Orca/Bambu), Z from ``max_print_height``
    (``printable_height``); ``gcode_flavor = klipper`` gives a Klipper printer, every other flavour Marlin.
    Machine limits fill both planners' fields (Klipper: ``max_velocity`` = fastest of X/Y feed rates,
    ``max_accel`` = extruding acceleration). Lists (per extruder, or normal/stealth) give their first
    value. The heaters' ``max_temp_c`` is raised, if needed, to the highest target the config itself uses.
    """
    path = Path(path)
    dump = _read_dump(path)
    P = PrinterProfile
    defaults = PrinterProfile()
    origins: dict[str, str] = {}
    data: dict[str, Any] = {"name": path.stem}
    model = dump.text("printer_model") or dump.text("printer_settings_id")
    data["description"] = f"imported from slicer config in {path.name}" + (f" ({model})" if model else "")

    flavor = (dump.text("gcode_flavor") or "marlin").lower()
    data["firmware"] = "klipper" if flavor == "klipper" else "marlin"
    if (dump.text("printer_structure") or "").lower() == "corexy":
        data["kinematics"] = "corexy"

    shape_key = dump.first_key("bed_shape", "printable_area")
    lows, highs = list(defaults.position_min_mm), list(defaults.position_max_mm)
    if shape_key is not None:
        xs, ys = _bed_points(dump, shape_key)
        lows[:2], highs[:2] = [min(xs), min(ys)], [max(xs), max(ys)]
        origins["position_"] = shape_key
    height = dump.number(dump.first_key("max_print_height", "printable_height"))
    if height is not None and height > 0:
        highs[2] = height
    data.update(position_min_mm=lows, position_max_mm=highs, position_endstop_mm=list(lows))

    for kind, field_name in (("feedrate", "max_feedrate_mm_s"), ("acceleration", "max_axis_accel_mm_s2"),
                             ("jerk", "jerk_mm_s")):
        values = list(getattr(defaults, field_name))
        for index, axis in enumerate("xyze"):
            key = dump.first_key(f"machine_max_{kind}_{axis}",
                                 *([f"machine_max_speed_{axis}"] if kind == "feedrate" else []))
            value = dump.number(key, (P, field_name)) if key else None
            if value is not None:
                values[index] = value
        data[field_name] = values
    feed = [dump.number(dump.first_key(f"machine_max_feedrate_{a}", f"machine_max_speed_{a}"),
                        (P, "max_velocity_mm_s")) for a in "xy"]
    if any(v is not None for v in feed):
        data["max_velocity_mm_s"] = max(v for v in feed if v is not None)
    z_feed_key = dump.first_key("machine_max_feedrate_z", "machine_max_speed_z")
    if z_feed_key is not None:
        data["max_z_velocity_mm_s"] = data["max_feedrate_mm_s"][2]
        origins["max_z_velocity_mm_s"] = z_feed_key
    if dump.text("machine_max_acceleration_z") is not None:
        data["max_z_accel_mm_s2"] = data["max_axis_accel_mm_s2"][2]
        origins["max_z_accel_mm_s2"] = "machine_max_acceleration_z"
    extruding = dump.number("machine_max_acceleration_extruding", (P, "print_accel_mm_s2"))
    x_accel = dump.number("machine_max_acceleration_x", (P, "max_accel_mm_s2"))
    accel = extruding if extruding is not None else x_accel
    if accel is not None:
        data["max_accel_mm_s2"] = accel
        data["print_accel_mm_s2"] = accel
    retracting = dump.number("machine_max_acceleration_retracting", (P, "retract_accel_mm_s2"))
    if retracting is not None:
        data["retract_accel_mm_s2"] = retracting
    travel = dump.number("machine_max_acceleration_travel", (P, "travel_accel_mm_s2"))
    if travel is not None or accel is not None:
        data["travel_accel_mm_s2"] = travel if travel is not None else accel  # Marlin 1: travel = print

    nozzle = dump.number("nozzle_diameter", (P, "nozzle_diameter_mm"))
    if nozzle is not None:
        data["nozzle_diameter_mm"] = nozzle
    filament = dump.number("filament_diameter", (P, "filament_diameter_mm"))
    if filament is not None:
        data["filament_diameter_mm"] = filament
    flows = [v for v in (dump.number("max_volumetric_speed"), dump.number("filament_max_volumetric_speed"))
             if v is not None and v > 0]
    if flows:
        data["max_volumetric_flow_mm3_s"] = min(flows)  # the slicer keeps the flow under both limits
        origins["max_volumetric_flow_mm3_s"] = (
            "filament_max_volumetric_speed" if min(flows) == dump.number("filament_max_volumetric_speed")
            else "max_volumetric_speed")

    hotend, bed = to_dict(defaults.hotend), to_dict(defaults.bed)
    for heater, keys, name in ((hotend, _HOTEND_TARGET_KEYS, "hotend"), (bed, _BED_TARGET_KEYS, "bed")):
        targets = [(v, k) for k in keys for v in dump.numbers(k)]
        if targets:
            highest, key = max(targets)
            if highest > heater["max_temp_c"]:
                heater["max_temp_c"] = highest
                origins[f"{name}.max_temp_c"] = key
    data["hotend"], data["bed"] = hotend, bed
    return build_profile(data, str(path), origins, dump.origin)


def _bed_points(dump: _Dump, key: str) -> tuple[list[float], list[float]]:
    """X and Y coordinates of a ``bed_shape``/``printable_area`` polygon (``0x0,220x0,220x220,0x220``)."""
    xs, ys = [], []
    for point in (dump.text(key) or "").split(","):
        x_text, sep, y_text = point.strip().partition("x")
        x, y = parse_float(x_text), parse_float(y_text)
        if not sep or x is None or y is None:
            raise ConfigError(f"{dump.origin(key)}: expected corner points like '0x0,220x0,220x220,0x220'")
        xs.append(x)
        ys.append(y)
    if len(xs) < 3 or min(xs) == max(xs) or min(ys) == max(ys):
        raise ConfigError(f"{dump.origin(key)}: the bed polygon has no area")
    return xs, ys
