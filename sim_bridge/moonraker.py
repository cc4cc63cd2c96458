"""Moonraker, the API server of a Klipper printer: its endpoints, and parsers of the payloads layerloop reads.

Everything layerloop knows of Moonraker's protocol is here, so that the deployment gate
(:mod:`safety.gate`), the real-world importer (:mod:`training.import_real`) and the bridges to come spell
no endpoint, object or field of their own:

* **endpoints** — each an :class:`Endpoint` (HTTP method and path, and the JSON-RPC method of the same call
  over Moonraker's websocket); the API key travels in the :data:`API_KEY_HEADER` header. The
  ``/printer/…`` routes exist only while Klippy is connected (503 or 404 before);
* **printer state** — :func:`parse_printer_state` reads the status objects of an objects query
  (:data:`STATE_OBJECTS`) into a :class:`PrinterState`;
* **job history** — :func:`history_jobs` finds the ``jobs`` of a history response and
  :func:`parse_history_job` checks one into a :class:`HistoryJob`; :data:`HISTORY_STATUSES` says what each
  job status means for the print.

* **the client** — :class:`MoonrakerClient` calls these endpoints over HTTP (stdlib ``urllib``, every call
  with a timeout); a refused call is a :class:`MoonrakerError` carrying Moonraker's (or Klipper's) message;
  :func:`follow_print` follows a print over the websocket (``moonraker-api``), polling where that fails;
The ``moonraker`` simulation backend that prints through this client is
:mod:`sim_bridge.moonraker_backend`.

The parsers open no connection; the client and the follower are the only code of layerloop that talks to
Moonraker (the backend and the virtual printer go through them).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlencode, urlsplit
from urllib.request import Request, urlopen

DEFAULT_PORT = 7125
"""The port Moonraker listens on unless its config says otherwise."""
API_KEY_HEADER = "X-Api-Key"
"""The HTTP header that carries a Moonraker API key (clients outside ``trusted_clients`` need one)."""


@dataclass(frozen=True)
class Endpoint:
    """One Moonraker call: its HTTP method and path, and the JSON-RPC method of the same call."""

    http_method: str
    """``GET`` or ``POST``."""
    path: str
    """The HTTP path (arguments go in the query string, or the multipart form of an upload)."""
    rpc_method: str
    """The JSON-RPC method over the websocket (``""`` where there is none: uploads are HTTP only)."""


SERVER_INFO = Endpoint("GET", "/server/info", "server.info")
"""Moonraker's own state, including ``klippy_state`` (``ready``, ``startup``, ``shutdown``, ``error``)."""
FILES_UPLOAD = Endpoint("POST", "/server/files/upload", "")
"""Multipart upload of a G-code file (form field ``file``; ``root`` defaults to ``gcodes``)."""
PRINT_START = Endpoint("POST", "/printer/print/start", "printer.print.start")
"""Start printing an uploaded file (argument ``filename``, relative to the ``gcodes`` root)."""
PRINT_PAUSE = Endpoint("POST", "/printer/print/pause", "printer.print.pause")
PRINT_RESUME = Endpoint("POST", "/printer/print/resume", "printer.print.resume")
PRINT_CANCEL = Endpoint("POST", "/printer/print/cancel", "printer.print.cancel")
EMERGENCY_STOP = Endpoint("POST", "/printer/emergency_stop", "printer.emergency_stop")
"""Klipper's M112: heaters and motors off at once; the printer needs a firmware restart afterwards."""
FIRMWARE_RESTART = Endpoint("POST", "/printer/firmware_restart", "printer.firmware_restart")
GCODE_SCRIPT = Endpoint("POST", "/printer/gcode/script", "printer.gcode.script")
"""Run G-code (argument ``script``, lines separated by newlines); answers when Klipper has run it."""
OBJECTS_QUERY = Endpoint("GET", "/printer/objects/query", "printer.objects.query")
"""Read Klipper's status objects (see :data:`QUERIED_OBJECTS` and :func:`objects_query_path`)."""
HISTORY_LIST = Endpoint("GET", "/server/history/list", "server.history.list")
"""The print job history, newest first (``limit``, ``start``, ``since``, ``before``, ``order``)."""
PRINTER_INFO = Endpoint("GET", "/printer/info", "printer.info")
"""Klippy's own state and ``state_message`` (its config error, or the reason of a shutdown)."""
OBJECTS_SUBSCRIBE = Endpoint("POST", "/printer/objects/subscribe", "printer.objects.subscribe")
"""Subscribe to status objects: the result is their current state, changes arrive as
:data:`STATUS_NOTIFICATION` (over the websocket only)."""
FILES_DOWNLOAD = Endpoint("GET", "/server/files/gcodes/", "")
"""Download an uploaded G-code file: the file name (relative to the ``gcodes`` root) follows the path."""
FILES_LIST = Endpoint("GET", "/server/files/list", "server.files.list")
"""The files of a root (``root``, default ``gcodes``): each with ``path``, ``size``, ``modified``."""
STATUS_NOTIFICATION = "notify_status_update"
"""The websocket notification carrying changed status fields (params: ``[changes, eventtime]``)."""

QUERIED_OBJECTS = ("webhooks", "print_stats", "extruder", "heater_bed", "virtual_sdcard", "toolhead")
"""The Klipper status objects layerloop reads (all of their fields)."""
STATE_OBJECTS = ("webhooks", "print_stats", "extruder", "heater_bed")
"""The objects :func:`parse_printer_state` needs."""
KLIPPY_READY = "ready"
"""``webhooks.state`` of a Klippy that accepts commands."""
IDLE_PRINT_STATES = ("standby", "complete", "cancelled")
"""``print_stats.state`` values of a printer that is not printing (the others: ``printing``, ``paused``,
``error``)."""


def objects_query_path(objects: Sequence[str] = QUERIED_OBJECTS) -> str:
    """The path and query string of an objects query for every field of ``objects``.

    >>> objects_query_path(("webhooks", "heater_bed"))
    '/printer/objects/query?webhooks&heater_bed'
    """
    return OBJECTS_QUERY.path + "?" + "&".join(quote(name, safe="") for name in objects)


# -- printer state -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrinterState:
    """What the printer reports before a deployment (from :data:`STATE_OBJECTS`)."""

    klippy_state: str
    """``webhooks.state``: ``ready``, ``startup``, ``shutdown`` or ``error``."""
    print_state: str
    """``print_stats.state``: ``standby``, ``printing``, ``paused``, ``complete``, ``cancelled`` or ``error``."""
    hotend_temp_c: float
    """``extruder.temperature``."""
    hotend_target_c: float
    """``extruder.target``."""
    bed_temp_c: float
    """``heater_bed.temperature``."""
    bed_target_c: float
    """``heater_bed.target``."""


def parse_printer_state(payload: Mapping[str, Any]) -> PrinterState:
    """A :class:`PrinterState` from an objects query for :data:`STATE_OBJECTS`.

    ``payload`` is the ``status`` mapping, or the whole response (``{"result": {"status": …}}`` over HTTP,
    ``{"status": …}`` as a JSON-RPC result). A missing object or field is a :class:`ValueError`: the state
    is then unknown.

    >>> parse_printer_state({"result": {"eventtime": 1.0, "status": {
    ...     "webhooks": {"state": "ready"}, "print_stats": {"state": "standby"},
    ...     "extruder": {"temperature": 25.1, "target": 0.0}, "heater_bed": {"temperature": 24, "target": 0}}}})
    PrinterState(klippy_state='ready', print_state='standby', hotend_temp_c=25.1, hotend_target_c=0.0, bed_temp_c=24.0, bed_target_c=0.0)
    """
    status: Any = payload
    if isinstance(status, Mapping) and isinstance(status.get("result"), Mapping):
        status = status["result"]
    if isinstance(status, Mapping) and isinstance(status.get("status"), Mapping):
        status = status["status"]
    try:
        return PrinterState(klippy_state=str(status["webhooks"]["state"]),
                            print_state=str(status["print_stats"]["state"]),
                            hotend_temp_c=float(status["extruder"]["temperature"]),
                            hotend_target_c=float(status["extruder"]["target"]),
                            bed_temp_c=float(status["heater_bed"]["temperature"]),
                            bed_target_c=float(status["heater_bed"]["target"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"printer status lacks {exc}: query {', '.join(STATE_OBJECTS)}") from None


# -- job history ---------------------------------------------------------------------------------------------
HISTORY_STATUSES: dict[str, tuple[str, bool | None]] = {
    "completed": ("completed", True),
    "cancelled": ("cancelled", False),
    "error": ("error", False),
    "klippy_shutdown": ("error", False),
    "klippy_disconnect": ("error", False),
    "interrupted": ("unknown", None),
    "in_progress": ("unknown", None),
}
"""Moonraker job status → (``outcome``, ``success``). ``interrupted`` means Moonraker itself stopped: the
print may have gone on, so its outcome is unknown."""


@dataclass(frozen=True)
class HistoryJob:
    """One job of Moonraker's history (times in unix seconds, durations in seconds, filament in mm)."""

    job_id: str
    filename: str
    """As Moonraker stores it: relative to its ``gcodes`` root."""
    status: str
    """One of :data:`HISTORY_STATUSES`."""
    start_time: float
    end_time: float | None
    print_duration: float | None
    """Time spent printing (pauses excluded)."""
    total_duration: float | None
    filament_used: float | None
    line: int = 0
    """Line of a saved response where the job's object starts (0: unknown), for error messages."""

    @property
    def sort_key(self) -> tuple[float, float, str]:
        """Latest last: by ``end_time`` (a job without one, still running or cut off, is the latest)."""
        return (self.end_time if self.end_time is not None else math.inf, self.start_time, self.job_id)

    def as_dict(self) -> dict[str, Any]:
        """The job's fields under Moonraker's names (without ``line``)."""
        return {"job_id": self.job_id, "filename": self.filename, "status": self.status,
                "start_time": self.start_time, "end_time": self.end_time, "print_duration": self.print_duration,
                "total_duration": self.total_duration, "filament_used": self.filament_used}


def history_jobs(response: Any) -> list[Any]:
    """The ``jobs`` list of a history response (``{"result": {"count": N, "jobs": […]}}`` over HTTP, or the
    JSON-RPC result ``{"count": N, "jobs": […]}``), each entry unchecked; :class:`ValueError` if there is none."""
    body = response.get("result", response) if isinstance(response, dict) else None
    jobs = body.get("jobs") if isinstance(body, dict) else None
    if not isinstance(jobs, list):
        raise ValueError(f'not a Moonraker history response: expected {{"result": {{"count": N, "jobs": [...]}}}} '
                         f"({HISTORY_LIST.http_method} {HISTORY_LIST.path})")
    return jobs


def parse_history_job(job: Any, index: int, line: int = 0) -> HistoryJob:
    """Check one entry of :func:`history_jobs` (the ``index``-th); :class:`ValueError` says what is wrong."""
    if not isinstance(job, dict):
        raise ValueError(f"jobs[{index}] is {type(job).__name__}, not an object")
    filename, status, job_id = job.get("filename"), job.get("status"), job.get("job_id")
    if not isinstance(filename, str) or not filename.strip():
        raise ValueError(f"filename = {json.dumps(filename)}: must be a file name")
    if status not in HISTORY_STATUSES:
        raise ValueError(f"status = {json.dumps(status)}: must be one of {', '.join(HISTORY_STATUSES)}")
    if not isinstance(job_id, str) or not job_id:
        raise ValueError(f"job_id = {json.dumps(job_id)}: must be a non-empty string")
    return HistoryJob(job_id=job_id, filename=filename.strip(), status=status,
                      start_time=float(_number(job, "start_time", required=True) or 0.0),
                      end_time=_number(job, "end_time"), print_duration=_number(job, "print_duration"),
                      total_duration=_number(job, "total_duration"), filament_used=_number(job, "filament_used"),
                      line=line)


def _number(job: dict[str, Any], key: str, required: bool = False) -> float | None:
    """A finite number >= 0 (unix time, seconds or mm); ``None`` if absent and not required."""
    value = job.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{key} = {json.dumps(value)}: must be a number >= 0 (seconds or mm)")
    return float(value)


# -- the client ----------------------------------------------------------------------------------------------
DEFAULT_TIMEOUT_S = 10.0
"""How long one HTTP call may take unless the client is told otherwise."""
FOLLOWED_OBJECTS = ("webhooks", "print_stats", "virtual_sdcard", "toolhead", "extruder", "heater_bed")
"""The status objects a followed print reports (all of their fields)."""
FINISHED_PRINT_STATES = ("complete", "error", "cancelled")
"""``print_stats.state`` values that end a followed print."""
HALTED_KLIPPY_STATES = ("shutdown", "error")
"""``webhooks.state`` values that also end a followed print: a Klippy shutdown (M112, an MCU error) leaves
``print_stats.state`` at ``paused`` or ``printing`` until a firmware restart, so waiting for it would wait
the whole timeout."""
UNSAFE_FILENAME_CHARS = ('"', "\r", "\n", "/")
"""Characters :meth:`MoonrakerClient.upload` refuses in a file name: they would break out of the quoted
``Content-Disposition`` field (``"``, CR, LF) or name a folder (``/``)."""
POLL_INTERVAL_S = 0.2
"""How often :func:`follow_print` polls where the websocket is not available."""


class MoonrakerError(RuntimeError):
    """A call Moonraker refused or could not answer: ``status`` is the HTTP status (0: no answer at all),
    ``message`` Moonraker's message (for ``gcode/script``, Klipper's own, e.g. ``Move out of range: …``)."""

    def __init__(self, endpoint: str, status: int, message: str) -> None:
        super().__init__(f"{endpoint}: {status or 'no answer'}: {message}")
        self.endpoint = endpoint
        self.status = status
        self.message = message


class MoonrakerClient:
    """Moonraker's HTTP API at ``url`` (``http://host:port``), with an API key or as a trusted client.

    Each method is one endpoint and returns the JSON ``result`` (``download`` the file's bytes); a refused
    call raises :class:`MoonrakerError` with Moonraker's message, so a caller never parses error bodies.
    """

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Moonraker url {url!r}: must be http://host[:port]")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s = {timeout_s}: must be > 0 (seconds)")
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    # -- one method per endpoint
    def server_info(self) -> dict[str, Any]:
        """Moonraker's state; ``klippy_state`` says whether Klippy is ``ready``."""
        return self._call(SERVER_INFO)

    def printer_info(self) -> dict[str, Any]:
        """Klippy's ``state`` and ``state_message`` (its config error or the reason of a shutdown)."""
        return self._call(PRINTER_INFO)

    def upload(self, filename: str, content: bytes | str) -> dict[str, Any]:
        """Upload G-code as ``filename`` into the ``gcodes`` root (multipart form, as a browser sends it)."""
        bad = [c for c in UNSAFE_FILENAME_CHARS if c in filename]
        if not filename or bad:
            raise ValueError(f"upload file name {filename!r}: must be non-empty, without "
                             f"{', '.join(repr(c) for c in bad) or 'those characters'}")
        data = content.encode("utf-8") if isinstance(content, str) else content
        boundary = f"layerloop{uuid.uuid4().hex}"
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n")
        body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
        return self._call(FILES_UPLOAD, body=body, content_type=f"multipart/form-data; boundary={boundary}")

    def download(self, filename: str) -> bytes:
        """The bytes of an uploaded file (to check that what runs is what was approved)."""
        return self._request(FILES_DOWNLOAD, FILES_DOWNLOAD.path + quote(filename), None, None)

    def files(self) -> list[str]:
        """The paths of the files in the ``gcodes`` root."""
        return [str(f.get("path", f.get("filename", ""))) for f in self._call(FILES_LIST, {"root": "gcodes"})]

    def print_start(self, filename: str) -> dict[str, Any]:
        return self._call(PRINT_START, {"filename": filename})

    def print_pause(self) -> dict[str, Any]:
        return self._call(PRINT_PAUSE)

    def print_resume(self) -> dict[str, Any]:
        return self._call(PRINT_RESUME)

    def print_cancel(self) -> dict[str, Any]:
        return self._call(PRINT_CANCEL)

    def objects_query(self, objects: Sequence[str] = QUERIED_OBJECTS) -> dict[str, Any]:
        """Every field of ``objects``: the ``status`` mapping (object name → fields)."""
        path = objects_query_path(objects)
        return dict(self._result(OBJECTS_QUERY, self._request(OBJECTS_QUERY, path, None, None))["status"])

    def printer_state(self) -> PrinterState:
        return parse_printer_state(self.objects_query(STATE_OBJECTS))

    def gcode_script(self, script: str, timeout_s: float | None = None) -> dict[str, Any]:
        """Run G-code; a line Klipper refuses is a :class:`MoonrakerError` (400) with Klipper's message."""
        return self._call(GCODE_SCRIPT, {"script": script}, timeout_s=timeout_s)

    def emergency_stop(self) -> dict[str, Any]:
        return self._call(EMERGENCY_STOP)

    def firmware_restart(self) -> dict[str, Any]:
        return self._call(FIRMWARE_RESTART)

    def history(self, limit: int = 50) -> list[HistoryJob]:
        """The job history, newest first, each job checked by :func:`parse_history_job`."""
        return [parse_history_job(job, i) for i, job in enumerate(history_jobs(self.history_response(limit)))]

    def history_response(self, limit: int = 50) -> dict[str, Any]:
        """The history as Moonraker answers it (``{"count": N, "jobs": […]}``), for saving."""
        return dict(self._call(HISTORY_LIST, {"limit": limit}))

    # -- plumbing
    def _call(self, endpoint: Endpoint, args: Mapping[str, Any] | None = None, *, body: bytes | None = None,
              content_type: str | None = None, timeout_s: float | None = None) -> dict[str, Any]:
        path = endpoint.path
        if args and endpoint.http_method == "GET":
            path += "?" + urlencode(args)
        elif args:
            body, content_type = json.dumps(dict(args)).encode(), "application/json"
        raw = self._request(endpoint, path, body, content_type, timeout_s)
        return self._result(endpoint, raw)

    def _result(self, endpoint: Endpoint, raw: bytes) -> Any:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise MoonrakerError(endpoint.path, 200, f"not a Moonraker answer: {raw[:200]!r}")
        # Most answers wrap their result; an upload's is the object itself.
        return body.get("result", body)

    def _request(self, endpoint: Endpoint, path: str, body: bytes | None, content_type: str | None,
                 timeout_s: float | None = None) -> bytes:
        headers = {"Content-Type": content_type} if content_type else {}
        if self.api_key:
            headers[API_KEY_HEADER] = self.api_key
        if endpoint.http_method == "POST" and body is None:
            body = b""
        request = Request(self.url + path, data=body, headers=headers, method=endpoint.http_method)
        try:
            with urlopen(request, timeout=timeout_s or self.timeout_s) as response:
                return bytes(response.read())
        except HTTPError as exc:
            raise MoonrakerError(endpoint.path, exc.code, _error_message(exc.read())) from None
        except (URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MoonrakerError(endpoint.path, 0, f"{self.url}: {reason}") from None


def _error_message(body: bytes) -> str:
    """Moonraker's message from an error body (``{"error": {"code": …, "message": …}}``), else the body."""
    try:
        error = json.loads(body)["error"]
        return str(error["message"] if isinstance(error, dict) else error)
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:500]


# -- following a print ---------------------------------------------------------------------------------------
class PrintTimeout(TimeoutError):
    """A followed print that did not finish in its time."""


def follow_print(client: MoonrakerClient, timeout_s: float,
                 on_update: Callable[[dict[str, Any]], None] | None = None) -> tuple[dict[str, Any], str]:
    """Follow the current print until ``print_stats.state`` is one of :data:`FINISHED_PRINT_STATES` or
    ``webhooks.state`` one of :data:`HALTED_KLIPPY_STATES`.

    Returns the last state of :data:`FOLLOWED_OBJECTS` and how it was followed (``"websocket"`` or
    ``"polling"``). The websocket (``moonraker-api``) is tried first; where it cannot connect or subscribe
    the print is polled instead. ``on_update`` sees each new state. :class:`PrintTimeout` after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    try:
        status = asyncio.run(_follow_websocket(client, deadline, on_update))
        return status, "websocket"
    except PrintTimeout:
        raise
    except Exception:  # noqa: BLE001 - any websocket failure falls back to polling, which says what is wrong
        pass
    while True:
        status = client.objects_query(FOLLOWED_OBJECTS)
        if on_update is not None:
            on_update(status)
        if _finished(status):
            return status, "polling"
        if time.monotonic() > deadline:
            raise PrintTimeout(f"print not finished after {timeout_s:.0f} s "
                               f"(print_stats.state = {status['print_stats'].get('state')!r})")
        time.sleep(POLL_INTERVAL_S)


def _finished(status: Mapping[str, Any]) -> bool:
    return (status.get("print_stats", {}).get("state") in FINISHED_PRINT_STATES
            or status.get("webhooks", {}).get("state") in HALTED_KLIPPY_STATES)


async def _follow_websocket(client: MoonrakerClient, deadline: float,
                            on_update: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    # moonraker-api is an optional path (polling works without it): imported only when a print is followed.
    import aiohttp
    from moonraker_api import MoonrakerClient as WebsocketClient
    from moonraker_api import MoonrakerListener

    changes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    class Listener(MoonrakerListener):  # type: ignore[misc]
        async def on_notification(self, method: str, data: Any) -> None:
            if method == STATUS_NOTIFICATION and isinstance(data, list) and data and isinstance(data[0], dict):
                await changes.put(data[0])

    remaining_s, url = max(1, int(deadline - time.monotonic())), urlsplit(client.url)
    # Our own session, closed below: moonraker-api leaves the one it makes open.
    async with aiohttp.ClientSession() as session:
        ws = WebsocketClient(Listener(), url.hostname, url.port or DEFAULT_PORT, api_key=client.api_key,
                             timeout=min(remaining_s, int(client.timeout_s) + 1), session=session)
        with warnings.catch_warnings():
            # moonraker-api 4.0 passes aiohttp a float receive_timeout, which aiohttp 3.14 deprecates.
            warnings.simplefilter("ignore", DeprecationWarning)
            connected = await ws.connect()
        if not connected:
            raise ConnectionError("websocket did not connect")
        try:
            return await _subscribed(ws, changes, deadline, on_update)
        finally:
            await ws.disconnect()


async def _subscribed(ws: Any, changes: asyncio.Queue[dict[str, Any]], deadline: float,
                      on_update: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """Subscribe to :data:`FOLLOWED_OBJECTS` and merge their changes until the print finishes."""
    result = await ws.call_method(OBJECTS_SUBSCRIBE.rpc_method,
                                  objects={name: None for name in FOLLOWED_OBJECTS})
    if "error" in result:
        raise ConnectionError(f"subscribe refused: {result['error']}")
    status: dict[str, Any] = {name: dict(fields) for name, fields in result["status"].items()}
    if on_update is not None:
        on_update(status)
    while not _finished(status):
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            raise PrintTimeout(f"print not finished in time (print_stats.state = "
                               f"{status['print_stats'].get('state')!r})")
        try:
            change = await asyncio.wait_for(changes.get(), timeout=min(left_s, 1.0))
        except TimeoutError:
            continue
        for name, fields in change.items():
            status.setdefault(name, {}).update(fields)
        if on_update is not None:
            on_update(status)
    return status
