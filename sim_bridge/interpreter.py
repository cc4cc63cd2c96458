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
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from sim_bridge import failures as fail
from sim_bridge import limits
from sim_bridge.arcs import arc_center_from_radius, arc_chords
from sim_bridge.commands import COMMANDS, IGNORED, KLIPPER, MARLIN, macro_temperatures_c, motors_off_axes
from sim_bridge.events import EV_DWELL, EV_FAN, EV_HOMING, EV_MACRO, F_EXTRUDE, F_KINEMATIC, F_STOP_BEFORE
from sim_bridge.gcode import Command, GcodeError, GcodeReader
from sim_bridge.heater_commands import HeaterCommands
from sim_bridge.homing import homed_position_mm, homing_time_s
from sim_bridge.layers import is_layer_marker
from sim_bridge.machine import MachineState, Program, SavedGcodeState, TrackedState, gcode_offset_after
from sim_bridge.move_scan import MoveBuffer, read_program
from sim_bridge.options import SimOptions
from sim_bridge.profiles import MacroProfile, Material, PrinterProfile
from sim_bridge.prunt_dialect import bounds_error, limits_of, unhomed_error
from sim_bridge.report import Failure, Notice, unreadable_failure


class Interpreter(HeaterCommands):
    """Turns commands into moves and events on a persistent :class:`MachineState`."""

    def __init__(self, profile: PrinterProfile, material: Material, options: SimOptions,
                 state: MachineState, bulk: bool | None = None) -> None:
        self.bulk = bulk
        """Plain moves of a reader's file through :func:`sim_bridge.move_scan.scan_moves` (None: when compiled)."""
        self.profile = profile
        self.material = material
        self.options = options
        self.state = state
        self.klipper = profile.firmware == "klipper"
        self.prunt = limits_of(profile) if profile.firmware == "prunt" else None
        """Prunt's position limits on a Prunt printer: its homing and bounds checks, with its messages."""
        self.max_e_ratio = profile.max_cross_section_mm2 / profile.filament_area_mm2
        self.lo = list(profile.position_min_mm)
        self.hi = list(profile.position_max_mm)
        self._handler_table = self._handlers()

    # -- the main loop ---------------------------------------------------------------------------------
    def run(self, commands: Iterable[Command] | GcodeReader) -> Program:
        """Interpret ``commands`` (or a reader's lines, taking a fast path for slicers' plain G0/G1 lines)."""
        self._begin()
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
        moves = self._moves.array()
        return Program(
            line=moves[:, 0].astype(np.int64), xyz=np.ascontiguousarray(moves[:, 4:7]),
            starts=np.ascontiguousarray(moves[:, 1:4]), de=np.ascontiguousarray(moves[:, 7]),
            feed=np.ascontiguousarray(moves[:, 8]), flags=moves[:, 9].astype(np.int64),
            settings_id=moves[:, 10].astype(np.int64), settings_table=np.asarray(self._table, dtype=np.float64),
            layer=moves[:, 11].astype(np.int64),
            events=self._events, fatal=fatal, notices=self._notices, lines=last_line, commands=count,
            layer_z=self._layer_z, layer_first_line=self._layer_first_line,
            ends_with_stop=self._stop_pending and self._flushed_after_last_move)

    def trace(self, commands: Iterable[Command]) -> Iterator[TrackedState]:
        """Interpret ``commands`` one at a time, yielding the state after each, until the first fatal error or
        unreadable line (for differential tests against the validator; slower than :meth:`run`)."""
        self._begin()
        st = self.state
        try:
            for cmd in commands:
                self.execute(cmd)
                yield TrackedState(cmd.line, (st.pos[0], st.pos[1], st.pos[2]), (st.homed[0], st.homed[1], st.homed[2]),
                                   st.hotend_target_c, st.bed_target_c)
        except (_Fatal, GcodeError):
            return

    def _begin(self) -> None:
        self._moves = MoveBuffer()
        self._events: list[tuple[int, int, float, float, int]] = []
        self._notices: list[Notice] = []
        self._table: list[tuple[float, ...]] = [self.state.settings.row()]
        self._sid_now = 0
        self._stop_pending = True
        self._flushed_after_last_move = False
        self._layer_z: dict[int, float] = {}
        self._layer_first_line: dict[int, int] = {}

    def _run_reader(self, reader: GcodeReader) -> tuple[int, int]:
        return read_program(self, reader, self.bulk)

    def execute(self, cmd: Command) -> None:
        """Apply one command to the machine state (moves are queued, events added to the timeline)."""
        code = cmd.code
        if code == "G1" or code == "G0":
            self._move(cmd.params, cmd.line, f"{code} {cmd.text}")
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
                self._moves.relabel_start_sequence()
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
    def _move(self, p: dict[str, float], line: int, text: str = "") -> None:
        # A bare letter (``G1 X F1200``) reads as nan: Marlin skips the axis, Klipper refuses the move and stops.
        st = self.state
        u = st.units_mm
        f = p.get("F")
        if f is not None and f == f:
            if f <= 0.0:
                self._fail(fail.INVALID_COMMAND, f"Invalid speed in 'G1 F{f:g}'", line)
            st.feed_mm_s = f * u / 60.0
        elif f is not None and self.klipper:
            self._unparsable_move(text, line)
        gx, gy, gz, ge = st.gpos
        target = [gx, gy, gz]
        moved = False
        for i, letter in enumerate("XYZ"):
            v = p.get(letter)
            if v is not None and v == v:
                target[i] = v * u if st.absolute_xyz else target[i] + v * u
                moved = True
            elif v is not None and self.klipper:
                self._unparsable_move(text, line)
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
        elif e is not None and self.klipper:
            self._unparsable_move(text, line)
        if not moved and de == 0.0:
            st.gpos[3] = ge
            return
        dx = target[0] - gx
        dy = target[1] - gy
        dz = target[2] - gz
        st.gpos = [target[0], target[1], target[2], ge]
        self._queue_move(dx, dy, dz, de * st.extrude_factor, st.feed_mm_s * st.speed_factor, line)

    def _unparsable_move(self, text: str, line: int) -> None:
        self._fail(fail.INVALID_COMMAND, f"Unable to parse move '{text.split(';')[0].strip()}'", line)

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
                    or (dz != 0.0 and not (homed[2] and lo[2] - 1e-9 <= nz <= hi[2] + 1e-9))
                    or (self.prunt is not None and not (homed[0] and homed[1] and homed[2]))):
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
        """Endstop checks of the moving axes: unhomed first, then out of range (Prunt: every axis homed)."""
        st = self.state
        if self.prunt is not None:
            found = unhomed_error(st.homed) or bounds_error((nx, ny, nz), self.prunt)
            if found is not None:
                self._fail(fail.classify_prunt_error(found.kind, found.message) or fail.INVALID_COMMAND,
                           found.message, line)
            return
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
        points = arc_chords((gx, gy, gz), (tx, ty, tz), cx, cy, clockwise, self.options.arc_segment_mm)
        de = de_total / len(points) * st.extrude_factor
        speed = st.feed_mm_s * st.speed_factor
        px, py, pz = gx, gy, gz
        for nx, ny, nz in points:
            self._queue_move(nx - px, ny - py, nz - pz, de, speed, cmd.line)
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

    def _set_gcode_offset(self, cmd: Command) -> None:
        """Klipper's ``SET_GCODE_OFFSET``: later positions shift; ``MOVE=1`` moves the toolhead there at once."""
        st = self.state
        offset = gcode_offset_after(st.gcode_offset, lambda key: self._arg_float(cmd, key))
        shift = [new - old for new, old in zip(offset, st.gcode_offset, strict=True)]
        st.gcode_offset = offset
        st.gpos = [g - d for g, d in zip(st.gpos, shift, strict=True)]
        if self._arg_float(cmd, "MOVE") and any(shift):
            speed = self._arg_float(cmd, "MOVE_SPEED") or st.feed_mm_s * st.speed_factor
            self._queue_move(shift[0], shift[1], shift[2], shift[3], speed, cmd.line)
            st.gpos = [g + d for g, d in zip(st.gpos, shift, strict=True)]

    def _save_gcode_state(self, cmd: Command) -> None:
        st = self.state
        st.saved[cmd.args.get("NAME", "default").upper()] = SavedGcodeState(
            st.absolute_xyz, st.absolute_e, [p - g for p, g in zip(st.pos, st.gpos, strict=True)],
            list(st.gcode_offset), list(st.pos), st.feed_mm_s, st.speed_factor, st.extrude_factor)

    def _restore_gcode_state(self, cmd: Command) -> None:
        """Modes, offsets, feed and factors come back; the program's E is where it was when saved; ``MOVE=1``
        moves the toolhead back to where it was."""
        st = self.state
        name = cmd.args.get("NAME", "default").upper()
        saved = st.saved.get(name)
        if saved is None:
            self._fail(fail.INVALID_COMMAND, f"Unknown g-code state: {name}", cmd.line)
        st.absolute_xyz, st.absolute_e = saved.absolute_xyz, saved.absolute_e
        st.gcode_offset = list(saved.gcode_offset)
        st.feed_mm_s, st.speed_factor, st.extrude_factor = saved.feed_mm_s, saved.speed_factor, saved.extrude_factor
        if self._arg_float(cmd, "MOVE"):
            speed = self._arg_float(cmd, "MOVE_SPEED") or st.feed_mm_s * st.speed_factor
            self._queue_move(saved.pos[0] - st.pos[0], saved.pos[1] - st.pos[1], saved.pos[2] - st.pos[2], 0.0,
                             speed, cmd.line)
        st.gpos = [st.pos[i] - saved.offset[i] for i in range(3)] + [saved.pos[3] - saved.offset[3]]

    def _g28(self, cmd: Command) -> None:
        axes = [i for i, letter in enumerate("XYZ") if letter in cmd.params]
        if not axes:
            axes = [0, 1, 2]
        self.home(axes, cmd.line)

    def home(self, axes: list[int], line: int) -> None:
        """Home ``axes`` (0=X, 1=Y, 2=Z): time on the timeline, position set to where homing ends.

        Homing drops G92 offsets; the G-code offset stays (the program sees the endstop minus it)."""
        st = self.state
        total = 0.0
        for i in axes:
            total += homing_time_s(self.profile, self.options, i, st.homed[i], st.pos[i],
                                   *((st.settings.max_accel, st.settings.minimum_cruise_ratio) if self.klipper
                                     else (None, 0.0)))
            homed_at = homed_position_mm(self.profile, self.options, i)
            st.pos[i] = homed_at
            st.gpos[i] = homed_at - st.gcode_offset[i]
            st.homed[i] = True
        st.motors_off = False
        self._flush()
        self._event(EV_HOMING, total, line)

    def _m84(self, cmd: Command) -> None:
        st = self.state
        for i in motors_off_axes(cmd.params.keys(), self.klipper):
            st.homed[i] = False
        st.motors_off = True
        self._flush()

    def _arg_float(self, cmd: Command, key: str, default: float | None = None) -> float | None:
        text = cmd.args.get(key)
        if text is None:
            return default
        try:
            return float(text)
        except ValueError:
            self._fail(fail.INVALID_COMMAND, f"{cmd.code} {key}={text!r}: not a number", cmd.line)
        return None

    # -- limits and factors ---------------------------------------------------------------------------
    def _set_velocity_limit(self, cmd: Command) -> None:
        error = limits.set_velocity_limit(
            self.state.settings, self._arg_float(cmd, "VELOCITY"), self._arg_float(cmd, "ACCEL"),
            self._arg_float(cmd, "SQUARE_CORNER_VELOCITY"), self._arg_float(cmd, "MINIMUM_CRUISE_RATIO"),
            self._arg_float(cmd, "ACCEL_TO_DECEL"))
        if error is not None:
            self._fail(fail.INVALID_COMMAND, error, cmd.line)
        self._settings_changed()

    def _m204(self, cmd: Command) -> None:
        if not limits.m204(self.state.settings, cmd.get("S"), cmd.get("P"), cmd.get("T"), cmd.get("R"),
                           self.klipper):
            self._notice(fail.INVALID_M204, f"Invalid M204 command \"{cmd.code} {cmd.text}\"", cmd.line)
            return
        self._settings_changed()

    def _m201(self, cmd: Command) -> None:
        s = self.state.settings
        s.max_axis_accel = limits.per_axis(s.max_axis_accel, limits.axis_words(cmd))
        self._settings_changed()

    def _m203(self, cmd: Command) -> None:
        s = self.state.settings
        s.max_feedrate = limits.per_axis(s.max_feedrate, limits.axis_words(cmd))
        self._settings_changed()

    def _m205(self, cmd: Command) -> None:
        if (error := limits.m205(self.state.settings, cmd, self.prunt is not None)) is not None:
            self._fail(fail.INVALID_COMMAND, error, cmd.line)
        if self.prunt is not None:
            self._flush()  # Prunt changes its limits between blocks: the machine rests here
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
        self._move(cmd.params, cmd.line, f"{cmd.code} {cmd.text}")

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
        if code.startswith("T") and code[1:].isascii() and code[1:].isdigit():  # 'T²' is no tool (int fails)
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

    def _macro(self, cmd: Command, macro: MacroProfile) -> None:
        hotend, bed = macro_temperatures_c(cmd.args, macro)
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

