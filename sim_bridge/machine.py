"""What a simulated firmware remembers between commands, and what one interpreted chunk of program is."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from sim_bridge.limits import PlannerSettings, default_settings
from sim_bridge.options import SimOptions
from sim_bridge.profiles import PrinterProfile
from sim_bridge.report import Failure, Notice


@dataclass
class SavedGcodeState:
    """What ``SAVE_GCODE_STATE`` keeps and ``RESTORE_GCODE_STATE`` brings back (as the validator models it)."""

    absolute_xyz: bool
    absolute_e: bool
    offset: list[float]
    """Machine minus program position per axis X, Y, Z, E (G92 and G-code offsets together)."""
    gcode_offset: list[float]
    """The ``SET_GCODE_OFFSET`` part of it, X, Y, Z, E."""
    pos: list[float]
    """Machine position X, Y, Z, E when saved (``MOVE=1`` goes back to X, Y, Z)."""
    feed_mm_s: float
    speed_factor: float
    extrude_factor: float


@dataclass(frozen=True)
class TrackedState:
    """The machine after one line, as both the interpreter and the validator track it (for comparing them)."""

    line: int
    position_mm: tuple[float, float, float]
    """Toolhead X, Y, Z in machine coordinates."""
    homed: tuple[bool, bool, bool]
    hotend_target_c: float
    bed_target_c: float


@dataclass
class MachineState:
    """What the firmware remembers between commands (and between chunks of a session)."""

    pos: list[float]
    """Toolhead position X, Y, Z (machine coordinates) and total filament E."""
    gpos: list[float]
    """Position as the program sees it (after G92 and G-code offsets), X Y Z E."""
    gcode_offset: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    """``SET_GCODE_OFFSET`` in force, X Y Z E (kept by homing, unlike G92's)."""
    saved: dict[str, SavedGcodeState] = field(default_factory=dict)
    """``SAVE_GCODE_STATE`` states by name (upper case)."""
    homed: list[bool] = field(default_factory=lambda: [False, False, False])
    absolute_xyz: bool = True
    absolute_e: bool = True
    units_mm: float = 1.0
    feed_mm_s: float = 25.0
    speed_factor: float = 1.0
    extrude_factor: float = 1.0
    hotend_target_c: float = 0.0
    bed_target_c: float = 0.0
    fan: float = 0.0
    settings: PlannerSettings | None = None
    layer: int = -1
    layer_z: float = -1.0
    layer_marker_pending: bool = False
    layer_marker_mode: bool = False
    fw_retracted: bool = False
    tool: int = 0
    e_max: float = 0.0
    motors_off: bool = False


@dataclass
class Program:
    """A chunk of interpreted program: moves as arrays, timeline events, errors and notices."""

    line: np.ndarray
    xyz: np.ndarray
    """Move end positions, shape (n, 3)."""
    starts: np.ndarray
    """Move start positions, shape (n, 3) (homing between two moves breaks the chain)."""
    de: np.ndarray
    """Filament delta of each move (mm, after M221)."""
    feed: np.ndarray
    flags: np.ndarray
    settings_id: np.ndarray
    settings_table: np.ndarray
    layer: np.ndarray
    events: list[tuple[int, int, float, float, int]]
    """(move index, kind, value, value2, line): applied before that move."""
    fatal: Failure | None
    notices: list[Notice]
    lines: int
    commands: int
    layer_z: dict[int, float]
    layer_first_line: dict[int, int]
    ends_with_stop: bool = False
    """The chunk's motion ends in a forced flush (G4, M400, G28, M84)."""


def new_state(profile: PrinterProfile, options: SimOptions) -> MachineState:
    """State at power-on: unhomed, cold, toolhead believed at ``options.start_position_mm``."""
    start = list(options.start_position_mm)
    return MachineState(pos=[*start, 0.0], gpos=[*start, 0.0], settings=default_settings(profile))


def gcode_offset_after(current_mm: Sequence[float], read: Callable[[str], float | None]) -> list[float]:
    """The G-code offsets (X, Y, Z, E) after Klipper's ``SET_GCODE_OFFSET``: an axis is set by its letter
    (``Z=0.1``) or moved by its ``_ADJUST`` (``Z_ADJUST=-0.02``); an axis named by neither keeps its offset.
    ``read`` gives a parameter's value (None when absent). The interpreter and the validator both use it.

    >>> gcode_offset_after([0.0, 0.0, 0.1, 0.0], {"Z_ADJUST": -0.05, "X": 1.0}.get)
    [1.0, 0.0, 0.05, 0.0]
    """
    new = list(current_mm)
    for i, letter in enumerate("XYZE"):
        absolute, adjust = read(letter), read(f"{letter}_ADJUST")
        if absolute is not None:
            new[i] = absolute
        elif adjust is not None:
            new[i] = current_mm[i] + adjust
    return new
