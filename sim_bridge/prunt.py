"""Prunt (Prunt3D), a motion controller with an HTTP API: its endpoints, its status and log, and a client.

Everything layerloop knows of Prunt's protocol is here, read from recordings of the real server
(``shared/data/prunt/http``: every endpoint on one short print; ``dialect.json``: its log on refused lines):

* **endpoints** — each an :class:`Endpoint`; G-code goes in only over HTTP: ``PUT /uploads/NAME``, then
  ``POST /run-file`` with the name as the body, or ``POST /run-command`` with one line;
* **status** — :func:`parse_status` reads ``GET /status/values`` (position, temperatures, the paused flag,
  the current file and line) into a :class:`PruntStatus`. A file that has run to its end (or to its first
  error) shows as ``<NO FILE> (finished uploads/NAME)``; a G-code task that died answers
  ``{"Fatal_Error": …}`` instead;
* **log** — Prunt's errors never come back over HTTP (``run-command`` answers 204 to a bad line too): they go
  to its log, which the websocket :data:`WEBSOCKET_PATH` sends as ``{"Log": …}``. :func:`parse_log_error`
  reads one into a :class:`PruntLogError` (file, line number, Prunt's exception and message);
* **the client** — :class:`PruntClient` calls the endpoints (stdlib ``urllib``, each call with a timeout); a
  refused call (404, 413, no answer) is a :class:`PruntError` naming the URL and the status.
  :func:`run_to_end` uploads a program, runs it and follows it to its end with the websocket's log.

The ``prunt`` simulation backend that prints through this client is :mod:`sim_bridge.prunt_backend`.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlsplit
from urllib.request import Request, urlopen

DEFAULT_PORT = 8080
"""The port a Prunt serves its web UI and API on."""


@dataclass(frozen=True)
class Endpoint:
    """One Prunt call: its HTTP method and path."""

    http_method: str
    path: str
    """The HTTP path; for uploads the file name follows it."""


UPLOAD = Endpoint("PUT", "/uploads/")
"""Store a file (the body, as it is) under ``uploads/NAME``; 204. Any other folder is a 400."""
DOWNLOAD = Endpoint("GET", "/uploads/")
"""The bytes of an uploaded file, unchanged."""
UPLOADS = Endpoint("GET", "/uploads")
"""The names of the uploaded files (a JSON list)."""
RUN_FILE = Endpoint("POST", "/run-file")
"""Run an uploaded file: the body is its name (without ``uploads/``); 204."""
RUN_COMMAND = Endpoint("POST", "/run-command")
"""Run one line of G-code (the body); 204 for a bad line too: the error goes only to the log."""
STATUS_VALUES = Endpoint("GET", "/status/values")
"""``{"Status": {…}}`` (see :class:`PruntStatus`), or ``{"Fatal_Error": …}`` once the G-code task died."""
STATUS_SCHEMA = Endpoint("GET", "/status/schema")
PAUSE = Endpoint("POST", "/pause/pause")
"""Pause the step generator: it glides to a stop (a cosine ramp of its time step), then reports paused."""
RESUME = Endpoint("POST", "/pause/resume")
CONFIG_VALUES = Endpoint("GET", "/config/values")
"""``{"Values": {"Section$Key": value, …}, "Errors": […]}``."""
SET_CONFIG_VALUES = Endpoint("POST", "/config/values")
"""Patch the config: the body is a JSON object of the keys to change; the answer is as ``GET``'s."""
CONFIG_SCHEMA = Endpoint("GET", "/config/schema")
"""Every setting with its kind and description (58 kB)."""
WEBSOCKET_PATH = "/websocket/everything"
"""The websocket: ``{"Server_Start_Time": …}`` first, then ``{"Status": …}`` once a second and every log
line as ``{"Log": …}``."""

UPLOAD_DIR = "uploads/"
"""The folder of uploaded files, as ``Current_File_Name`` names them."""
NO_FILE = "<NO FILE>"
"""``Current_File_Name`` of a Prunt that has run no file."""
FINISHED_RE = re.compile(r"^<NO FILE> \(finished uploads/(.*)\)$")
"""``Current_File_Name`` once a file's last block (or its first error) has run."""
MAX_BODY_BYTES = 100_000
"""Prunt's request buffer for ``POST`` bodies: a longer one is a 413 (``LENGTH_ERROR``)."""
DEFAULT_TIMEOUT_S = 10.0
"""How long one HTTP call may take unless the client is told otherwise."""
POLL_INTERVAL_S = 0.1
"""How often :func:`run_to_end` reads the status: the resolution of the run's wall time."""
LOG_SETTLE_S = 3.0
"""How long :func:`run_to_end` waits, after the file finished, for a websocket status at least as new (Prunt
sends one a second; the log lines before it have then arrived)."""
UNSAFE_NAME_CHARS = ("/", "\\", "\r", "\n", "\0")
"""Characters :meth:`PruntClient.upload` refuses in a file name (a folder, or a broken request line)."""


class PruntError(RuntimeError):
    """A call Prunt refused or could not answer: ``status`` is the HTTP status (0: no answer at all),
    ``message`` Prunt's reply (the first lines of its traceback for a 413)."""

    def __init__(self, url: str, status: int, message: str) -> None:
        super().__init__(f"Prunt {url}: {status or 'no answer'}: {message}")
        self.url = url
        self.status = status
        self.message = message


class PrintTimeout(TimeoutError):
    """A file that did not finish in its time (Prunt has no cancel: it is still running there)."""


# -- status and log ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PruntStatus:
    """One ``GET /status/values`` (or websocket ``Status``) answer."""

    time_s: float
    """``Time``: Prunt's monotonic clock (its machine's uptime), not a print time."""
    position_mm: tuple[float, float, float, float]
    """X, Y, Z, E of the last step the step generator emitted."""
    paused: bool
    """``Stepgen_Is_Paused``: true once a pause has brought the motion to rest."""
    file_name: str
    """``Current_File_Name`` as Prunt writes it: ``uploads/NAME`` while it runs (see :attr:`running`)."""
    file_line: int
    """``Current_File_Line``: the line the G-code handler last read."""
    temperatures_c: dict[str, float] = field(default_factory=dict)
    """``Thermistor_Temperatures`` by thermistor name."""
    heater_powers: dict[str, float] = field(default_factory=dict)
    fatal_error: str | None = None
    """The exception that killed Prunt's G-code task (the status then has nothing else)."""

    @property
    def running(self) -> str | None:
        """The name of the file being run, or ``None``."""
        return self.file_name.removeprefix(UPLOAD_DIR) if self.file_name.startswith(UPLOAD_DIR) else None

    @property
    def finished(self) -> str | None:
        """The name of the file that has just finished, or ``None``."""
        match = FINISHED_RE.match(self.file_name)
        return match.group(1) if match else None


def parse_status(payload: Mapping[str, Any]) -> PruntStatus:
    """A :class:`PruntStatus` from ``{"Status": …}`` or ``{"Fatal_Error": …}``; :class:`ValueError` if neither.

    >>> parse_status({"Status": {"Time": 6903.1, "Position": {"X_AXIS": 64.3, "Y_AXIS": 110.0, "Z_AXIS": 0.2,
    ...     "E_AXIS": 0.0}, "Stepgen_Is_Paused": False, "Current_File_Name": "uploads/speeds.gcode",
    ...     "Current_File_Line": 8}}).running
    'speeds.gcode'
    """
    if isinstance(payload.get("Fatal_Error"), str):
        return PruntStatus(0.0, (0.0, 0.0, 0.0, 0.0), False, "", 0, fatal_error=payload["Fatal_Error"])
    try:
        status = payload["Status"]
        pos = status["Position"]
        return PruntStatus(
            time_s=float(status["Time"]),
            position_mm=tuple(float(pos[a]) for a in ("X_AXIS", "Y_AXIS", "Z_AXIS", "E_AXIS")),  # type: ignore[arg-type]
            paused=bool(status["Stepgen_Is_Paused"]), file_name=str(status["Current_File_Name"]),
            file_line=int(status["Current_File_Line"]),
            temperatures_c={k: float(v) for k, v in status.get("Thermistor_Temperatures", {}).items()},
            heater_powers={k: float(v) for k, v in status.get("Heater_Powers", {}).items()})
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"not a Prunt status ({STATUS_VALUES.path}): lacks {exc}") from None


@dataclass(frozen=True)
class PruntLogError:
    """An error Prunt logged: where, and what its exception said."""

    message: str
    """The log line itself (its first line: the traceback below it is dropped)."""
    error: str
    """Prunt's own text, e.g. ``Parameter 'Q' not valid for command on line.``"""
    exception: str
    """The exception's last name: ``BAD_LINE``, ``OUT_OF_BOUNDS_ERROR``, ``COMMAND_CONSTRAINT_ERROR`` …"""
    file: str | None = None
    """The file's name (without ``uploads/``), ``None`` for a ``run-command`` line or a fatal error."""
    line: int | None = None
    """The 1-based line of the file (Prunt counts ``\\n``-separated lines)."""
    gcode: str = ""
    """The refused line as Prunt quotes it."""
    fatal: bool = False
    """Prunt's G-code task died (``raised … : Command not implemented.``): nothing runs until a restart."""


_LOG_ERROR_RE = re.compile(r"^Error (?:parsing|running) (?:line in file uploads/(?P<file>.*?) on line\s+"
                           r"(?P<line>\d+)|manual command) \((?P<gcode>.*)\): raised (?P<exc>\S+) : (?P<text>.*)$")
_FATAL_RE = re.compile(r"^raised (?P<exc>\S+) : (?P<text>.*)$")


def parse_log_error(log: str) -> PruntLogError | None:
    """The error of one Prunt log message, or ``None`` for a line that is not one (``Setup done.``).

    >>> e = parse_log_error("Error parsing line in file uploads/t.gcode on line  2 (G1 X5 Y5 Q1): raised "
    ...     "PRUNT_SIMULATOR.MY_CONTROLLER.MY_GCODE_HANDLER.MY_GCODE_PARSER.BAD_LINE : Parameter 'Q' not valid "
    ...     "for command on line.\\n[prunt_simulator]\\n0x560bd8ea9115 Prunt_Simulator...")
    >>> e.file, e.line, e.exception, e.error
    ('t.gcode', 2, 'BAD_LINE', "Parameter 'Q' not valid for command on line.")
    """
    # Only "\n" ends the message's first line: a CRLF file's "\r" stays in the quoted G-code.
    first = log.split("\n", 1)[0]
    match = _LOG_ERROR_RE.match(first)
    if match:
        return PruntLogError(first, match["text"].strip(), match["exc"].rsplit(".", 1)[-1], match["file"],
                             int(match["line"]) if match["line"] else None, match["gcode"])
    match = _FATAL_RE.match(first)
    if match:
        return PruntLogError(first, match["text"].strip(), match["exc"].rsplit(".", 1)[-1], fatal=True)
    return None


# -- the client ----------------------------------------------------------------------------------------------
class PruntClient:
    """Prunt's HTTP API at ``url`` (``http://host:port``). Each method is one endpoint; a refused call raises
    :class:`PruntError`, so a caller never reads error bodies."""

    def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Prunt url {url!r}: must be http://host[:port]")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s = {timeout_s}: must be > 0 (seconds)")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    @property
    def websocket_url(self) -> str:
        """The URL of :data:`WEBSOCKET_PATH` on this Prunt (``ws://`` or ``wss://``)."""
        return "ws" + self.url.removeprefix("http") + WEBSOCKET_PATH

    # -- one method per endpoint
    def upload(self, name: str, content: bytes | str) -> None:
        """Store ``content`` as ``uploads/NAME`` (an existing file of that name is replaced)."""
        bad = [c for c in UNSAFE_NAME_CHARS if c in name]
        if not name or bad or name in (".", ".."):
            raise ValueError(f"upload file name {name!r}: must be a plain file name, without "
                             f"{', '.join(repr(c) for c in bad) or 'a folder'}")
        data = content.encode("utf-8") if isinstance(content, str) else content
        self._request(UPLOAD, UPLOAD.path + quote(name), data)

    def download(self, name: str) -> bytes:
        """The bytes of ``uploads/NAME``, as Prunt stored them."""
        return self._request(DOWNLOAD, DOWNLOAD.path + quote(name))

    def uploads(self) -> list[str]:
        """The names of the uploaded files."""
        return [str(n) for n in self._json(UPLOADS)]

    def run_file(self, name: str) -> None:
        """Start ``uploads/NAME``; Prunt queues it behind what is running (follow it with :func:`run_to_end`)."""
        self._request(RUN_FILE, RUN_FILE.path, name.encode("utf-8"))

    def run_command(self, line: str) -> None:
        """Run one G-code line. A bad line is accepted too (204): its error is only in the log
        (:class:`PruntLog`)."""
        if "\n" in line.rstrip("\n"):
            raise ValueError(f"run_command takes one line, got {line.count(chr(10)) + 1}")
        self._request(RUN_COMMAND, RUN_COMMAND.path, line.rstrip("\n").encode("utf-8"))

    def status(self) -> PruntStatus:
        return parse_status(self.status_values())

    def status_values(self) -> dict[str, Any]:
        """``GET /status/values`` as Prunt answered it."""
        return dict(self._json(STATUS_VALUES))

    def status_schema(self) -> dict[str, Any]:
        return dict(self._json(STATUS_SCHEMA))

    def pause(self) -> None:
        self._request(PAUSE, PAUSE.path, b"")

    def resume(self) -> None:
        self._request(RESUME, RESUME.path, b"")

    def config_values(self) -> dict[str, Any]:
        """Every setting, by its ``Section$…$Key`` path."""
        return dict(self._json(CONFIG_VALUES)["Values"])

    def set_config_values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Change the settings in ``values``; returns the new values. Keys Prunt refuses raise
        :class:`PruntError` with its ``Errors``."""
        body = json.dumps(dict(values)).encode("utf-8")
        answer = json.loads(self._request(SET_CONFIG_VALUES, SET_CONFIG_VALUES.path, body))
        errors = answer.get("Errors") or []
        if errors:
            text = "; ".join(f"{e.get('Key')}: {e.get('Message')}" if isinstance(e, dict) else str(e)
                             for e in errors)
            raise PruntError(self.url + SET_CONFIG_VALUES.path, 200, f"config refused: {text}")
        return dict(answer["Values"])

    def config_schema(self) -> dict[str, Any]:
        return dict(self._json(CONFIG_SCHEMA))

    # -- plumbing
    def _json(self, endpoint: Endpoint) -> Any:
        raw = self._request(endpoint, endpoint.path)
        try:
            return json.loads(raw)
        except ValueError:
            raise PruntError(self.url + endpoint.path, 200, f"not JSON: {raw[:200]!r}") from None

    def _request(self, endpoint: Endpoint, path: str, body: bytes | None = None) -> bytes:
        url = self.url + path
        headers = {"Content-Type": "text/plain; charset=UTF-8"} if body is not None else {}
        request = Request(url, data=body, headers=headers, method=endpoint.http_method)
        try:
            with urlopen(request, timeout=self.timeout_s) as response:
                return bytes(response.read())
        except HTTPError as exc:
            raise PruntError(url, exc.code, _error_text(exc.code, exc.read())) from None
        except (URLError, OSError) as exc:
            raise PruntError(url, 0, str(getattr(exc, "reason", exc))) from None


def _error_text(status: int, body: bytes) -> str:
    """Prunt's reply, shortened: a 413's body is an Ada traceback, whose first line says enough."""
    text = body.decode("utf-8", "replace").strip()
    if status == 413:
        return f"request body over Prunt's {MAX_BODY_BYTES}-byte buffer ({text.splitlines()[0] if text else ''})"
    return text[:500] or "(empty reply)"


# -- the websocket log -------------------------------------------------------------------------------------
class PruntLog:
    """Prunt's websocket (:data:`WEBSOCKET_PATH`), read in a thread of its own while it is open (a context
    manager): every ``Log`` message, and the latest ``Status``. Where it cannot connect, :attr:`connected` is
    false and :attr:`problem` says why; nothing is raised, since the status can still be polled."""

    def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.connected = False
        self.problem = ""
        self._messages: list[str] = []
        self._status: dict[str, Any] | None = None
        self._changed = threading.Condition()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prunt-log", daemon=True)

    def __enter__(self) -> PruntLog:
        self._thread.start()
        if not self._ready.wait(self.timeout_s) and not self.problem:
            self.problem = f"{self.url}: no websocket connection after {self.timeout_s:g} s"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 2.0)

    def messages(self) -> list[str]:
        """The ``Log`` messages so far (since :meth:`clear`), in order."""
        with self._changed:
            return list(self._messages)

    def clear(self) -> None:
        with self._changed:
            self._messages.clear()

    def latest_status(self) -> dict[str, Any] | None:
        """The last ``Status`` object the websocket sent."""
        with self._changed:
            return self._status

    def wait_for_status(self, time_s: float, limit_s: float) -> bool:
        """Wait (at most ``limit_s``) for a websocket status of Prunt's clock ``time_s`` or later: the log
        messages sent before it have then arrived. False where none came."""
        def fresh() -> bool:
            return not self.connected or (self._status is not None and
                                          float(self._status.get("Time", 0.0)) >= time_s)

        with self._changed:
            return self._changed.wait_for(fresh, limit_s) and self.connected

    def _run(self) -> None:
        try:
            asyncio.run(self._read())
        except Exception as exc:  # noqa: BLE001 - any failure leaves the log unread; the caller polls
            self.problem = f"{self.url}: {type(exc).__name__}: {exc}"
        finally:
            self.connected = False
            self._ready.set()
            with self._changed:
                self._changed.notify_all()

    async def _read(self) -> None:
        # aiohttp (the Moonraker follower's websocket library too) loads only when a log is read.
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout_s, sock_connect=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.ws_connect(
                self.url, timeout=aiohttp.ClientWSTimeout(ws_close=1.0)) as ws:
            self.connected = True
            self._ready.set()
            while not self._stop.is_set():
                try:
                    message = await ws.receive(timeout=0.1)
                except TimeoutError:
                    continue
                if message.type == aiohttp.WSMsgType.TEXT:
                    self._take(message.data)
                elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                      aiohttp.WSMsgType.ERROR):
                    self.problem = f"{self.url}: websocket closed by Prunt"
                    return

    def _take(self, text: str) -> None:
        try:
            payload = json.loads(text)
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        with self._changed:
            if isinstance(payload.get("Log"), str):
                self._messages.append(payload["Log"])
            elif isinstance(payload.get("Status"), dict):
                self._status = payload["Status"]
            self._changed.notify_all()


# -- running a file to its end -------------------------------------------------------------------------------
@dataclass
class PruntRun:
    """What :func:`run_to_end` saw of one file, from ``run-file`` to its end."""

    name: str
    """The name the file ran under (``uploads/NAME``)."""
    status: PruntStatus
    """The first status that said the file finished (or the fatal error)."""
    start_time_s: float
    """Prunt's clock (``Time``) at the last status before ``run-file``."""
    end_time_s: float
    """Prunt's clock at :attr:`status` (the last status read, for a fatal error)."""
    errors: list[PruntLogError]
    """The errors Prunt logged meanwhile, in order."""
    log: list[str]
    """Every log message meanwhile (the websocket's ``Log``)."""
    followed_by: str
    """``websocket`` (the log was read) or ``polling`` (it could not be: errors are unseen)."""
    last_line: int = 0
    """The highest ``Current_File_Line`` seen while the file ran."""
    log_problem: str = ""
    """Why the websocket could not be read (``followed_by == "polling"``)."""

    @property
    def wall_time_s(self) -> float:
        """Prunt's clock from before ``run-file`` to the first status that said finished (±
        :data:`POLL_INTERVAL_S`)."""
        return max(0.0, self.end_time_s - self.start_time_s)


def run_to_end(client: PruntClient, name: str, data: bytes, timeout_s: float) -> PruntRun:
    """Upload ``data`` as ``uploads/NAME``, run it and follow it until Prunt says it finished.

    The websocket is connected first, so that no log line of the run is missed; the status is polled over
    HTTP every :data:`POLL_INTERVAL_S`. A Prunt already running a file is a :class:`PruntError` (it would
    queue this one behind it); a file still running after ``timeout_s`` is a :class:`PrintTimeout`.
    """
    with PruntLog(client.websocket_url, client.timeout_s) as log:
        before = client.status()
        if before.fatal_error:
            raise PruntError(client.url, 200, f"Prunt's G-code task has died (restart Prunt): "
                             f"{before.fatal_error.splitlines()[0]}")
        if before.running is not None:
            raise PruntError(client.url, 200, f"busy: running uploads/{before.running} "
                             f"(line {before.file_line})")
        if before.finished == name:
            # The status would say finished before this run started: a name of its own tells them apart.
            name = f"{name.removesuffix('.gcode')}-{time.monotonic_ns() % 10**9:09d}.gcode"
        client.upload(name, data)
        log.clear()
        client.run_file(name)
        deadline, last_line, status = time.monotonic() + timeout_s, 0, before
        while True:
            status = client.status()
            if status.running == name:
                last_line = max(last_line, status.file_line)
            if status.fatal_error or status.finished == name:
                break
            if time.monotonic() > deadline:
                raise PrintTimeout(f"uploads/{name} not finished after {timeout_s:g} s ({status.file_name}, "
                                   f"line {status.file_line}); Prunt has no cancel: pause it or restart it")
            time.sleep(POLL_INTERVAL_S)
        end_time_s = status.time_s if not status.fatal_error else _time_of_last(log, before)
        if not status.fatal_error:
            log.wait_for_status(end_time_s, LOG_SETTLE_S)
        # Read while the websocket is open: closing it clears ``connected``.
        messages, followed_by = log.messages(), "websocket" if log.connected else "polling"
    return PruntRun(name, status, before.time_s, end_time_s, [e for e in map(parse_log_error, messages) if e],
                    messages, followed_by, last_line, log.problem)


def _time_of_last(log: PruntLog, before: PruntStatus) -> float:
    """Prunt's clock at its last websocket status (the HTTP status of a dead task has none)."""
    latest = log.latest_status()
    return float(latest.get("Time", before.time_s)) if latest else before.time_s
