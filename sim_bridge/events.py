"""The interpreter's output vocabulary: timeline event kinds and move flags (shared with the simulator,
its plots and the environments)."""

from __future__ import annotations

# Event kinds on the timeline (applied before the move with the event's index).
EV_HOTEND_TARGET = 0
EV_BED_TARGET = 1
EV_WAIT_HOTEND = 2
EV_WAIT_BED = 3
EV_DWELL = 4
EV_HOMING = 5
EV_FAN = 6
EV_MACRO = 7
EV_WAIT_HOTEND_BOTH = 8
"""Marlin ``M109 R``: wait for heating or cooling."""

# Move flags.
F_EXTRUDE = 1
"""Filament moves forward while the toolhead moves in XY or Z."""
F_STOP_BEFORE = 2
"""The planner must come to rest before this move (dwell, homing, wait, end of a chunk)."""
F_KINEMATIC = 4
"""The toolhead moves (not an extrude-only move)."""
