"""A G-code sender for Marlin-style firmware over a serial port: line numbers, checksums, resends, M112.

It sends a program (the gate's payload, :attr:`safety.gate.GateResult.payload`) one line at a time, each
framed as ``N<n> <command>*<checksum>`` after a first ``N0 M110 N0*<cs>`` that resets the firmware's line
counter. The facts of the protocol it relies on (Marlin's serial handling, RepRap convention):

- **Checksum**: the XOR of every byte before ``*``, written in decimal.
- **Line numbers**: the firmware accepts a numbered line only if its number is the last accepted + 1, so a
  line that arrives twice is refused the second time and a skipped line is noticed. ``M110 N<k>`` sets the
  last number to ``k`` (a line holding ``M110`` is exempt from the check).
- **Replies**: ``ok`` (optionally followed by a temperature report, ``ok T:200.0 /200.0 B:60.0 /60.0``) once
  per line; for a refused line ``Error:checksum mismatch, Last Line: <k>`` or ``Error:Line Number is not
  Last Line Number+1, Last Line: <k>``, then ``Resend: <k+1>`` and an ``ok`` that acknowledges nothing;
  ``echo:busy: processing`` every couple of seconds while a long command runs; temperature reports of their
  own during heating and with auto-report; ``Error:Printer halted. kill() called!`` or a line starting with
  ``!!`` when the firmware stops; ``start`` when the board has just booted.

How replies are matched to lines. Replies come in the order lines were sent, one *cycle* per line the
firmware read (``ok``, or ``Resend`` + ``ok``); a line lost on the wire gets none. A ``Resend: M`` is the
firmware's own statement that it accepted exactly the lines before ``M``, so the sender rewinds to ``M``
(go-back-N) and the firmware's line-number check turns any duplicate into a harmless refusal. The lines that
were behind a refused one still answer (each with its own refusal): they are counted as *untracked* and
matched first, because they were sent first, so an ``ok`` is credited to a line only when no older
transmission will answer. The count can fall behind (costing a timeout and a resend that the firmware
refuses as a duplicate, which says how far it got) but never runs ahead of the firmware, so a send never
ends before the firmware accepted its last line. A line with no reply within ``ok_timeout_s`` (busy and
temperature reports restart it, up to ``max_line_s`` in all) is taken as lost and sent again, at most
``max_resends_per_line`` times, then :class:`SendError`. Where the firmware does not check line numbers
(Klippy's G-code pseudo-terminal ignores ``N`` and ``*`` and answers every line ``ok``), a resend could run
a line twice: set ``resend_on_timeout=False`` and a timeout is an error instead.

:meth:`SerialSender.emergency_stop` writes ``M112`` at once from any thread, not behind a line that waits
for its ``ok`` (Marlin's emergency parser and Klippy both act on an unnumbered ``M112`` as soon as it is
read). :class:`LineReader` reads whole reply lines from any pyserial port, a pseudo-terminal included.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import serial

from sim_bridge.config import check_ranges, ranged

READ_POLL_S = 0.02
"""How long one read of the port blocks: the granularity of every wait and of noticing an emergency stop."""
EMERGENCY_LOCK_WAIT_S = 0.05
"""How long M112 waits for a write in progress to finish before it is written anyway (after a newline)."""
MAX_REPLY_BYTES = 65536
"""A reply longer than this without a newline is not a firmware talking: the read fails."""
MARLIN_MAX_CMD_SIZE_BYTES = 96
"""Marlin's default ``MAX_CMD_SIZE``: its line buffer, including the terminating NUL."""
RECENT_REPLIES = 6
"""Replies quoted in an error."""
RESET_COMMAND = "M110 N0"
"""The first line of every send: the firmware's line counter set to 0, so the program starts at N1."""

_RESEND_RE = re.compile(r"^(?:resend|rs)\s*:?\s*N?\s*(\d+)", re.IGNORECASE)
_HALT_RE = re.compile(r"printer halted|kill\(\) called|system stopped", re.IGNORECASE)
_BUSY_RE = re.compile(r"^(?:echo:\s*)?busy\s*:", re.IGNORECASE)
_TEMP_RE = re.compile(r"(?:^|\s)(T\d*|B|C|P|R)\s*:\s*(-?\d+(?:\.\d+)?)(?:\s*/\s*(-?\d+(?:\.\d+)?))?")
_LINE_NUMBER_RE = re.compile(r"^N\s*\d+\s*", re.IGNORECASE)
_CHECKSUM_RE = re.compile(r"\*\s*\d*\s*$")
_PAREN_RE = re.compile(r"\([^()]*\)")


@dataclass(frozen=True)
class SerialSenderConfig:
    """How the sender talks to one printer; ranges checked on construction."""

    baud: int = ranged(115200, 300, 4_000_000)
    """Serial speed in bits per second (ignored by pseudo-terminals and USB CDC ports)."""
    lines_in_flight: int = ranged(1, 1, 32)
    """Numbered lines sent ahead of their ``ok``; keep at or below the firmware's command buffer
    (Marlin's ``BUFSIZE``, 4 by default). 1: each line waits for the previous one's ``ok``."""
    ok_timeout_s: float = ranged(10.0, 0.05, 3600.0)
    """Silence after which the oldest unacknowledged line counts as lost (busy and temperature reports
    restart it). Must exceed the firmware's longest silence: Marlin's host keep-alive says ``busy`` every
    2 s; without it a G28 or M109 can be silent for minutes."""
    max_line_s: float = ranged(1800.0, 0.1, 86400.0)
    """The longest one line may keep the firmware busy in all (heating a bed to 110 °C takes minutes)."""
    max_resends_per_line: int = ranged(5, 0, 100)
    """Resends of one line (asked for by the firmware or after a timeout) before the send fails."""
    resend_on_timeout: bool = True
    """Send a line again after ``ok_timeout_s`` of silence. Safe only where the firmware refuses a line
    number it already accepted (Marlin, RepRapFirmware); False for Klippy's pseudo-terminal, which ignores
    line numbers: there a timeout is an error."""
    ok_follows_resend: bool = True
    """The firmware sends an ``ok`` after each ``Resend:`` (Marlin does); that ``ok`` acknowledges nothing."""
    max_line_bytes: int = ranged(MARLIN_MAX_CMD_SIZE_BYTES - 1, 16, 4096)
    """Longest framed line (``N<n> <command>*<cs>``, newline not counted) the firmware can hold: Marlin's
    default buffer is 96 bytes including its NUL. A program with a longer line is refused before sending."""
    write_timeout_s: float = ranged(5.0, 0.1, 120.0)
    """How long one write may block (hardware flow control, a full output buffer) before the send fails."""

    def __post_init__(self) -> None:
        for name in ("baud", "lines_in_flight", "max_resends_per_line", "max_line_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} = {value!r}: must be a whole number")
        check_ranges(self)


class SerialSenderError(RuntimeError):
    """Anything that stops a serial send: the port, the program or the printer."""


class PortError(SerialSenderError):
    """The port could not be opened, read or written."""


class ProgramError(SerialSenderError, ValueError):
    """The program cannot be sent as it is (a line too long for the firmware, an M110, non-ASCII)."""


class SendError(SerialSenderError):
    """The printer did not accept a line as expected; names the line, what came back and what was expected."""

    def __init__(self, reason: str, *, wire_line: int, source_line: int | None, command: str,
                 received: Sequence[str], expected: str) -> None:
        self.reason = reason
        self.wire_line = wire_line
        """The ``N`` number the line carried on the wire (0: the M110 reset)."""
        self.source_line = source_line
        """The line's number in the program as given (None: a line the sender added)."""
        self.command = command
        self.received = tuple(received)
        self.expected = expected
        where = f"program line {source_line}" if source_line is not None else "added by the sender"
        got = " | ".join(self.received) if self.received else "nothing"
        super().__init__(f"{reason}: N{wire_line} ({where}) {command!r}: expected {expected}; got {got}")


class PrinterHalted(SendError):
    """The firmware reported that it stopped (``!!``, ``Error:Printer halted``, a reboot's ``start``)."""


class EmergencyStopped(SendError):
    """:meth:`SerialSender.emergency_stop` was called during the send."""


@dataclass(frozen=True)
class ProgramLine:
    """One command as sent: comments, line number and checksum of the original removed."""

    source_line: int | None
    """1-based line in the program (None: the sender's own M110)."""
    command: str


@dataclass(frozen=True)
class HeaterReading:
    name: str
    """The firmware's name: ``T`` (or ``T0``, ``T1``) hotends, ``B`` bed, ``C`` chamber, ``P`` probe."""
    temp_c: float
    target_c: float | None
    """None when the report gives no target for this sensor."""


@dataclass(frozen=True)
class TemperatureReport:
    """Temperatures from one reply line (``ok T:200.0 /200.0 B:60.0 /60.0 @:127 B@:0`` or a bare report)."""

    readings: tuple[HeaterReading, ...]
    received_s: float
    """``time.monotonic()`` when the line was read."""

    def reading(self, name: str) -> HeaterReading | None:
        return next((r for r in self.readings if r.name == name), None)

    @property
    def hotend_c(self) -> float | None:
        hit = self.reading("T") or self.reading("T0")
        return hit.temp_c if hit else None

    @property
    def hotend_target_c(self) -> float | None:
        hit = self.reading("T") or self.reading("T0")
        return hit.target_c if hit else None

    @property
    def bed_c(self) -> float | None:
        hit = self.reading("B")
        return hit.temp_c if hit else None

    @property
    def bed_target_c(self) -> float | None:
        hit = self.reading("B")
        return hit.target_c if hit else None


@dataclass(frozen=True)
class SendResult:
    lines_total: int
    """Program lines (without the sender's M110)."""
    lines_acked: int
    resends: int
    """Rewinds asked for by the firmware (``Resend:``/``rs``)."""
    timeouts: int
    elapsed_s: float
    last_temperature: TemperatureReport | None
    messages: tuple[str, ...]
    """Lines from the firmware that were neither protocol nor temperatures (``echo:``, ``//``, M114's reply)."""


def checksum(data: bytes) -> int:
    """XOR of every byte (RepRap/Marlin line checksum).

    >>> checksum(b"N0 M110 N0")
    125
    """
    value = 0
    for byte in data:
        value ^= byte
    return value


def frame_line(number: int, command: str) -> bytes:
    """``N<number> <command>*<checksum>`` and a newline, as the firmware reads it.

    >>> frame_line(1, "G28")
    b'N1 G28*18\\n'
    """
    body = f"N{number} {command}".encode("ascii")
    return body + b"*" + str(checksum(body)).encode("ascii") + b"\n"


def parse_temperatures(line: str, received_s: float | None = None) -> TemperatureReport | None:
    """The temperatures in one reply line, or None when it has no hotend or bed reading.

    >>> parse_temperatures("ok T:200.0 /210.0 B:60.0 /60.0 @:127 B@:0").hotend_target_c
    210.0
    """
    if line[:2].lower() == "ok":
        line = line[2:]
    readings: dict[str, HeaterReading] = {}
    for name, temp, target in _TEMP_RE.findall(line):
        # Marlin repeats the active hotend as T and T0; the first reading of a name is kept.
        readings.setdefault(name, HeaterReading(name, float(temp), float(target) if target else None))
    if not any(name.startswith(("T", "B")) for name in readings):
        return None
    return TemperatureReport(tuple(readings.values()), time.monotonic() if received_s is None else received_s)


def prepare_program(program: bytes | str, max_line_bytes: int = MARLIN_MAX_CMD_SIZE_BYTES - 1) -> tuple[ProgramLine, ...]:
    """The program's commands as they will be sent: ``;`` and ``( )`` comments, blank lines, existing line
    numbers and checksums removed, runs of spaces made one (fewer bytes in the firmware's buffer). :class:`ProgramError` for a line whose framed form (with the number it
    will carry) exceeds ``max_line_bytes``, non-ASCII in a command, a ``*`` inside one, or an ``M110``
    (it would renumber the firmware's counter under the sender)."""
    if isinstance(program, bytes):
        try:
            program = program.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProgramError(f"program is not UTF-8 text (byte {exc.start})") from None
    lines: list[ProgramLine] = []
    for number, raw in enumerate(program.splitlines(), start=1):
        text = raw.split(";", 1)[0]
        while _PAREN_RE.search(text):
            text = _PAREN_RE.sub(" ", text)
        text = " ".join(_CHECKSUM_RE.sub("", _LINE_NUMBER_RE.sub("", text.strip())).split())
        if not text:
            continue
        where = f"program line {number} ({text[:40]!r})"
        if not text.isascii():
            raise ProgramError(f"{where}: non-ASCII in a command")
        if "*" in text or "(" in text or ")" in text:
            raise ProgramError(f"{where}: '*', '(' or ')' left in a command; the firmware would misread it")
        if re.match(r"M0*110(?:\D|$)", text, re.IGNORECASE):
            raise ProgramError(f"{where}: M110 would reset the line numbers the sender keeps; remove it")
        size = len(frame_line(len(lines) + 1, text)) - 1
        if size > max_line_bytes:
            raise ProgramError(f"{where}: {size} bytes framed as N{len(lines) + 1} …*cs, over the firmware's "
                               f"line buffer: allowed [1, {max_line_bytes}] bytes (max_line_bytes)")
        lines.append(ProgramLine(number, text))
    return tuple(lines)


def open_port(path: str, baud: int = 115200, write_timeout_s: float = 5.0) -> serial.Serial:
    """Open ``path`` (a serial device or a pseudo-terminal) for exclusive use; :class:`PortError` naming it."""
    try:
        return serial.Serial(path, baud, timeout=READ_POLL_S, write_timeout=write_timeout_s, exclusive=True)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise PortError(f"cannot open serial port {path!r} at {baud} baud: {exc}") from None


class LineReader:
    """Whole lines from a pyserial port; a partial line is kept until its newline arrives. The port's read
    timeout is lowered to :data:`READ_POLL_S` so that no read outlasts the wait it belongs to."""

    def __init__(self, port: serial.Serial) -> None:
        self.port = port
        if port.timeout is None or port.timeout > READ_POLL_S:
            port.timeout = READ_POLL_S
        self._buffer = bytearray()

    def read_line(self, timeout_s: float) -> str | None:
        """The next line without its line ending, or None when none is complete within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                return line.decode("ascii", "replace").rstrip("\r")
            if len(self._buffer) > MAX_REPLY_BYTES:
                raise PortError(f"{self.port.port}: {len(self._buffer)} bytes without a newline")
            if time.monotonic() >= deadline:
                return None
            try:
                chunk = self.port.read(max(1, self.port.in_waiting))  # blocks at most READ_POLL_S
            except (serial.SerialException, OSError) as exc:
                raise PortError(f"reading {self.port.port}: {exc}") from None
            self._buffer += chunk


@dataclass
class _Window:
    """The go-back-N state of one send. Lines below ``base`` are accepted by the firmware."""

    base: int = 0
    next_line: int = 0
    live: deque[int] = field(default_factory=deque)
    """Lines sent since the last rewind, oldest first, whose reply cycle has not come."""
    absorb_ok: int = 0
    resends: Counter[int] = field(default_factory=Counter)
    rewinds: int = 0
    timeouts: int = 0
    last_activity_s: float = 0.0
    head_since_s: float = 0.0
    """When the oldest unacknowledged line became the oldest (for ``max_line_s``)."""


class SerialSender:
    """Sends programs to one printer on an open port, one send at a time; :meth:`emergency_stop` may be
    called from any thread, during a send or not."""

    def __init__(self, port: serial.Serial, config: SerialSenderConfig | None = None, *,
                 on_progress: Callable[[int, int], None] | None = None,
                 on_temperature: Callable[[TemperatureReport], None] | None = None,
                 on_message: Callable[[str], None] | None = None) -> None:
        self.config = config or SerialSenderConfig()
        self.port = port
        self.reader = LineReader(port)
        self.on_progress = on_progress
        """Called with (program lines acknowledged, program lines) each time the first number grows."""
        self.on_temperature = on_temperature
        self.on_message = on_message
        self.last_temperature: TemperatureReport | None = None
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._untracked = 0
        """Transmissions behind a refused line whose own refusal is still to come (kept across sends)."""
        self._recent: deque[str] = deque(maxlen=RECENT_REPLIES)

    @classmethod
    def open(cls, path: str, config: SerialSenderConfig | None = None, *,
             on_progress: Callable[[int, int], None] | None = None,
             on_temperature: Callable[[TemperatureReport], None] | None = None,
             on_message: Callable[[str], None] | None = None) -> SerialSender:
        """Open ``path`` with the config's baud rate and write timeout (:class:`PortError` if it cannot)."""
        config = config or SerialSenderConfig()
        return cls(open_port(path, config.baud, config.write_timeout_s), config, on_progress=on_progress,
                   on_temperature=on_temperature, on_message=on_message)

    def close(self) -> None:
        with contextlib.suppress(serial.SerialException, OSError):
            self.port.close()

    def __enter__(self) -> SerialSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def emergency_stop(self) -> None:
        """Write ``M112`` now, unnumbered, ahead of anything waiting; a send in progress then raises
        :class:`EmergencyStopped`. If another write holds the port it is written anyway, after a newline that
        ends whatever partial line the firmware holds."""
        self._stop.set()
        locked = self._write_lock.acquire(timeout=EMERGENCY_LOCK_WAIT_S)
        try:
            self.port.write(b"M112\n" if locked else b"\nM112\n")
            self.port.flush()
        except (serial.SerialException, OSError) as exc:
            raise PortError(f"M112 could not be written to {self.port.port}: {exc}") from None
        finally:
            if locked:
                self._write_lock.release()

    def send(self, program: bytes | str) -> SendResult:
        """Send every command of ``program`` and return once the firmware accepted the last one."""
        lines = prepare_program(program, self.config.max_line_bytes)
        return self._run(lines)

    def query(self, command: str) -> tuple[str, ...]:
        """Send one command (``M114``, ``M105``) and return the firmware's lines before its ``ok``."""
        return self._run(prepare_program(command, self.config.max_line_bytes)).messages

    # -- the send loop ------------------------------------------------------------------------------------------
    def _run(self, program: Sequence[ProgramLine]) -> SendResult:
        if self._stop.is_set():
            raise EmergencyStopped("emergency stop was sent; this sender sends nothing more", wire_line=0,
                                   source_line=None, command=RESET_COMMAND, received=(), expected="no stop")
        wire = (ProgramLine(None, RESET_COMMAND), *program)
        started = time.monotonic()
        window = _Window(last_activity_s=started, head_since_s=started)
        messages: list[str] = []
        while window.base < len(wire):
            # The M110 goes alone: lines numbered under the old counter would only be refused.
            limit = 1 if window.base == 0 else self.config.lines_in_flight
            while window.next_line < len(wire) and len(window.live) < limit:
                self._check_stop(window, wire)
                self._write(frame_line(window.next_line, wire[window.next_line].command), window, wire)
                window.live.append(window.next_line)
                window.next_line += 1
                window.last_activity_s = time.monotonic()
            self._check_stop(window, wire)
            line = self.reader.read_line(READ_POLL_S)
            now = time.monotonic()
            if line is None:
                self._check_timeouts(window, wire, now)
                continue
            self._recent.append(line)
            self._handle(line.strip(), window, wire, messages, now)
        return SendResult(len(program), len(program), window.rewinds, window.timeouts,
                          time.monotonic() - started, self.last_temperature, tuple(messages))

    def _handle(self, line: str, window: _Window, wire: Sequence[ProgramLine], messages: list[str],
                now: float) -> None:
        lower = line.lower()
        if not line:
            return
        if line.startswith("!!") or (lower.startswith("error") and _HALT_RE.search(line)):
            raise self._error(PrinterHalted, "the printer halted", window, wire, "ok")
        if lower == "ok" or lower.startswith("ok "):
            self._temperatures(line, now)
            self._on_ok(window, len(wire) - 1, now)
            return
        resend = _RESEND_RE.match(line)
        if resend:
            self._on_resend(int(resend.group(1)), window, wire, now)
            return
        if _BUSY_RE.match(line):
            window.last_activity_s = now
            return
        if lower.startswith("error"):
            return  # its Resend follows; the text is kept in the recent replies for an error message
        if lower == "start" and window.base > 0:
            raise self._error(PrinterHalted, "the printer restarted (it said 'start')", window, wire, "ok")
        if self._temperatures(line, now):
            window.last_activity_s = now
            return
        messages.append(line)
        if self.on_message is not None:
            self.on_message(line)

    def _temperatures(self, line: str, now: float) -> bool:
        report = parse_temperatures(line, now)
        if report is None:
            return False
        self.last_temperature = report
        if self.on_temperature is not None:
            self.on_temperature(report)
        return True

    def _on_ok(self, window: _Window, total: int, now: float) -> None:
        if window.absorb_ok:
            window.absorb_ok -= 1
            return
        window.last_activity_s = now
        # Older transmissions answer first; crediting this ok to a live line only when none may still
        # answer is what keeps the count from ever running ahead of the firmware.
        if self._untracked:
            self._untracked -= 1
            return
        if not window.live:
            return
        window.base = window.live.popleft() + 1
        window.head_since_s = now
        self._progress(window, total)

    def _on_resend(self, wanted: int, window: _Window, wire: Sequence[ProgramLine], now: float) -> None:
        window.last_activity_s = now
        if self.config.ok_follows_resend:
            window.absorb_ok += 1
        if self._untracked:
            self._untracked -= 1
            return
        if not window.live:
            return
        window.live.popleft()
        if window.base == 0:
            wanted = 0  # a number of the firmware's old count: our M110 was refused, send it again
        elif wanted < window.base:
            raise self._error(PrinterHalted, f"the firmware asked for N{wanted} again after accepting it "
                              "(was it reset?)", window, wire, f"Resend: {window.base} or later")
        elif wanted > window.next_line:
            raise self._error(SendError, f"the firmware asked for N{wanted}, never sent", window, wire,
                              f"Resend: N ≤ {window.next_line}")
        advanced = wanted > window.base
        window.base = wanted
        while window.live and window.live[0] < wanted:
            window.live.popleft()  # accepted (the firmware says so); their own oks may still come
            self._untracked += 1
        if advanced:
            window.head_since_s = now
            self._progress(window, len(wire) - 1)
        if window.live and window.live[0] == wanted:
            return  # a transmission of that line is already on its way
        if wanted < window.next_line:
            window.resends[wanted] += 1
            window.rewinds += 1
            if window.resends[wanted] > self.config.max_resends_per_line:
                raise self._error(SendError, f"refused {window.resends[wanted]} times", window, wire, "ok")
        self._untracked += len(window.live)
        window.live.clear()
        window.next_line = wanted

    def _check_timeouts(self, window: _Window, wire: Sequence[ProgramLine], now: float) -> None:
        if not window.live:
            return
        if now - window.head_since_s > self.config.max_line_s:
            raise self._error(SendError, f"busy for more than max_line_s = {self.config.max_line_s} s",
                              window, wire, "ok")
        if now - window.last_activity_s <= self.config.ok_timeout_s:
            return
        head = window.live[0]
        if not self.config.resend_on_timeout and head != 0:
            raise self._error(SendError, f"no reply in ok_timeout_s = {self.config.ok_timeout_s} s (not resent: "
                              "resend_on_timeout is off)", window, wire, "ok")
        window.resends[head] += 1
        window.timeouts += 1
        if window.resends[head] > self.config.max_resends_per_line:
            raise self._error(SendError, f"no reply in ok_timeout_s = {self.config.ok_timeout_s} s, "
                              f"{window.resends[head] - 1} resends", window, wire, "ok")
        # A timeout means the replies are lost (ok_timeout_s exceeds the firmware's longest silence), so the
        # timed-out transmissions are not counted as untracked; if one answers late after all, its ok is
        # credited to a line no later than its own, so the count still never runs ahead of the firmware.
        window.live.clear()
        window.next_line = window.base
        window.last_activity_s = now

    # -- helpers ------------------------------------------------------------------------------------------------
    def _write(self, data: bytes, window: _Window, wire: Sequence[ProgramLine]) -> None:
        try:
            with self._write_lock:
                # Checked under the lock: no line goes out after an M112 that took the lock first.
                self._check_stop(window, wire)
                self.port.write(data)
        except serial.SerialTimeoutException:
            raise self._error(SendError, f"write blocked for write_timeout_s = {self.config.write_timeout_s} s",
                              window, wire, "the port to take the line") from None
        except (serial.SerialException, OSError) as exc:
            raise PortError(f"writing {self.port.port}: {exc}") from None

    def _check_stop(self, window: _Window, wire: Sequence[ProgramLine]) -> None:
        if self._stop.is_set():
            raise self._error(EmergencyStopped, "emergency stop (M112 sent)", window, wire, "no stop")

    def _progress(self, window: _Window, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(max(0, window.base - 1), total)

    def _error(self, kind: type[SendError], reason: str, window: _Window, wire: Sequence[ProgramLine],
               expected: str) -> SendError:
        number = min(window.live[0] if window.live else window.base, len(wire) - 1)
        return kind(reason, wire_line=number, source_line=wire[number].source_line, command=wire[number].command,
                    received=tuple(self._recent), expected=expected)
