"""The serial sender against a real peer (Klippy's G-code pseudo-terminal) and against a noisy link.

Klippy answers ``ok`` to every line on its ``-I`` terminal, ignores line numbers and checksums (so it
checks the framing only as far as reading the command behind ``N..`` and ``*..``), and runs the program:
its ``M114`` reply shows where the moves took the toolhead. ``NoisyLinkPeer (a test tool)`` speaks Marlin's
side of the protocol on a pseudo-terminal of ours and injects the faults of a noisy USB link; it is used
only to inject faults, beside the real test.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from safety.serial_sender import (
    MARLIN_MAX_CMD_SIZE_BYTES,
    EmergencyStopped,
    PortError,
    PrinterHalted,
    ProgramError,
    SendError,
    SerialSender,
    SerialSenderConfig,
    TemperatureReport,
    checksum,
    frame_line,
    prepare_program,
)
from sim_bridge.config import ConfigError
from sim_bridge.klippy.dictionary import dictionary_path
from sim_bridge.klippy.live import KlippyLive
from sim_bridge.klippy.printer_cfg import write_printer_cfg
from sim_bridge.printers import load_printer
from tests.conftest import GOLDEN

KLIPPY_READY_TIMEOUT_S = 30.0
PEER_JOIN_TIMEOUT_S = 5.0
M112_LATENCY_S = 0.5
"""How soon an emergency stop must reach the peer."""
SQUARE = GOLDEN / "must_pass" / "minimal_square.gcode"

# -- NoisyLinkPeer (a test tool) -------------------------------------------------------------------------------
_FRAME_RE = re.compile(r"^N(\d+) (.*)\*(\d+)$")


class NoisyLinkPeer:
    """NoisyLinkPeer (a test tool): Marlin's side of the serial protocol on a pseudo-terminal, in a thread.

    It checks each line's number and checksum as Marlin does (``Error:... Last Line: k``, ``Resend: k+1``,
    ``ok``) and, with seeded randomness, loses lines on the wire (no reply), corrupts one byte (so the
    checksum or number fails), loses the ``ok`` of a line it accepted, stays ``busy`` for a while, delays
    replies and adds temperature reports. ``accepted`` is every program line it accepted, in order.
    """

    def __init__(self, seed: int = 0, *, drop_line_p: float = 0.0, corrupt_p: float = 0.0,
                 drop_ok_p: float = 0.0, busy_p: float = 0.0, busy_s: float = 0.4, delay_p: float = 0.0,
                 max_delay_s: float = 0.0, temperature_p: float = 0.0, answer_lines: int | None = None,
                 halt_after: int | None = None, halt_message: str = "Error:Printer halted. kill() called!",
                 forced_wire: dict[int, str] | None = None, forced_reply: dict[int, str] | None = None) -> None:
        self.rng = random.Random(seed)
        self.drop_line_p, self.corrupt_p, self.drop_ok_p = drop_line_p, corrupt_p, drop_ok_p
        self.busy_p, self.busy_s, self.delay_p, self.max_delay_s = busy_p, busy_s, delay_p, max_delay_s
        self.temperature_p = temperature_p
        self.answer_lines = answer_lines
        """Answer only this many lines (the M110 included), then nothing: a stuck printer."""
        self.halt_after, self.halt_message = halt_after, halt_message
        self.forced_wire, self.forced_reply = forced_wire or {}, forced_reply or {}
        """Faults forced, beside the random ones, on the n-th line received ("line lost", "corrupted") and
        the reply to the n-th line accepted ("busy", "ok lost", "temperatures"), so each kind happens."""
        self._forced: str | None = None
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self.accepted: list[str] = []
        self.received: list[str] = []
        self.faults: Counter[str] = Counter()
        self.m112_at_s: float | None = None
        self.last_line = 0
        self.halted = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="noisy-link-peer", daemon=True)

    def __enter__(self) -> NoisyLinkPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(PEER_JOIN_TIMEOUT_S)
        assert not self._thread.is_alive(), "NoisyLinkPeer did not stop"
        os.close(self.master)
        os.close(self.slave)

    def _write(self, text: str) -> None:
        os.write(self.master, text.encode("ascii") + b"\n")

    def _serve(self) -> None:
        partial = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.02)
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            *lines, partial = (partial + data).split(b"\n")
            for raw in lines:
                self._line(raw.decode("ascii", "replace").strip())

    def _line(self, text: str) -> None:
        if not text:
            return
        self.received.append(text)
        if re.match(r"^(?:N\d+\s*)?M112\b", text):  # Marlin's emergency parser: acted on when read
            self.m112_at_s = time.monotonic()
            self.halted = True
            return
        if self.halted or (self.answer_lines is not None and len(self.received) > self.answer_lines):
            return
        rng = self.rng
        self._forced = self.forced_wire.get(len(self.received))
        if self._fault("line lost", self.drop_line_p):
            self.faults["line lost"] += 1
            return
        if self._fault("corrupted", self.corrupt_p):
            at = rng.randrange(len(text))
            text = text[:at] + "#" + text[at + 1:]
            self.faults["corrupted"] += 1
        frame = _FRAME_RE.match(text)
        if frame is None:
            self._refuse("No Checksum with line number" if text.startswith("N") else "No Line Number with checksum")
            return
        number, command, claimed = int(frame.group(1)), frame.group(2), int(frame.group(3))
        resets = "M110" in command  # Marlin takes a line holding M110 without checking its number
        if not resets and number != self.last_line + 1:
            self.faults["out of order"] += 1
            self._refuse("Line Number is not Last Line Number+1")
            return
        if checksum(text[:text.rindex("*")].encode()) != claimed:
            self._refuse("checksum mismatch")
            return
        self.last_line = int(command.split("N")[-1]) if resets else number
        if not resets:
            self.accepted.append(command)
        self._reply()

    def _fault(self, kind: str, probability: float) -> bool:
        """This fault now: the forced one where one is forced (and no other), else by chance."""
        chance = self.rng.random() < probability
        return self._forced == kind if self._forced is not None else chance

    def _refuse(self, why: str) -> None:
        self.faults["resend asked"] += 1
        self._write(f"Error:{why}, Last Line: {self.last_line}\nResend: {self.last_line + 1}\nok")

    def _reply(self) -> None:
        rng = self.rng
        if self.halt_after is not None and len(self.accepted) >= self.halt_after:
            self._write(self.halt_message)
            self.halted = True
            return
        self._forced = self.forced_reply.get(len(self.accepted))
        if self._fault("busy", self.busy_p):
            self.faults["busy"] += 1
            until = time.monotonic() + self.busy_s
            while time.monotonic() < until and not self._stop.is_set():
                self._write("echo:busy: processing")
                time.sleep(0.1)
        if rng.random() < self.delay_p:
            time.sleep(rng.uniform(0.0, self.max_delay_s))
        if self._fault("ok lost", self.drop_ok_p):
            self.faults["ok lost"] += 1
            return
        if self._fault("temperatures", self.temperature_p):
            self.faults["temperatures"] += 1
            self._write(" T:201.3 /200.0 B:59.8 /60.0 @:120 B@:0")
            self._write("ok T:200.0 /200.0 B:60.0 /60.0 @:127 B@:0")
            return
        self._write("ok")


def _program(lines: int, seed: int) -> str:
    """A program of ``lines`` commands with comments and blank lines between them."""
    rng = random.Random(seed)
    out = ["; made for the noisy link test", "G28 ; home", ""]
    for i in range(lines - 1):
        out.append(f"G1 X{rng.uniform(0, 200):.3f} Y{rng.uniform(0, 200):.3f} E{i * 0.05:.4f} F1800")
        if i % 37 == 0:
            out.append("; layer change\n")
    return "\n".join(out) + "\n"


# -- the protocol's arithmetic ---------------------------------------------------------------------------------
def test_frame_and_checksum_follow_the_reprap_convention() -> None:
    body = b"N7 G1 X10.5 F3000"
    expected = 0
    for byte in body:
        expected ^= byte
    assert frame_line(7, "G1 X10.5 F3000") == body + f"*{expected}".encode() + b"\n"
    assert frame_line(0, "M110 N0") == b"N0 M110 N0*125\n"


def test_prepare_strips_comments_numbers_and_checksums_and_refuses_what_cannot_be_sent() -> None:
    lines = prepare_program(b"; start\nG28 ; home\n\nN10 G1 X5 (move) Y5*99\r\nM117 hello\n")
    assert [(line.source_line, line.command) for line in lines] == [(2, "G28"), (4, "G1 X5 Y5"), (5, "M117 hello")]
    with pytest.raises(ProgramError, match=r"program line 2 .*M110"):
        prepare_program("G28\nM110 N100\n")
    with pytest.raises(ProgramError, match="non-ASCII"):
        prepare_program("M117 héllo\n")


def test_config_ranges_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"lines_in_flight = 0: out of range, allowed \[1, 32\]"):
        SerialSenderConfig(lines_in_flight=0)
    with pytest.raises(ConfigError, match="ok_timeout_s"):
        SerialSenderConfig(ok_timeout_s=0.0)
    with pytest.raises(ValueError, match="whole number"):
        SerialSenderConfig(lines_in_flight=1.5)  # type: ignore[arg-type]


# -- against Klippy's own pseudo-terminal ----------------------------------------------------------------------
def _klippy_state(sock_path: Path, deadline: float) -> str:
    """Klippy's state from its API socket (JSON ended by 0x03), polled until it leaves ``startup``."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        while True:
            try:
                sock.connect(str(sock_path))
                break
            except (ConnectionRefusedError, FileNotFoundError):
                assert time.monotonic() < deadline, "Klippy's API socket refused connections"
                time.sleep(0.05)
        for number in range(1000):
            sock.sendall(json.dumps({"id": number, "method": "info", "params": {}}).encode() + b"\x03")
            reply = b""
            while not reply.endswith(b"\x03"):
                chunk = sock.recv(65536)
                assert chunk, "Klippy closed its API socket"
                reply += chunk
            state = json.loads(reply[:-1])["result"]["state"]
            if state != "startup" or time.monotonic() > deadline:
                return state
            time.sleep(0.05)
    return "startup"


@pytest.fixture
def klippy() -> Iterator[KlippyLive]:
    # A short folder of our own: a Unix socket's path is limited to 107 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix="llser-"))
    cfg = write_printer_cfg(load_printer("ender3-klipper"), run_dir / "printer.cfg")
    live = KlippyLive(cfg, dictionary_path(), run_dir)
    try:
        live.start()
        state = _klippy_state(live.socket_path, time.monotonic() + KLIPPY_READY_TIMEOUT_S)
        assert state == "ready", live.log_tail()
        yield live
    finally:
        live.stop()
        assert not live.running()
        shutil.rmtree(run_dir, ignore_errors=True)


def test_a_real_program_runs_on_klippys_pseudo_terminal_and_m112_shuts_it_down(klippy: KlippyLive) -> None:
    progress: list[tuple[int, int]] = []
    temperatures: list[TemperatureReport] = []
    # Klippy ignores line numbers, so a resend could run a line twice: a timeout must be an error there.
    config = SerialSenderConfig(resend_on_timeout=False, ok_timeout_s=10.0)
    with SerialSender.open(str(klippy.pty_path), config, on_progress=lambda a, t: progress.append((a, t)),
                           on_temperature=temperatures.append) as sender:
        result = sender.send(SQUARE.read_bytes())
        commands = prepare_program(SQUARE.read_bytes())
        assert result.lines_total == result.lines_acked == len(commands) == 17
        assert progress[-1] == (17, 17) and [a for a, _ in progress] == sorted(a for a, _ in progress)
        assert result.resends == result.timeouts == 0
        # The toolhead is where the program's last moves put it: the lines ran, in order.
        assert "X:50.000 Y:50.000 Z:5.000 E:2.000" in sender.query("M114")
        sender.query("M105")
        assert temperatures and temperatures[-1].hotend_c == 0.0 and temperatures[-1].bed_target_c == 0.0
        # The fact behind resend_on_timeout=False: a wrong checksum and a repeated number are taken anyway.
        sender.port.write(b"N5 G4 P1*0\nN5 G4 P1*0\n")
        assert [sender.reader.read_line(5.0), sender.reader.read_line(5.0)] == ["ok", "ok"]
        sender.emergency_stop()
        assert _klippy_state(klippy.socket_path, time.monotonic() + 5.0) == "shutdown"
        with pytest.raises(EmergencyStopped):
            sender.send("G28\n")
    # Klippy's dump of its last G-code input at the shutdown holds the framed lines as they arrived (its log
    # is written by a thread of its own: waited for).
    deadline = time.monotonic() + 5.0
    while "Dumping gcode input" not in (log := klippy.log_path.read_text(errors="replace")):
        assert time.monotonic() < deadline, klippy.log_tail()
        time.sleep(0.05)
    assert "Shutdown due to M112 command" in log
    assert repr(frame_line(1, "G28").decode())[1:-1] in log and "N17 M84*" in log


# -- against the noisy link ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("lines_in_flight", "lines", "seed"), [(1, 300, 13), (4, 200, 7)])
def test_nothing_is_lost_or_sent_twice_over_a_noisy_link(lines_in_flight: int, lines: int, seed: int) -> None:
    program = _program(lines, seed)
    commands = [line.command for line in prepare_program(program)]
    assert len(commands) == lines
    progress: list[tuple[int, int]] = []
    temperatures: list[TemperatureReport] = []
    config = SerialSenderConfig(lines_in_flight=lines_in_flight, ok_timeout_s=0.2, max_resends_per_line=10)
    with NoisyLinkPeer(seed, drop_line_p=0.02, corrupt_p=0.03, drop_ok_p=0.02, busy_p=0.01, delay_p=0.1,
                       max_delay_s=0.05, temperature_p=0.05,
                       forced_wire={10: "line lost", 20: "corrupted"},
                       forced_reply={30: "ok lost", 40: "busy", 50: "temperatures"}) as peer, \
            SerialSender.open(peer.path, config, on_progress=lambda a, t: progress.append((a, t)),
                              on_temperature=temperatures.append) as sender:
        result = sender.send(program)
    assert peer.accepted == commands  # every line exactly once, in order
    assert result.lines_acked == result.lines_total == len(commands)
    assert progress[-1] == (lines, lines)
    for fault in ("line lost", "corrupted", "ok lost", "busy", "out of order", "resend asked", "temperatures"):
        assert peer.faults[fault] > 0, (fault, peer.faults)  # the link really was noisy
    assert result.resends > 0 and result.timeouts > 0
    # busy lasted longer than ok_timeout_s without a timeout of its own: the deadline was extended.
    assert peer.busy_s > config.ok_timeout_s
    report = temperatures[-1]
    assert (report.hotend_c, report.hotend_target_c, report.bed_c, report.bed_target_c) in {
        (200.0, 200.0, 60.0, 60.0), (201.3, 200.0, 59.8, 60.0)}


def test_emergency_stop_reaches_a_stuck_printer_at_once() -> None:
    with NoisyLinkPeer(answer_lines=4) as peer, \
            SerialSender.open(peer.path, SerialSenderConfig(ok_timeout_s=30.0)) as sender:
        failure: list[BaseException] = []

        def send() -> None:
            try:
                sender.send(_program(50, 1))
            except BaseException as exc:  # handed to the test thread
                failure.append(exc)

        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        deadline = time.monotonic() + 5.0
        while len(peer.received) < 5:  # M110, three answered lines, then the one that gets no ok
            assert time.monotonic() < deadline, peer.received
            time.sleep(0.01)
        time.sleep(0.2)
        asked = time.monotonic()
        sender.emergency_stop()
        thread.join(5.0)
        assert not thread.is_alive()
        assert peer.m112_at_s is not None and peer.m112_at_s - asked < M112_LATENCY_S
        assert peer.received[-1] == "M112" and len(peer.received) == 6
        assert len(failure) == 1 and isinstance(failure[0], EmergencyStopped)
        assert failure[0].wire_line == 4 and failure[0].command.startswith("G1 X")


# -- bad inputs ------------------------------------------------------------------------------------------------
def test_a_port_that_does_not_exist_is_named() -> None:
    with pytest.raises(PortError, match=r"cannot open serial port '/dev/ttyLAYERLOOP9' at 115200 baud"):
        SerialSender.open("/dev/ttyLAYERLOOP9")


def test_a_line_too_long_for_the_firmware_buffer_is_refused_before_anything_is_sent() -> None:
    long_message = "M117 " + "x" * (MARLIN_MAX_CMD_SIZE_BYTES - 10)
    with NoisyLinkPeer() as peer, SerialSender.open(peer.path) as sender:
        with pytest.raises(ProgramError, match=r"program line 3 .*: 9\d bytes framed as N2 .*allowed \[1, 95\]"):
            sender.send(f"G28\n; comment\n{long_message}\nG1 X1\n")
        time.sleep(0.1)
        assert peer.received == []


@pytest.mark.parametrize("message", ["Error:Printer halted. kill() called!", "!! Move out of range: 300.000"])
def test_a_printer_that_halts_mid_program_stops_the_send(message: str) -> None:
    with NoisyLinkPeer(halt_after=5, halt_message=message) as peer, SerialSender.open(peer.path) as sender:
        with pytest.raises(PrinterHalted) as caught:
            sender.send(_program(20, 2))
        time.sleep(0.1)
    assert len(peer.accepted) == 5 and len(peer.received) == 6  # nothing sent after the halt
    error = caught.value
    assert error.wire_line == 5 and message in error.received and error.expected == "ok"
    assert message in str(error) and "N5 (program line" in str(error)


def test_a_line_that_never_gets_an_ok_fails_after_bounded_resends() -> None:
    config = SerialSenderConfig(ok_timeout_s=0.1, max_resends_per_line=2)
    with NoisyLinkPeer(answer_lines=3) as peer, SerialSender.open(peer.path, config) as sender:
        started = time.monotonic()
        with pytest.raises(SendError, match=r"no reply in ok_timeout_s = 0.1 s, 2 resends: N3 .*expected ok"):
            sender.send("G28\nG1 X1\nG1 X2\nG1 X3\n")
        assert time.monotonic() - started < 2.0
    assert len(peer.received) == 6 and peer.received[3:] == [peer.received[3]] * 3  # one line, three times


def test_without_resend_on_timeout_a_silent_line_is_an_error_at_once() -> None:
    config = SerialSenderConfig(ok_timeout_s=0.1, resend_on_timeout=False)
    with NoisyLinkPeer(answer_lines=2) as peer, SerialSender.open(peer.path, config) as sender, \
            pytest.raises(SendError, match="not resent: resend_on_timeout is off"):
        sender.send("G28\nG1 X1\n")
    assert len(peer.received) == 3


def test_busy_keeps_a_long_command_waiting_past_the_timeout_but_not_past_max_line_s() -> None:
    program = "G28\nM109 S200\nG1 X1\n"
    config = SerialSenderConfig(ok_timeout_s=0.2, max_resends_per_line=0)  # any timeout would fail the send
    with NoisyLinkPeer(busy_s=0.7, forced_reply={2: "busy"}) as peer, SerialSender.open(peer.path, config) as sender:
        result = sender.send(program)
    assert result.timeouts == 0 and result.elapsed_s > 0.6 and peer.accepted == ["G28", "M109 S200", "G1 X1"]
    config = SerialSenderConfig(ok_timeout_s=0.2, max_line_s=0.4)
    with NoisyLinkPeer(busy_s=0.7, forced_reply={2: "busy"}) as peer, SerialSender.open(peer.path, config) as sender, \
            pytest.raises(SendError, match=r"busy for more than max_line_s = 0.4 s: N2 \(program line 2\) 'M109 S200'"):
        sender.send(program)
