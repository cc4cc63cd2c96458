"""The bulk of a slicer file, compiled: plain ``G0``/``G1`` lines read and interpreted straight from bytes.

Nearly every line a slicer writes is a plain move (``G1 X.. Y.. E..``, 98 % of a PrusaSlicer file) or a
comment. :func:`scan_moves` reads a block of whole lines (ASCII, LF endings, as
:meth:`sim_bridge.gcode.GcodeReader.numbered_lines` gives them with ``blocks=True``) and does for each plain
move exactly what :meth:`sim_bridge.interpreter.Interpreter._move` does (same words, same arithmetic, same
order), writing the move into an array. It stops, before changing anything, at the first line it does not
take: any other command, a layer marker, a number it cannot read exactly, a move that fails a check or
starts a layer; the interpreter runs that line in Python and calls it again after it. So each rule stays
written once in Python, and the kernel takes only the lines where the rules have nothing to say.

What it takes: a line ``G0 ``/``G1 `` (upper case) whose words are X, Y, Z, E, F (others are ignored, as
``_move`` ignores them) with decimal numbers of at most 15 significant digits (read exactly: an integer
over a power of ten is correctly rounded, as ``float()`` is), without ``(``, ``*``, ``=``, lower case or a
bare letter, optionally followed by a ``;`` comment; an empty line; a ``;`` comment line that cannot be a
layer marker (no ``LAYER``, no ``<``). ``tests/test_move_scan.py`` runs every golden, fixture and wild file
both ways and compares the programs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sim_bridge.events import F_EXTRUDE, F_KINEMATIC, F_STOP_BEFORE
from sim_bridge.gcode import _WORD_RE, GcodeReader, LineBlock, parse_line
from sim_bridge.kernels import kernel, runs_compiled

# Float state: the program's and the machine's positions, feed, factors, limits, the current layer height.
S_GPOS, S_POS, S_FEED, S_UNITS, S_EXTRUDE_FACTOR, S_SPEED_FACTOR, S_E_MAX, S_LAYER_Z = 0, 4, 8, 9, 10, 11, 12, 13
S_LO, S_HI, S_MAX_E_RATIO, S_NOZZLE, S_MAX_EXTRUDE_ONLY = 14, 17, 20, 21, 22
FLOAT_STATE = 23
# Integer state: modes, homing, the firmware, the settings row, the planner flags, layer counting.
I_ABS_XYZ, I_ABS_E, I_HOMED, I_KLIPPER, I_SID, I_STOP_PENDING, I_FLUSHED = 0, 1, 2, 5, 6, 7, 8
I_LAYER, I_MARKER_MODE, I_MARKER_PENDING = 9, 10, 11
INT_STATE = 12
MOVE_COLUMNS = 12
"""A move row, as the interpreter queues it: line, start XYZ, end XYZ, E, speed, flags, settings id, layer."""
BLOCK_MOVES = 8192
"""Rows of the kernel's output buffer (a block with more moves takes several calls)."""

_LETTERS = "XYZEF"
_MAX_DIGITS = 15
_POW10 = np.array([10.0 ** k for k in range(23)])


@kernel(bounded=True)
def _number(data: np.ndarray, i: int, end: int, out: np.ndarray) -> int:
    """Read ``[-+]?([0-9]+\\.?[0-9]*|\\.[0-9]+)`` at ``i`` into ``out[0]``; the index after it, ``i`` when
    there is no number, -1 when it has too many digits to read exactly."""
    j = i
    neg = False
    if j < end and (data[j] == 45 or data[j] == 43):  # - +
        neg = data[j] == 45
        j += 1
    mant = 0
    digits = 0
    frac = 0
    seen = False
    while j < end and 48 <= data[j] <= 57:
        seen = True
        # int(): in plain Python a uint8 would make the sum a uint8 (NumPy's promotion) and wrap at 256.
        if mant or data[j] != 48:
            if digits < _MAX_DIGITS + 1:
                mant = mant * 10 + (int(data[j]) - 48)
            digits += 1
        j += 1
    if j < end and data[j] == 46:  # .
        k = j + 1
        fseen = False
        while k < end and 48 <= data[k] <= 57:
            fseen = True
            if mant or data[k] != 48:
                if digits < _MAX_DIGITS + 1:
                    mant = mant * 10 + (int(data[k]) - 48)
                digits += 1
            frac += 1
            k += 1
        if seen or fseen:
            seen = True
            j = k
    if not seen:
        return i
    if digits > _MAX_DIGITS or frac > 22:
        return -1
    value = mant / _POW10[frac]
    out[0] = -value if neg else value
    return j


@kernel(work=lambda data, start, end, *rest: float(end - start) / 40.0)
def scan_moves(data: np.ndarray, start: int, end: int, line: int, fs: np.ndarray, ist: np.ndarray,
               out: np.ndarray) -> tuple[int, int, int, int]:
    """Run the plain lines of ``data[start:end]`` (whole lines, the first numbered ``line``).

    ``fs``/``ist`` (the state, laid out as the ``S_*``/``I_*`` indices) are updated in place and each move
    is written to a row of ``out``. Returns (offset of the first line not taken, its number, moves written,
    commands counted); the offset is ``end`` when every line was taken, and the scan also stops before a
    line when ``out`` is full.
    """
    cap = out.shape[0]
    n = 0
    commands = 0
    num = np.zeros(1)
    vals = np.zeros(5)
    has = np.zeros(5, dtype=np.bool_)
    pos = start
    while pos < end:
        eol = pos
        while eol < end and data[eol] != 10:
            eol += 1
        length = eol - pos
        if length == 0:
            pos = eol + 1
            line += 1
            continue
        c0 = data[pos]
        if c0 == 59:  # ';' comment line: counted, unless it may be a layer marker
            marker = False
            text = False
            for k in range(pos + 1, eol):
                ch = data[k]
                layer_word = (ch == 76 and k + 4 < eol and data[k + 1] == 65 and data[k + 2] == 89
                              and data[k + 3] == 69 and data[k + 4] == 82)  # LAYER
                if ch == 60 or layer_word:  # '<' or LAYER
                    marker = True
                if not (ch == 32 or 9 <= ch <= 13 or 28 <= ch <= 31):  # what str.strip() keeps
                    text = True
            if marker:
                return pos, line, n, commands
            if text:
                commands += 1
            pos = eol + 1
            line += 1
            continue
        if length < 3 or c0 != 71 or (data[pos + 1] != 49 and data[pos + 1] != 48) or data[pos + 2] != 32:
            return pos, line, n, commands
        if n >= cap:
            return pos, line, n, commands
        # The words of the body (up to ';'), as _WORD_RE.findall reads them; the last of a letter counts.
        # A '(' or '*' anywhere (the comment included) sends the line to parse_line, as in Python.
        body_end = eol
        for k in range(pos + 3, eol):
            if data[k] == 40 or data[k] == 42:
                return pos, line, n, commands
            if data[k] == 59 and body_end == eol:
                body_end = k
        for w in range(5):
            has[w] = False
        ok = True
        k = pos + 3
        while k < body_end:
            ch = data[k]
            if ch == 61 or 97 <= ch <= 122:  # = or lower case
                ok = False
                break
            if 65 <= ch <= 90:
                k += 1
                while k < body_end and (data[k] == 32 or data[k] == 9):
                    k += 1
                after = _number(data, k, body_end, num)
                if after < 0 or after == k:
                    ok = False  # too many digits, or a bare letter (nan): Python's rules
                    break
                slot = -1
                if ch == 88:
                    slot = 0
                elif ch == 89:
                    slot = 1
                elif ch == 90:
                    slot = 2
                elif ch == 69:
                    slot = 3
                elif ch == 70:
                    slot = 4
                elif ch == 65 or ch == 66:  # A/B stand in for E
                    ok = False
                    break
                if slot >= 0:
                    vals[slot] = num[0]
                    has[slot] = True
                k = after
            else:
                k += 1
        if not ok:
            return pos, line, n, commands
        # _move, on locals: nothing changes unless the whole line is taken.
        u = fs[S_UNITS]
        feed = fs[S_FEED]
        if has[4]:
            if vals[4] <= 0.0:
                return pos, line, n, commands
            feed = vals[4] * u / 60.0
        gx, gy, gz, ge = fs[S_GPOS], fs[S_GPOS + 1], fs[S_GPOS + 2], fs[S_GPOS + 3]
        tx, ty, tz = gx, gy, gz
        abs_xyz = ist[I_ABS_XYZ] != 0
        moved = False
        if has[0]:
            tx = vals[0] * u if abs_xyz else tx + vals[0] * u
            moved = True
        if has[1]:
            ty = vals[1] * u if abs_xyz else ty + vals[1] * u
            moved = True
        if has[2]:
            tz = vals[2] * u if abs_xyz else tz + vals[2] * u
            moved = True
        de = 0.0
        if has[3]:
            e = vals[3] * u
            if ist[I_ABS_E] != 0 and abs_xyz:
                de = e - ge
                ge = e
            else:
                de = e
                ge += e
        if not moved and de == 0.0:
            fs[S_FEED] = feed
            fs[S_GPOS + 3] = ge
            commands += 1
            pos = eol + 1
            line += 1
            continue
        dx, dy, dz = tx - gx, ty - gy, tz - gz
        de *= fs[S_EXTRUDE_FACTOR]
        speed = feed * fs[S_SPEED_FACTOR]
        # _queue_move: a check that could fail, or a new layer, is Python's.
        x0, y0, z0 = fs[S_POS], fs[S_POS + 1], fs[S_POS + 2]
        nx, ny, nz = x0 + dx, y0 + dy, z0 + dz
        ne = fs[S_POS + 3] + de
        kinematic = dx * dx + dy * dy + dz * dz >= 1e-18
        if kinematic:
            if dx != 0.0 and not (ist[I_HOMED] != 0 and fs[S_LO] - 1e-9 <= nx <= fs[S_HI] + 1e-9):
                return pos, line, n, commands
            if dy != 0.0 and not (ist[I_HOMED + 1] != 0 and fs[S_LO + 1] - 1e-9 <= ny <= fs[S_HI + 1] + 1e-9):
                return pos, line, n, commands
            if dz != 0.0 and not (ist[I_HOMED + 2] != 0 and fs[S_LO + 2] - 1e-9 <= nz <= fs[S_HI + 2] + 1e-9):
                return pos, line, n, commands
        if de != 0.0:
            move_d = math.sqrt(dx * dx + dy * dy + dz * dz) if kinematic else abs(de)
            ratio = de / move_d
            if not kinematic or ratio < 0.0:
                if abs(de) > fs[S_MAX_EXTRUDE_ONLY]:
                    return pos, line, n, commands
            elif ratio > fs[S_MAX_E_RATIO] and de > fs[S_NOZZLE] * fs[S_MAX_E_RATIO]:
                return pos, line, n, commands
        flags = 0
        if kinematic:
            flags = F_KINEMATIC
            if de > 0.0:
                flags = F_KINEMATIC | F_EXTRUDE
                new_layer = ist[I_MARKER_PENDING] != 0 if ist[I_MARKER_MODE] != 0 else nz > fs[S_LAYER_Z] + 0.005
                if new_layer:
                    return pos, line, n, commands
        if ist[I_STOP_PENDING] != 0:
            flags |= F_STOP_BEFORE
            ist[I_STOP_PENDING] = 0
        ist[I_FLUSHED] = 0
        out[n, 0] = line
        out[n, 1] = x0
        out[n, 2] = y0
        out[n, 3] = z0
        out[n, 4] = nx
        out[n, 5] = ny
        out[n, 6] = nz
        out[n, 7] = de
        out[n, 8] = speed
        out[n, 9] = flags
        out[n, 10] = ist[I_SID]
        out[n, 11] = ist[I_LAYER]
        n += 1
        fs[S_FEED] = feed
        fs[S_GPOS], fs[S_GPOS + 1], fs[S_GPOS + 2], fs[S_GPOS + 3] = tx, ty, tz, ge
        fs[S_POS], fs[S_POS + 1], fs[S_POS + 2], fs[S_POS + 3] = nx, ny, nz, ne
        if ne > fs[S_E_MAX]:
            fs[S_E_MAX] = ne
        commands += 1
        pos = eol + 1
        line += 1
    return pos, line, n, commands


class MoveBuffer:
    """The interpreter's queued moves: rows appended one by one (Python) and whole blocks (the kernel)."""

    def __init__(self) -> None:
        self._blocks: list[np.ndarray] = []
        self._rows = 0
        self._pending: list[tuple] = []
        self.append = self._pending.append
        """Queue one move row (a tuple of :data:`MOVE_COLUMNS` numbers)."""

    def __len__(self) -> int:
        return self._rows + len(self._pending)

    def _flush(self) -> None:
        if self._pending:
            self._blocks.append(np.array(self._pending, dtype=np.float64).reshape(-1, MOVE_COLUMNS))
            self._rows += len(self._pending)
            self._pending.clear()

    def add_block(self, rows: np.ndarray) -> None:
        """Queue the kernel's rows after those queued so far."""
        self._flush()
        self._blocks.append(rows)
        self._rows += len(rows)

    def relabel_start_sequence(self) -> None:
        """Moves counted in a layer so far belong to no layer (they were the start sequence)."""
        self._flush()
        for block in self._blocks:
            block[block[:, 11] >= 0, 11] = -1.0

    def array(self) -> np.ndarray:
        """All rows, in order, shape (n, :data:`MOVE_COLUMNS`)."""
        self._flush()
        if not self._blocks:
            return np.zeros((0, MOVE_COLUMNS))
        return self._blocks[0] if len(self._blocks) == 1 else np.concatenate(self._blocks)


def _pack(interp: Any) -> tuple[np.ndarray, np.ndarray]:
    st, profile = interp.state, interp.profile
    fs = np.empty(FLOAT_STATE)
    fs[S_GPOS:S_GPOS + 4] = st.gpos
    fs[S_POS:S_POS + 4] = st.pos
    fs[S_FEED], fs[S_UNITS], fs[S_EXTRUDE_FACTOR] = st.feed_mm_s, st.units_mm, st.extrude_factor
    fs[S_SPEED_FACTOR], fs[S_E_MAX], fs[S_LAYER_Z] = st.speed_factor, st.e_max, st.layer_z
    fs[S_LO:S_LO + 3] = interp.lo
    fs[S_HI:S_HI + 3] = interp.hi
    fs[S_MAX_E_RATIO], fs[S_NOZZLE] = interp.max_e_ratio, profile.nozzle_diameter_mm
    fs[S_MAX_EXTRUDE_ONLY] = profile.max_extrude_only_distance_mm
    ist = np.array([st.absolute_xyz, st.absolute_e, *st.homed, interp.klipper, interp._sid_now,
                    interp._stop_pending, interp._flushed_after_last_move, st.layer, st.layer_marker_mode,
                    st.layer_marker_pending], dtype=np.int64)
    return fs, ist


def _unpack(interp: Any, fs: np.ndarray, ist: np.ndarray) -> None:
    # What a taken line changes; the lists keep their identity (other code holds them).
    st = interp.state
    st.gpos[:] = fs[S_GPOS:S_GPOS + 4].tolist()
    st.pos[:] = fs[S_POS:S_POS + 4].tolist()
    st.feed_mm_s, st.e_max = float(fs[S_FEED]), float(fs[S_E_MAX])
    interp._stop_pending, interp._flushed_after_last_move = bool(ist[I_STOP_PENDING]), bool(ist[I_FLUSHED])


def read_program(interp: Any, reader: GcodeReader, bulk: bool | None) -> tuple[int, int]:
    """Run a reader's lines on an interpreter: (commands, last line number).

    ``bulk``: take the plain lines with :func:`scan_moves` (``None``: when it runs compiled, which a
    file large enough to pay for numba, or a process that has loaded numba, gives; never on a Prunt
    printer or reader, whose checks and dialect it does not model).
    """
    if bulk is None:
        bulk = runs_compiled(scan_moves, reader.size_bytes / 40.0)
    # A reader of another dialect (Prunt's) reads its lines its own way: never in blocks.
    bulk = bulk and interp.prunt is None and type(reader) is GcodeReader
    name, warnings = reader.name, reader.warnings
    words_re = _WORD_RE
    move = interp._move
    execute = interp.execute
    count = 0
    line_no = 0

    def run_line(text: str, number: int) -> None:
        nonlocal count
        head = text[:3]
        if (head == "G1 " or head == "G0 ") and "(" not in text and "*" not in text:
            semi = text.find(";")
            body = text[3:semi] if semi >= 0 else text[3:]
            if "=" not in body and body.upper() == body:
                count += 1
                move({k: float(v) if v else math.nan for k, v in words_re.findall(body)}, number, text)
                return
        cmd = parse_line(text, number, name, warnings, True)
        if cmd is not None:
            count += 1
            execute(cmd)

    if not bulk:
        for line_no, text in reader.numbered_lines():
            run_line(text, line_no)
        return count, line_no
    out = np.empty((BLOCK_MOVES, MOVE_COLUMNS))
    for line_no, item in reader.numbered_blocks():
        if type(item) is not LineBlock:
            run_line(item, line_no)  # type: ignore[arg-type]
            continue
        data = np.frombuffer(item.data, dtype=np.uint8)
        start, end, number = 0, len(data), line_no
        while start < end:
            fs, ist = _pack(interp)
            start, number, n, taken = scan_moves(data, start, end, number, fs, ist, out)
            _unpack(interp, fs, ist)
            count += taken
            if n:
                interp._moves.add_block(out[:n].copy())
            if start < end and n < len(out):
                # The line the kernel left: Python's rules.
                eol = item.data.index(b"\n", start)
                run_line(item.data[start:eol].decode("ascii"), number)
                start, number = eol + 1, number + 1
        line_no += item.count - 1
    return count, line_no
