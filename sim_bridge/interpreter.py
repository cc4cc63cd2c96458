"""The G-code interpreter: commands in, a move list and a timeline of events out.

It keeps the machine state a firmware keeps (coordinate modes, G92 offsets, homing, targets, speed and
extrusion factors, velocity limits) and checks what the firmware checks before a move is queued, with
Klipper's wording: ``Move out of range``, ``Must home axis first``, ``Move exceeds maximum extrusion``,
``Extrude only move too long``, ``Requested temperature (…) out of range (…)``; an unknown command is a
notice, as in Klipper. Checks that depend on time (cold extrusion, melt capacity, heaters) happen later on
the planned timeline (:mod:`sim_bridge.simulator`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from sim_bridge import failures as fail
from sim_bridge.commands import COMMANDS, IGNORED, KLIPPER, MARLIN
from sim_bridge.config import check_ranges, ranged
from sim_bridge.gcode import _WORD_RE, Command, GcodeError, GcodeReader, parse_line
from sim_bridge.layers import is_layer_marker
from sim_bridge.profiles import Material, PrinterProfile
from sim_bridge.report import Failure, Notice, unreadable_failure

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

BATCH_START_S = 0.25
"""Klipper batch mode: motion starts 0.25 s into the print (the planner's start buffer)."""
BATCH_TAIL_S = 0.252
"""Klipper batch mode: time reported after motion that ends in a forced flush (0.25 s + 2 flush delays)."""
BATCH_HOMING_FLUSH_S = 0.010
"""Klipper batch mode: flush bookkeeping per homed axis (0.002 s + 8 kinematic flush delays)."""

@dataclass
class SimOptions:
    """How the simulator models what a profile leaves open (YAML keys map 1:1, see configs/sim-default.yaml)."""

    planner: str = ranged("", choices=("", "klipper", "marlin"))
    """``klipper`` or ``marlin`` corner model; empty: the profile's firmware."""
    klipper_batch_mode: bool = False
    """Model Klipper's batch mode (``klippy.py -i``): heater waits return at once and each homed axis
    travels its full homing distance, as no endstop ever triggers."""
    arc_segment_mm: float = ranged(1.0, 0.01, 50.0)
    """Length of the straight segments an arc (G2/G3) is cut into (Klipper ``resolution``)."""
    firmware_retract_mm: float = ranged(0.8, 0.0, 20.0)
    """Filament length a G10 retracts and a G11 restores."""
    firmware_retract_speed_mm_s: float = ranged(35.0, 0.1, 500.0)
    """Speed of G10/G11 moves."""
    leveling_s: float = ranged(60.0, 0.0, 3600.0)
    """Time a bed-levelling command (G29, BED_MESH_CALIBRATE …) takes."""
    resolution_mm: float = ranged(0.1, 0.01, 5.0)
    """Cell size of the deposition height map."""
    collision_tolerance_mm: float = ranged(0.15, 0.0, 10.0)
    """Material more than this above the nozzle tip counts as a collision (less is smeared by the hot
    nozzle, as when a first layer starts on the end of a purge line)."""
    first_layer_max_gap_mm: float | None = ranged(None, 0.01, 5.0)
    """Largest nozzle-to-bed gap that still adheres; default 1.0 × nozzle diameter (slicers cap the first
    layer height near the nozzle diameter: above it the bead no longer presses onto the bed)."""
    first_layer_min_gap_mm: float = ranged(0.04, 0.0, 1.0)
    """Smallest nozzle-to-bed gap while extruding; below it the nozzle scrapes the bed."""
    support_gap_max_mm: float | None = ranged(None, 0.01, 10.0)
    """Largest gap to the material below a bead that still supports it; default 0.8 × nozzle diameter."""
    under_extrusion_threshold: float = ranged(0.9, 0.0, 1.0)
    """Delivered/commanded flow below which a move counts as under-extruded."""
    thermal_dt_s: float = ranged(0.1, 0.001, 5.0)
    """Time step of the heater models."""
    heater_wait_limit_s: float = ranged(1800.0, 1.0, 86400.0)
    """Longest wait for a temperature before the print fails with a heater timeout."""
    traces: bool = False
    """Record sensor traces (temperatures, fan, flow, position) in the report."""
    trace_interval_s: float = ranged(1.0, 0.001, 3600.0)
    """Sampling interval of the traces."""
    deposition: bool = True
    """Build the height map and check collisions, support and adhesion."""
    start_position_mm: tuple[float, float, float] = ranged((0.0, 0.0, 0.0), -2000.0, 2000.0)
    """Where the firmware believes the toolhead is at power-on (Klipper and Marlin assume 0, 0, 0)."""

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class PlannerSettings:
    """Velocity limits in force for a run of moves (changed by SET_VELOCITY_LIMIT, M201/M203/M204/M205)."""

    max_velocity: float
    max_accel: float
    minimum_cruise_ratio: float
    square_corner_velocity: float
    print_accel: float
    retract_accel: float
    travel_accel: float
    max_feedrate: tuple[float, float, float, float]
    max_axis_accel: tuple[float, float, float, float]
    jerk: tuple[float, float, float, float]

    def row(self) -> tuple[float, ...]:
        return (self.max_velocity, self.max_accel, self.minimum_cruise_ratio, self.square_corner_velocity,
                self.print_accel, self.retract_accel, self.travel_accel, *self.max_feedrate,
                *self.max_axis_accel, *self.jerk)


@dataclass
class MachineState:
    """What the firmware remembers between commands (and between chunks of a session)."""

    pos: list[float]
    """Toolhead position X, Y, Z (machine coordinates) and total filament E."""
    gpos: list[float]
    """Position as the program sees it (after G92 offsets), X Y Z E."""
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


def default_settings(profile: PrinterProfile) -> PlannerSettings:
    """The limits a freshly started printer has."""
    return PlannerSettings(
        profile.max_velocity_mm_s, profile.max_accel_mm_s2, profile.minimum_cruise_ratio,
        profile.square_corner_velocity_mm_s, profile.print_accel_mm_s2, profile.retract_accel_mm_s2,
        profile.travel_accel_mm_s2, tuple(profile.max_feedrate_mm_s), tuple(profile.max_axis_accel_mm_s2),
        tuple(profile.jerk_mm_s))


def new_state(profile: PrinterProfile, options: SimOptions) -> MachineState:
    """State at power-on: unhomed, cold, toolhead believed at ``options.start_position_mm``."""
    start = list(options.start_position_mm)
    return MachineState(pos=[*start, 0.0], gpos=[*start, 0.0], settings=default_settings(profile))


class Interpreter:
    """Turns commands into moves and events on a persistent :class:`MachineState`."""

    def __init__(self, profile: PrinterProfile, material: Material, options: SimOptions,
                 state: MachineState) -> None:
        self.profile = profile
        self.material = material
        self.options = options
        self.state = state
        self.klipper = (options.planner or profile.firmware) == "klipper"
        self.max_e_ratio = profile.max_cross_section_mm2 / profile.filament_area_mm2
        self.lo = list(profile.position_min_mm)
        self.hi = list(profile.position_max_mm)
        self._handler_table = self._handlers()

    # -- the main loop ---------------------------------------------------------------------------------
    def run(self, commands: Iterable[Command] | GcodeReader) -> Program:
        """Interpret ``commands`` (or a reader's lines, taking a fast path for slicers' plain G0/G1 lines)."""
        st = self.state
        self._moves: list[tuple] = []
        self._events: list[tuple[int, int, float, float, int]] = []
        self._notices: list[Notice] = []
        self._table: list[tuple[float, ...]] = [st.settings.row()]
        self._sid_now = 0
        self._stop_pending = True
        self._flushed_after_last_move = False
        self._layer_z: dict[int, float] = {}
        self._layer_first_line: dict[int, int] = {}
        fatal: Failure | None = None
        count = 0
        last_line = 0
        try:
            if isinstance(commands, GcodeReader):
                count, last_line = self._run_reader(commands)
            else:
                for cmd in commands:
                    count += 1
                    last_line = cmd.line
                    self.execute(cmd)
        except _Fatal as exc:
            fatal = exc.failure
            last_line = exc.failure.line
        except GcodeError as exc:
            # The firmware runs the lines before one it cannot read, then stops.
            fatal = unreadable_failure(exc, self.state.layer)
            last_line = exc.line
        moves = np.array(self._moves, dtype=np.float64).reshape(-1, 12)
        return Program(
            line=moves[:, 0].astype(np.int64), xyz=np.ascontiguousarray(moves[:, 4:7]),
            starts=np.ascontiguousarray(moves[:, 1:4]), de=np.ascontiguousarray(moves[:, 7]),
            feed=np.ascontiguousarray(moves[:, 8]), flags=moves[:, 9].astype(np.int64),
            settings_id=moves[:, 10].astype(np.int64), settings_table=np.asarray(self._table, dtype=np.float64),
            layer=moves[:, 11].astype(np.int64),
            events=self._events, fatal=fatal, notices=self._notices, lines=last_line, commands=count,
            layer_z=self._layer_z, layer_first_line=self._layer_first_line,
            ends_with_stop=self._stop_pending and self._flushed_after_last_move)

    def _run_reader(self, reader: GcodeReader) -> tuple[int, int]:
        name, warnings = reader.name, reader.warnings
        words_re = _WORD_RE
        move = self._move
        count = 0
        line_no = 0
        for line_no, text in reader.numbered_lines():
            head = text[:3]
            if (head == "G1 " or head == "G0 ") and "(" not in text and "*" not in text:
                semi = text.find(";")
                body = text[3:semi] if semi >= 0 else text[3:]
                if "=" not in body and body.upper() == body:
                    count += 1
                    move({k: float(v) if v else math.nan for k, v in words_re.findall(body)}, line_no)
                    continue
            cmd = parse_line(text, line_no, name, warnings, True)
            if cmd is not None:
                count += 1
                self.execute(cmd)
        return count, line_no

    def execute(self, cmd: Command) -> None:
        """Apply one command to the machine state (moves are queued, events added to the timeline)."""
        code = cmd.code
        if code == "G1" or code == "G0":
            self._move(cmd.params, cmd.line)
        elif not code:
            self.observe_comment(cmd.comment)
        else:
            handler = self._handler_table.get(code)
            if handler is not None:
                handler(cmd)
            else:
                self._other(cmd)

    def observe_comment(self, comment: str) -> None:
        """Slicer layer markers (:mod:`sim_bridge.layers`) switch layer counting to the markers."""
        if is_layer_marker(comment):
            st = self.state
            if not st.layer_marker_mode and st.layer >= 0:
                # Extrusion before the slicer's first layer is the start sequence (purge lines), not a layer.
                self._moves[:] = [(*m[:11], -1) if m[11] >= 0 else m for m in self._moves]
                self._layer_z.clear()
                self._layer_first_line.clear()
                st.layer = -1
                st.layer_z = -1.0
            st.layer_marker_mode = True
            st.layer_marker_pending = True

    def _handlers(self) -> dict[str, Callable[[Command], None]]:
        """Code → bound method, from the command table (a command this firmware lacks is unknown)."""
        firmware = KLIPPER if self.klipper else MARLIN
        return {code: getattr(self, spec.effect) if firmware in spec.firmware else self._unknown
                for code, spec in COMMANDS.items() if spec.effect}

    # -- helpers ---------------------------------------------------------------------------------------
    def _fail(self, mode: str, message: str, line: int) -> None:
        raise _Fatal(Failure(mode, message, line, self.state.layer, fatal=True))

    def _notice(self, kind: str, message: str, line: int) -> None:
        self._notices.append(Notice(kind, message, line))

    def _event(self, kind: int, value: float, line: int, value2: float = 0.0) -> None:
        self._events.append((len(self._moves), kind, value, value2, line))

    def _settings_changed(self) -> None:
        self._table.append(self.state.settings.row())
        self._sid_now = len(self._table) - 1

    def _position_text(self, pos: list[float]) -> str:
        return f"{pos[0]:.3f} {pos[1]:.3f} {pos[2]:.3f} [{pos[3]:.3f}]"

    # -- motion ----------------------------------------------------------------------------------------
    def _move(self, p: dict[str, float], line: int) -> None:
        st = self.state
        u = st.units_mm
        f = p.get("F")
        if f is not None and f == f:
            if f <= 0.0:
                self._fail(fail.INVALID_COMMAND, f"Invalid speed in 'G1 F{f:g}'", line)
            st.feed_mm_s = f * u / 60.0
        gx, gy, gz, ge = st.gpos
        target = [gx, gy, gz]
        moved = False
        for i, letter in enumerate("XYZ"):
            v = p.get(letter)
            if v is not None and v == v:
                target[i] = v * u if st.absolute_xyz else target[i] + v * u
                moved = True
        e = p.get("E")
        if e is None:
            e = p.get("A")
            if e is None:
                e = p.get("B")
        de = 0.0
        if e is not None and e == e:
            e *= u
            if st.absolute_e and st.absolute_xyz:
                de = e - ge
                ge = e
            else:
                de = e
                ge += e
        if not moved and de == 0.0:
            st.gpos[3] = ge
            return
        dx = target[0] - gx
        dy = target[1] - gy
        dz = target[2] - gz
        st.gpos = [target[0], target[1], target[2], ge]
        self._queue_move(dx, dy, dz, de * st.extrude_factor, st.feed_mm_s * st.speed_factor, line)

    def _queue_move(self, dx: float, dy: float, dz: float, de: float, speed: float, line: int) -> None:
        st = self.state
        pos = st.pos
        x0, y0, z0 = pos[0], pos[1], pos[2]
        nx, ny, nz = x0 + dx, y0 + dy, z0 + dz
        ne = pos[3] + de
        kinematic = dx * dx + dy * dy + dz * dz >= 1e-18
        if kinematic:
            lo, hi, homed = self.lo, self.hi, st.homed
            if ((dx != 0.0 and not (homed[0] and lo[0] - 1e-9 <= nx <= hi[0] + 1e-9))
                    or (dy != 0.0 and not (homed[1] and lo[1] - 1e-9 <= ny <= hi[1] + 1e-9))
                    or (dz != 0.0 and not (homed[2] and lo[2] - 1e-9 <= nz <= hi[2] + 1e-9))):
                self._check_range(nx, ny, nz, ne, dx, dy, dz, line)
        if de != 0.0:
            self._check_extrusion(de, dx, dy, dz, kinematic, line)
        flags = 0
        if kinematic:
            flags = F_KINEMATIC
            if de > 0.0:
                flags = F_KINEMATIC | F_EXTRUDE
                if self._new_layer(nz):
                    self._start_layer(nz, line)
        if self._stop_pending:
            flags |= F_STOP_BEFORE
            self._stop_pending = False
        self._flushed_after_last_move = False
        self._moves.append((line, x0, y0, z0, nx, ny, nz, de, speed, flags, self._sid_now, st.layer))
        pos[0], pos[1], pos[2], pos[3] = nx, ny, nz, ne
        if ne > st.e_max:
            st.e_max = ne

    def _check_range(self, nx: float, ny: float, nz: float, ne: float, dx: float, dy: float, dz: float,
                     line: int) -> None:
        """Klipper's endstop check for the axes that move: unhomed first, then out of range."""
        st = self.state
        for i, v, d in ((0, nx, dx), (1, ny, dy), (2, nz, dz)):
            if d == 0.0:
                continue
            if not st.homed[i]:
                if self.klipper:
                    self._fail(fail.MUST_HOME_FIRST, "Must home axis first: "
                               + self._position_text([nx, ny, nz, ne]), line)
                continue
            if v < self.lo[i] - 1e-9 or v > self.hi[i] + 1e-9:
                self._fail(fail.MOVE_OUT_OF_RANGE, "Move out of range: "
                           + self._position_text([nx, ny, nz, ne]), line)

    def _check_extrusion(self, de: float, dx: float, dy: float, dz: float, kinematic: bool, line: int) -> None:
        """Klipper's extruder checks: extrude-only distance and largest cross-section."""
        move_d = math.sqrt(dx * dx + dy * dy + dz * dz) if kinematic else abs(de)
        ratio = de / move_d
        if not kinematic or ratio < 0.0:
            if abs(de) > self.profile.max_extrude_only_distance_mm:
                self._fail(fail.EXTRUDE_ONLY_TOO_LONG,
                           f"Extrude only move too long ({de:.3f}mm vs "
                           f"{self.profile.max_extrude_only_distance_mm:.3f}mm)", line)
        elif ratio > self.max_e_ratio and de > self.profile.nozzle_diameter_mm * self.max_e_ratio:
            area = ratio * self.profile.filament_area_mm2
            self._fail(fail.EXTRUSION_TOO_LARGE,
                       f"Move exceeds maximum extrusion ({area:.3f}mm^2 vs "
                       f"{self.max_e_ratio * self.profile.filament_area_mm2:.3f}mm^2)", line)

    def _new_layer(self, z: float) -> bool:
        st = self.state
        return st.layer_marker_pending if st.layer_marker_mode else z > st.layer_z + 0.005

    def _start_layer(self, z: float, line: int) -> None:
        st = self.state
        st.layer += 1
        st.layer_z = z
        st.layer_marker_pending = False
        self._layer_z[st.layer] = z
        self._layer_first_line[st.layer] = line

    def _arc(self, cmd: Command) -> None:
        st = self.state
        p = cmd.params
        u = st.units_mm
        f = p.get("F")
        if f is not None and f == f and f > 0.0:
            st.feed_mm_s = f * u / 60.0
        gx, gy, gz, ge = st.gpos
        tx, ty, tz = gx, gy, gz
        for letter, i in (("X", 0), ("Y", 1), ("Z", 2)):
            v = p.get(letter)
            if v is not None and v == v:
                val = v * u if st.absolute_xyz else (gx, gy, gz)[i] + v * u
                if i == 0:
                    tx = val
                elif i == 1:
                    ty = val
                else:
                    tz = val
        e = p.get("E")
        de_total = 0.0
        if e is not None and e == e:
            de_total = e * u - ge if (st.absolute_e and st.absolute_xyz) else e * u
        clockwise = cmd.code == "G2"
        i_off, j_off, r = p.get("I"), p.get("J"), p.get("R")
        if (i_off is None or i_off != i_off) and (j_off is None or j_off != j_off):
            if r is None or r != r:
                self._fail(fail.INVALID_COMMAND, f"{cmd.code} needs I/J or R", cmd.line)
            cx, cy = arc_center_from_radius(gx, gy, tx, ty, r * u, clockwise)
        else:
            cx = gx + (0.0 if i_off is None or i_off != i_off else i_off * u)
            cy = gy + (0.0 if j_off is None or j_off != j_off else j_off * u)
        a0 = math.atan2(gy - cy, gx - cx)
        a1 = math.atan2(ty - cy, tx - cx)
        radius = math.hypot(gx - cx, gy - cy)
        sweep = a1 - a0
        if clockwise:
            if sweep >= -1e-12:
                sweep -= 2.0 * math.pi
        elif sweep <= 1e-12:
            sweep += 2.0 * math.pi
        length = math.hypot(abs(sweep) * radius, tz - gz)
        segments = max(1, int(length / self.options.arc_segment_mm))
        speed = st.feed_mm_s * st.speed_factor
        px, py, pz = gx, gy, gz
        for k in range(1, segments + 1):
            frac = k / segments
            if k == segments:
                nx, ny, nz = tx, ty, tz
            else:
                ang = a0 + sweep * frac
                nx, ny, nz = cx + radius * math.cos(ang), cy + radius * math.sin(ang), gz + (tz - gz) * frac
            self._queue_move(nx - px, ny - py, nz - pz, de_total / segments * st.extrude_factor, speed, cmd.line)
            px, py, pz = nx, ny, nz
        st.gpos = [tx, ty, tz, ge + de_total]

    def _g10(self, cmd: Command) -> None:
        if not self.state.fw_retracted:
            self.state.fw_retracted = True
            self._queue_move(0.0, 0.0, 0.0, -self.options.firmware_retract_mm,
                             self.options.firmware_retract_speed_mm_s, cmd.line)

    def _g11(self, cmd: Command) -> None:
        if self.state.fw_retracted:
            self.state.fw_retracted = False
            self._queue_move(0.0, 0.0, 0.0, self.options.firmware_retract_mm,
                             self.options.firmware_retract_speed_mm_s, cmd.line)

    def _g4(self, cmd: Command) -> None:
        ms = cmd.get("P")
        if self.klipper:
            seconds = (ms or 0.0) / 1000.0  # Klipper's G4 reads only P (milliseconds)
        else:
            seconds = ms / 1000.0 if ms is not None else (cmd.get("S", 0.0) or 0.0)
        if seconds < 0.0:
            self._fail(fail.INVALID_COMMAND, f"G4 with a negative time ({seconds:g} s)", cmd.line)
        self._flush()
        self._event(EV_DWELL, seconds, cmd.line)

    def _flush(self) -> None:
        """A forced stop: the planner empties its queue before the next move."""
        self._stop_pending = True
        self._flushed_after_last_move = True

    def _m400(self, cmd: Command) -> None:
        self._flush()

    def _g20(self, cmd: Command) -> None:
        self.state.units_mm = 25.4

    def _g21(self, cmd: Command) -> None:
        self.state.units_mm = 1.0

    def _g90(self, cmd: Command) -> None:
        self.state.absolute_xyz = True

    def _g91(self, cmd: Command) -> None:
        self.state.absolute_xyz = False

    def _m82(self, cmd: Command) -> None:
        self.state.absolute_e = True

    def _m83(self, cmd: Command) -> None:
        self.state.absolute_e = False

    def _g92(self, cmd: Command) -> None:
        st = self.state
        given = False
        for i, letter in enumerate("XYZE"):
            v = cmd.get(letter)
            if v is not None:
                st.gpos[i] = v * st.units_mm
                given = True
        if not given:
            st.gpos = [0.0, 0.0, 0.0, 0.0]

    def _g28(self, cmd: Command) -> None:
        axes = [i for i, letter in enumerate("XYZ") if letter in cmd.params]
        if not axes:
            axes = [0, 1, 2]
        self.home(axes, cmd.line)

    def home(self, axes: list[int], line: int) -> None:
        """Home ``axes`` (0=X, 1=Y, 2=Z): time on the timeline, position set to the endstops."""
        st = self.state
        prof = self.profile
        total = 0.0
        for i in axes:
            speed = prof.homing_speed_mm_s[i]
            accel = prof.max_z_accel_mm_s2 if i == 2 else prof.max_accel_mm_s2
            endstop = prof.position_endstop_mm[i]
            lo, hi = prof.position_min_mm[i], prof.position_max_mm[i]
            max_dir = endstop >= hi - 1e-9 and endstop > lo
            if self.options.klipper_batch_mode:
                # No endstop triggers: the first homing move runs its whole length (1.5 x the axis range
                # from the far side, as Klipper's homing starts from an assumed position beyond it).
                distance = 1.5 * ((endstop - lo) if max_dir else (hi - endstop))
            elif not st.homed[i]:
                # The real carriage can be anywhere after power-on: assume the middle of the axis.
                distance = abs((lo + hi) / 2.0 - endstop)
            else:
                distance = abs(st.pos[i] - endstop)
            retract = prof.homing_retract_mm
            total += _trapezoid_time(distance, speed, accel)
            if self.options.klipper_batch_mode:
                total += BATCH_HOMING_FLUSH_S
            if retract > 0.0:
                # Back off, then home again at half speed over twice the back-off distance.
                total += _trapezoid_time(retract, speed, accel) + _trapezoid_time(2.0 * retract, speed / 2.0, accel)
            st.pos[i] = endstop
            st.gpos[i] = endstop
            st.homed[i] = True
        st.motors_off = False
        self._flush()
        self._event(EV_HOMING, total, line)

    def _m84(self, cmd: Command) -> None:
        st = self.state
        st.homed = [False, False, False]
        st.motors_off = True
        self._flush()

    # -- heaters and fan ------------------------------------------------------------------------------
    def _check_temp(self, which: str, target: float, line: int) -> None:
        heater = self.profile.hotend if which == "extruder" else self.profile.bed
        if target != 0.0 and (target < heater.min_temp_c or target > heater.max_temp_c):
            self._fail(fail.TEMPERATURE_OUT_OF_RANGE,
                       f"Requested temperature ({target:.1f}) out of range "
                       f"({heater.min_temp_c:.1f}:{heater.max_temp_c:.1f})", line)

    def _set_hotend(self, target: float, line: int, wait: bool, both: bool = False) -> None:
        self._check_temp("extruder", target, line)
        self.state.hotend_target_c = target
        self._event(EV_HOTEND_TARGET, target, line)
        if wait and target > 0.0:
            if not self.options.klipper_batch_mode:
                self._stop_pending = True
            self._event(EV_WAIT_HOTEND_BOTH if both else EV_WAIT_HOTEND, target, line)

    def _set_bed(self, target: float, line: int, wait: bool) -> None:
        self._check_temp("heater_bed", target, line)
        self.state.bed_target_c = target
        self._event(EV_BED_TARGET, target, line)
        if wait and target > 0.0:
            if not self.options.klipper_batch_mode:
                self._stop_pending = True
            self._event(EV_WAIT_BED, target, line)

    def _tool_ok(self, cmd: Command) -> bool:
        tool = cmd.get("T")
        if tool is not None and tool != 0:
            self._notice(fail.UNKNOWN_TOOL, f"T{tool:g}: this printer has one extruder; command ignored", cmd.line)
            return False
        return True

    def _m104(self, cmd: Command) -> None:
        if self._tool_ok(cmd):
            self._set_hotend(cmd.get("S", 0.0) or 0.0, cmd.line, wait=False)

    def _m109(self, cmd: Command) -> None:
        if not self._tool_ok(cmd):
            return
        s, r = cmd.get("S"), cmd.get("R")
        if r is not None and not self.klipper:
            self._set_hotend(r, cmd.line, wait=True, both=True)
        else:
            self._set_hotend(s if s is not None else (r or 0.0), cmd.line, wait=True)

    def _m140(self, cmd: Command) -> None:
        self._set_bed(cmd.get("S", 0.0) or 0.0, cmd.line, wait=False)

    def _m190(self, cmd: Command) -> None:
        s, r = cmd.get("S"), cmd.get("R")
        self._set_bed(s if s is not None else (r or 0.0), cmd.line, wait=True)

    def _m106(self, cmd: Command) -> None:
        if (cmd.get("P", 0.0) or 0.0) != 0.0:
            return
        value = cmd.get("S", 255.0)
        self.state.fan = min(1.0, max(0.0, (255.0 if value is None else value) / 255.0))
        self._event(EV_FAN, self.state.fan * self.profile.part_fan_max_rpm_fraction, cmd.line)

    def _m107(self, cmd: Command) -> None:
        if (cmd.get("P", 0.0) or 0.0) != 0.0:
            return
        self.state.fan = 0.0
        self._event(EV_FAN, 0.0, cmd.line)

    def _set_fan_speed(self, cmd: Command) -> None:
        try:
            speed = float(cmd.args.get("SPEED", "0"))
        except ValueError:
            self._fail(fail.INVALID_COMMAND, f"SET_FAN_SPEED SPEED={cmd.args.get('SPEED')!r}: not a number", cmd.line)
        self.state.fan = min(1.0, max(0.0, speed))
        self._event(EV_FAN, self.state.fan * self.profile.part_fan_max_rpm_fraction, cmd.line)

    def _arg_float(self, cmd: Command, key: str, default: float | None = None) -> float | None:
        text = cmd.args.get(key)
        if text is None:
            return default
        try:
            return float(text)
        except ValueError:
            self._fail(fail.INVALID_COMMAND, f"{cmd.code} {key}={text!r}: not a number", cmd.line)
        return None

    def _set_heater_temperature(self, cmd: Command) -> None:
        heater = cmd.args.get("HEATER", "").lower()
        target = self._arg_float(cmd, "TARGET", 0.0) or 0.0
        if heater == "extruder":
            self._set_hotend(target, cmd.line, wait=False)
        elif heater == "heater_bed":
            self._set_bed(target, cmd.line, wait=False)
        else:
            self._fail(fail.INVALID_COMMAND, f"SET_HEATER_TEMPERATURE: unknown heater {heater!r} "
                       "(this printer has 'extruder' and 'heater_bed')", cmd.line)

    def _temperature_wait(self, cmd: Command) -> None:
        sensor = cmd.args.get("SENSOR", "").lower()
        minimum = self._arg_float(cmd, "MINIMUM")
        if minimum is None:
            return
        if not self.options.klipper_batch_mode:
            self._stop_pending = True
        if sensor == "extruder":
            self._event(EV_WAIT_HOTEND, minimum, cmd.line)
        elif sensor == "heater_bed":
            self._event(EV_WAIT_BED, minimum, cmd.line)

    def _turn_off_heaters(self, cmd: Command) -> None:
        self._set_hotend(0.0, cmd.line, wait=False)
        self._set_bed(0.0, cmd.line, wait=False)

    # -- limits and factors ---------------------------------------------------------------------------
    def _set_velocity_limit(self, cmd: Command) -> None:
        s = self.state.settings
        velocity = self._arg_float(cmd, "VELOCITY")
        accel = self._arg_float(cmd, "ACCEL")
        scv = self._arg_float(cmd, "SQUARE_CORNER_VELOCITY")
        mcr = self._arg_float(cmd, "MINIMUM_CRUISE_RATIO")
        a2d = self._arg_float(cmd, "ACCEL_TO_DECEL")
        for key, value in (("VELOCITY", velocity), ("ACCEL", accel)):
            if value is not None and value <= 0.0:
                self._fail(fail.INVALID_COMMAND, f"SET_VELOCITY_LIMIT {key}={value:g}: must be above 0", cmd.line)
        if velocity is not None:
            s.max_velocity = velocity
        if accel is not None:
            s.max_accel = accel
        if scv is not None:
            s.square_corner_velocity = max(0.0, scv)
        if mcr is not None:
            s.minimum_cruise_ratio = min(0.99, max(0.0, mcr))
        elif a2d is not None:
            s.minimum_cruise_ratio = min(0.99, max(0.0, 1.0 - min(a2d, s.max_accel) / s.max_accel))
        self._settings_changed()

    def _m204(self, cmd: Command) -> None:
        s = self.state.settings
        sv, pv, tv, rv = cmd.get("S"), cmd.get("P"), cmd.get("T"), cmd.get("R")
        if self.klipper:
            if sv is not None:
                accel = sv
            elif pv is not None and tv is not None:
                accel = min(pv, tv)
            else:
                self._notice(fail.INVALID_M204, f"Invalid M204 command \"{cmd.code} {cmd.text}\"", cmd.line)
                return
            if accel <= 0.0:
                self._notice(fail.INVALID_M204, f"Invalid M204 command \"{cmd.code} {cmd.text}\"", cmd.line)
                return
            s.max_accel = accel
        else:
            if sv is not None:
                s.print_accel = s.travel_accel = sv
            if pv is not None:
                s.print_accel = pv
            if rv is not None:
                s.retract_accel = rv
            if tv is not None:
                s.travel_accel = tv
        self._settings_changed()

    def _axis_values(self, cmd: Command, current: tuple[float, ...]) -> tuple[float, float, float, float]:
        values = list(current)
        for i, letter in enumerate("XYZE"):
            v = cmd.get(letter)
            if v is not None and v > 0.0:
                values[i] = v
        return (values[0], values[1], values[2], values[3])

    def _m201(self, cmd: Command) -> None:
        s = self.state.settings
        s.max_axis_accel = self._axis_values(cmd, s.max_axis_accel)
        self._settings_changed()

    def _m203(self, cmd: Command) -> None:
        s = self.state.settings
        s.max_feedrate = self._axis_values(cmd, s.max_feedrate)
        self._settings_changed()

    def _m205(self, cmd: Command) -> None:
        s = self.state.settings
        jerk = list(s.jerk)
        for i, letter in enumerate("XYZE"):
            v = cmd.get(letter)
            if v is not None and v >= 0.0:
                jerk[i] = v
        if cmd.get("X") is not None and cmd.get("Y") is None:
            jerk[1] = jerk[0]
        s.jerk = (jerk[0], jerk[1], jerk[2], jerk[3])
        self._settings_changed()

    def _m220(self, cmd: Command) -> None:
        value = cmd.get("S")
        if value is not None:
            if value <= 0.0:
                self._fail(fail.INVALID_COMMAND, f"M220 S{value:g}: speed factor must be above 0", cmd.line)
            self.state.speed_factor = value / 100.0

    def _m221(self, cmd: Command) -> None:
        value = cmd.get("S")
        if value is not None and (cmd.get("T", 0.0) or 0.0) == 0.0:
            if value <= 0.0:
                self._fail(fail.INVALID_COMMAND, f"M221 S{value:g}: extrude factor must be above 0", cmd.line)
            self.state.extrude_factor = value / 100.0

    def _g1(self, cmd: Command) -> None:
        self._move(cmd.params, cmd.line)

    def _t(self, cmd: Command) -> None:
        self.state.tool = 0

    def _leveling(self, cmd: Command) -> None:
        if not all(self.state.homed) and self.klipper:
            self._fail(fail.MUST_HOME_FIRST, f"{cmd.code}: Must home axis first", cmd.line)
        self._flush()
        self._event(EV_MACRO, self.options.leveling_s, cmd.line)

    # -- everything else -------------------------------------------------------------------------------
    def _other(self, cmd: Command) -> None:
        code = cmd.code
        if code.startswith("T") and code[1:].isdigit():
            if int(code[1:]) != 0:
                self._notice(fail.UNKNOWN_TOOL, f"{code}: this printer has one extruder; command ignored", cmd.line)
            return
        macro = self.profile.macro(code)
        if macro is not None:
            self._macro(cmd, macro)
            return
        known = COMMANDS.get(code)
        if known is not None and known.effect == IGNORED:
            return
        self._unknown(cmd)

    def _unknown(self, cmd: Command) -> None:
        self._notice(fail.UNKNOWN_COMMAND, f'Unknown command:"{cmd.code}"', cmd.line)

    def _macro(self, cmd: Command, macro: object) -> None:
        from sim_bridge.profiles import MacroProfile

        assert isinstance(macro, MacroProfile)
        hotend = _first_arg(cmd, macro.hotend_temp_params) or macro.default_hotend_temp_c
        bed = _first_arg(cmd, macro.bed_temp_params) or macro.default_bed_temp_c
        if bed:
            self._set_bed(bed, cmd.line, wait=False)
        if hotend:
            self._set_hotend(hotend, cmd.line, wait=False)
        if macro.homes:
            self.home(["XYZ".index(a) for a in macro.homes], cmd.line)
        if macro.waits_for_temperature:
            if bed:
                self._set_bed(bed, cmd.line, wait=True)
            if hotend:
                self._set_hotend(hotend, cmd.line, wait=True)
        if macro.duration_s:
            self._stop_pending = True
            self._event(EV_MACRO, macro.duration_s, cmd.line)
        if macro.park_position_mm:
            x, y = macro.park_position_mm[:2]
            dx, dy = x - self.state.pos[0], y - self.state.pos[1]
            if all(self.state.homed[:2]):
                self._queue_move(dx, dy, 0.0, 0.0, self.profile.max_velocity_mm_s / 2.0, cmd.line)
                self.state.gpos[0] += dx
                self.state.gpos[1] += dy
        if macro.ends_print:
            self._set_hotend(0.0, cmd.line, wait=False)
            self._set_bed(0.0, cmd.line, wait=False)
            self.state.fan = 0.0
            self._event(EV_FAN, 0.0, cmd.line)
            self._m84(cmd)


class _Fatal(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _trapezoid_time(distance_mm: float, speed_mm_s: float, accel_mm_s2: float) -> float:
    """Time of a lone move from rest to rest (trapezoidal, or triangular when too short to cruise)."""
    if distance_mm <= 0.0:
        return 0.0
    if distance_mm >= speed_mm_s * speed_mm_s / accel_mm_s2:
        return distance_mm / speed_mm_s + speed_mm_s / accel_mm_s2
    return 2.0 * math.sqrt(distance_mm / accel_mm_s2)


def _first_arg(cmd: Command, names: list[str]) -> float:
    for name in names:
        text = cmd.args.get(name.upper())
        if text is not None:
            try:
                return float(text)
            except ValueError:
                continue
    return 0.0


def arc_center_from_radius(x0: float, y0: float, x1: float, y1: float, r: float, clockwise: bool
                        ) -> tuple[float, float]:
    """Arc centre from the R form; a negative R asks for the arc over 180° (RS274NGC)."""
    mx, my = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    dx, dy = x1 - x0, y1 - y0
    chord = math.hypot(dx, dy)
    if chord == 0.0:
        return x0, y0
    half = chord / 2.0
    h = math.sqrt(max(0.0, r * r - half * half))
    sign = -1.0 if clockwise else 1.0
    if r < 0.0:
        sign = -sign
    return mx - sign * h * dy / chord, my + sign * h * dx / chord

