"""A replay server of Prunt's HTTP and websocket API, for tests: Prunt itself cannot run here (it needs GNAT
and Alire), so this answers with the responses recorded from the real ``prunt_simulator``.

Recorded (``shared/data/prunt``): every body, status code, reason and header below comes from
``http/transcript.json`` (the ``Status`` object, the config values and schema, the 204s, the 400 of an upload
outside ``uploads/``, the 404 ``File not found.``, the 413 of a body over 100,000 bytes, the websocket's
``Server_Start_Time``/``Status``/``Log`` messages), and every log message from ``dialect.json``: a file line
or ``run-command`` line that the probe recorded as refused gets Prunt's exact message, with the file's name
and that line's number put in, and ends the file, which then shows as finished, as Prunt does. A line whose
recorded effect is a dead G-code task (``M141``) makes the status ``{"Fatal_Error": …}``; one that never
returned on the simulator (``M109``) keeps the file running.

Not recorded, so the replay's own (say so where a test relies on it): the motion (``G0``/``G1`` words move
the reported position at once; a refused line never moves; a target outside the recorded config's position
limits gets the recorded ``Position is out of bounds`` message with its axis and value), homing (no axis is
homed until ``G28``; ``M84`` un-homes, and a move then gets the recorded ``Must home all axes`` message), a
file's progress (one line per ``seconds_per_line``), ``POST /config/values`` (it patches the values; an
unknown key is an error), heater waits that return (``heater_waits_return``), and what the recording never
met, which gets a 500 whose body starts ``replay server:``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import lzma
import re
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from conftest import PRUNT_DIR  # noqa: E402 - this replay lives beside the tests


def prunt_data_dir() -> Path:
    """The Prunt recordings (:data:`conftest.PRUNT_DIR`)."""
    return PRUNT_DIR


WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
"""RFC 6455's key suffix of the ``Sec-WebSocket-Accept`` answer."""
RECORDED_FILE = "uploads/probe.gcode"
"""The file name the dialect probe's messages quote (line 2 of ``G28\\n<line>\\n``)."""
_MOVE_WORD_RE = re.compile(r"([XYZE])\s*(-?\d*\.?\d+)", re.IGNORECASE)


class Recording:
    """The recorded responses, by what asked for them."""

    def __init__(self, data_dir: Path) -> None:
        transcript = json.loads((data_dir / "http" / "transcript.json").read_text())
        self.exchanges: dict[tuple[str, str], dict[str, Any]] = {}
        for entry in transcript["transcript"]:
            key = (entry["request"]["method"], entry["request"]["path"])
            self.exchanges.setdefault(key, entry["response"])
        self.schema = lzma.decompress((data_dir / "http" / "config_schema.json.xz").read_bytes())
        idle = self.exchanges[("GET", "/status/values")]["json"]
        self.status: dict[str, Any] = idle["Status"]
        self.start_time_s = float(transcript["websocket"]["messages"][1]["json"]["Server_Start_Time"])
        self.file_lines: dict[str, dict[str, Any]] = {}
        self.command_lines: dict[str, dict[str, Any]] = {}
        for entry in json.loads((data_dir / "dialect.json").read_text()):
            table = self.command_lines if entry["via"] == "run-command" else self.file_lines
            table.setdefault(entry["line"], entry)
        too_large = [e for e in transcript["transcript"] if e["response"]["status"] == 413]
        self.too_large = too_large[0]["response"]
        self.must_home: str = self.command_lines["M84"]["next_move_check"]["message"]
        """Prunt's message for a move after M84 (recorded for the run-command ``G1 Z1 F600``)."""


class PruntReplay:
    """The replay server on 127.0.0.1 (an ephemeral port); ``with PruntReplay(data_dir) as replay:`` starts and
    always stops it. ``requests`` lists ``(method, path, body)`` of every request."""

    def __init__(self, data_dir: Path, seconds_per_line: float = 0.002, status_period_s: float = 0.05,
                 heater_waits_return: bool = False) -> None:
        self.recording = Recording(data_dir)
        self.heater_waits_return = heater_waits_return
        """Not recorded: M109/M190 return at once, as on a Prunt whose heaters reach their targets (the
        recorded simulator has no heaters, and there they wait forever)."""
        self.seconds_per_line = seconds_per_line
        self.status_period_s = status_period_s
        self.requests: list[tuple[str, str, bytes]] = []
        self.uploads: dict[str, bytes] = {}
        self.config = copy.deepcopy(self.recording.exchanges[("GET", "/config/values")]["json"]["Values"])
        self.position = [0.0, 0.0, 0.0, 0.0]
        self.relative = self.relative_e = False
        self.homed = False
        """Prunt starts with no axis homed (the probe sent G28 first); M84 un-homes them."""
        self.stalled = False
        self.file_name, self.file_line, self.paused = "<NO FILE>", 0, False
        self.fatal_error: str | None = None
        self.log_queues: list[list[str]] = []
        self.lock = threading.RLock()
        self._clock0 = time.monotonic()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> PruntReplay:
        thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(5)

    # -- the machine's state
    def now_s(self) -> float:
        """Prunt's clock: the recorded server start time, advancing with ours."""
        return self.recording.start_time_s + (time.monotonic() - self._clock0)

    def status(self) -> dict[str, Any]:
        with self.lock:
            if self.fatal_error is not None:
                return {"Fatal_Error": self.fatal_error}
            status = copy.deepcopy(self.recording.status)
            status.update(Time=self.now_s(), Stepgen_Is_Paused=self.paused, Current_File_Name=self.file_name,
                          Current_File_Line=self.file_line,
                          Position=dict(zip(("X_AXIS", "Y_AXIS", "Z_AXIS", "E_AXIS"), self.position, strict=True)))
            return {"Status": status}

    def log(self, message: str) -> None:
        with self.lock:
            for queue in self.log_queues:
                queue.append(message)

    def run_line(self, text: str, name: str | None, number: int) -> str:
        """Run one line (``name`` None: a ``run-command``): ``ok``, ``refused`` (logged), ``hang`` or ``fatal``,
        as the probe recorded it."""
        table = self.recording.command_lines if name is None else self.recording.file_lines
        entry = table.get(text) or (table.get("G1 X5 Y5\r") if "\r" in text else None)
        code = text.split(";", 1)[0].strip().upper()
        if entry is not None and not entry["accepted"]:
            self.log(self._placed(entry["message"], entry["line"], text, name, number))
            fatal = (entry.get("status_after") or {}).get("Fatal_Error")
            if fatal:
                with self.lock:
                    self.fatal_error = fatal
                return "fatal"
            return "refused"
        if re.match(r"^G0?[01](?!\d)", code) and not self.homed:
            self.log(self._placed(self.recording.must_home, "G1 Z1 F600", text, name, number))
            return "refused"
        if code.startswith("G28"):
            # The recorded config homes by "Set to value 0" on every axis: no motion, position 0.
            self.homed, self.position = True, [0.0, 0.0, 0.0, 0.0]
        elif code == "M84":
            self.homed = False
        elif code == "M0":
            self.paused = True
        elif self.heater_waits_return and code[:4] in ("M109", "M190"):
            pass
        elif entry is not None and (entry.get("file_finished") is False or entry.get("next_move_ok") is False):
            # M109/M190 wait for a thermistor report the simulator never sends; M205 S0 stalls the planner.
            self.stalled = True
            return "hang"
        out_of_bounds = self._move(code)
        if out_of_bounds:
            recorded = table["G1 X300"]
            message = recorded["message"].replace("X_AXIS =  3.00000000000000E+02", out_of_bounds, 1)
            self.log(self._placed(message, "G1 X300", text, name, number))
            return "refused"
        return "ok"

    @staticmethod
    def _placed(message: str, recorded_line: str, text: str, name: str | None, number: int) -> str:
        """A recorded message, moved to this file and line (Prunt writes a number with a space before it)."""
        place = f"manual command ({text})" if name is None else f"line in file uploads/{name} on line  {number} ({text})"
        for recorded in (f"line in file {RECORDED_FILE} on line  2 ({recorded_line})",
                         f"manual command ({recorded_line})"):
            message = message.replace(recorded, place, 1)
        return message + "\n"

    def _move(self, code: str) -> str:
        """Move to a G0/G1's target; where it lies outside the config's position limits, the axis and value
        as Prunt's OUT_OF_BOUNDS_ERROR writes them (Ada's Long_Float image), and no move."""
        if code in ("G90", "G91"):
            self.relative = self.relative_e = code == "G91"
        elif code in ("M82", "M83"):
            self.relative_e = code == "M83"
        if not re.match(r"^G0?[01](?!\d)", code):
            return ""
        with self.lock:
            target = list(self.position)
            for letter, value in _MOVE_WORD_RE.findall(code[2:]):
                axis = "XYZE".index(letter.upper())
                relative = self.relative_e if axis == 3 else self.relative
                target[axis] = self.position[axis] * relative + float(value)
            for axis, value in zip("XYZE", target, strict=True):
                low = self.config[f"Kinematics$Lower position limit${axis}_AXIS"]
                high = self.config[f"Kinematics$Upper position limit${axis}_AXIS"]
                if not low <= value <= high:
                    return f"{axis}_AXIS = {value: .14E}"
            self.position = target
            return ""

    def start_file(self, name: str) -> None:
        lines = self.uploads[name].decode("utf-8", "replace").split("\n")
        with self.lock:
            self.file_name, self.file_line = f"uploads/{name}", 0
        thread = threading.Thread(target=self._run_file, args=(name, lines), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _run_file(self, name: str, lines: list[str]) -> None:
        for number, text in enumerate(lines, 1):
            if number == len(lines) and text == "":
                break
            if self._stop.wait(self.seconds_per_line):
                return
            while (self.paused or self.stalled) and not self._stop.is_set():
                time.sleep(0.01)
            with self.lock:
                self.file_line = number
            outcome = self.run_line(text, name, number) if text.strip() else "ok"
            if outcome == "fatal":
                return
            if outcome == "hang":
                self._stop.wait()
                return
            if outcome == "refused":
                break
        with self.lock:
            self.file_name = f"<NO FILE> (finished uploads/{name})"


def _handler(replay: PruntReplay) -> type[BaseHTTPRequestHandler]:
    recording = replay.recording

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _reply(self, status: int, body: bytes | str = b"", content_type: str = "text/plain",
                   reason: str | None = None) -> None:
            data = body.encode("utf-8") if isinstance(body, str) else body
            self.send_response(status, reason)
            # Prunt's own headers on every reply (as recorded).
            for name, value in (("Content-Type", f"{content_type}; charset=UTF-8"), ("Connection", "close"),
                                ("Cache-Control", "no-cache, no-store, must-revalidate"), ("Pragma", "no-cache"),
                                ("Expires", "0"), ("Content-Length", str(len(data)))):
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True

        def _recorded(self, method: str, path: str) -> None:
            response = recording.exchanges[(method, path)]
            body = json.dumps(response["json"]) if "json" in response else response.get("text", "")
            self._reply(response["status"], body, response["headers"]["Content-Type"].split(";")[0],
                        response["reason"])

        def _not_found(self) -> None:
            self._recorded("GET", "/nonexistent")

        def _unrecorded(self, what: str) -> None:
            self._reply(500, f"replay server: {what} was not recorded")

        def do_GET(self) -> None:
            replay.requests.append(("GET", self.path, b""))
            if self.path == "/websocket/everything" and self.headers.get("Upgrade", "").lower() == "websocket":
                self._websocket()
            elif self.path == "/status/values":
                self._reply(200, json.dumps(replay.status()), "application/json")
            elif self.path == "/config/values":
                self._reply(200, json.dumps({"Values": replay.config, "Errors": []}), "application/json")
            elif self.path == "/config/schema":
                self._reply(200, recording.schema, "application/json")
            elif self.path == "/uploads":
                self._reply(200, json.dumps(sorted(replay.uploads)), "application/json")
            elif self.path.startswith("/uploads/"):
                name = self.path.removeprefix("/uploads/")
                if name not in replay.uploads:
                    self._not_found()
                else:
                    self._reply(200, replay.uploads[name], "application/octet-stream")
            elif ("GET", self.path) in recording.exchanges:
                self._recorded("GET", self.path)
            else:
                self._not_found()

        def do_PUT(self) -> None:
            body = self._body()
            replay.requests.append(("PUT", self.path, body))
            if not self.path.startswith("/uploads/"):
                self._recorded("PUT", "/other/x.gcode")
                return
            replay.uploads[self.path.removeprefix("/uploads/")] = body
            self._reply(204)

        def do_POST(self) -> None:
            body = self._body()
            replay.requests.append(("POST", self.path, body))
            if len(body) > 100_000:
                response = recording.too_large
                self._reply(413, response["text"], reason=response["reason"])
            elif self.path == "/run-command":
                if replay.fatal_error is not None:
                    self._unrecorded("run-command after a fatal error")
                    return
                text = body.decode("utf-8", "replace")
                if text and not replay.stalled:
                    replay.run_line(text, None, 0)
                self._reply(204)
            elif self.path == "/run-file":
                name = body.decode("utf-8", "replace")
                if name not in replay.uploads or replay.fatal_error is not None:
                    self._unrecorded("run-file of a missing file or after a fatal error")
                    return
                replay.start_file(name)
                self._reply(204)
            elif self.path in ("/pause/pause", "/pause/resume"):
                replay.paused = self.path == "/pause/pause"
                self._reply(204)
            elif self.path == "/config/values":
                patch = json.loads(body or b"{}")
                errors = [{"Key": k, "Message": "replay server: no such key"} for k in patch if k not in replay.config]
                replay.config.update({k: v for k, v in patch.items() if k in replay.config})
                self._reply(200, json.dumps({"Values": replay.config, "Errors": errors}), "application/json")
            else:
                self._not_found()

        def _websocket(self) -> None:
            accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + WS_GUID).encode()).digest())
            self.send_response(101, "Switching Protocols")
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept.decode())
            self.end_headers()
            self.wfile.flush()
            queue: list[str] = []
            with replay.lock:
                replay.log_queues.append(queue)
            sock: socket.socket = self.connection
            try:
                self._send_text(sock, json.dumps({"Server_Start_Time": f" {recording.start_time_s}"}))
                next_status_s = 0.0
                while not replay._stop.is_set():
                    with replay.lock:
                        pending, queue[:] = list(queue), []
                    for message in pending:
                        self._send_text(sock, json.dumps({"Log": message}))
                    if time.monotonic() >= next_status_s:
                        self._send_text(sock, json.dumps(replay.status()))
                        next_status_s = time.monotonic() + replay.status_period_s
                    readable, _, _ = select.select([sock], [], [], 0.01)
                    if readable and _client_closed(sock):
                        sock.sendall(b"\x88\x00")
                        return
            except OSError:
                return
            finally:
                with replay.lock:
                    replay.log_queues.remove(queue)
                self.close_connection = True

        @staticmethod
        def _send_text(sock: socket.socket, text: str) -> None:
            data = text.encode("utf-8")
            size = len(data)
            head = bytes([0x81, size]) if size < 126 else (
                bytes([0x81, 126]) + size.to_bytes(2, "big") if size < 65536 else
                bytes([0x81, 127]) + size.to_bytes(8, "big"))
            sock.sendall(head + data)

    return Handler


def _client_closed(sock: socket.socket) -> bool:
    """Read one client frame (masked, as RFC 6455 has clients send); true for a close frame or a closed socket."""
    head = sock.recv(2)
    if len(head) < 2:
        return True
    size = head[1] & 0x7F
    if size == 126:
        size = int.from_bytes(sock.recv(2), "big")
    elif size == 127:
        size = int.from_bytes(sock.recv(8), "big")
    sock.recv(4 + size)
    return head[0] & 0x0F == 0x8
