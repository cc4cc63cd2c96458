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

Parsing only: nothing here opens a connection. The HTTP client that calls these endpoints (upload, start,
emergency stop, queries) belongs in this module too, after the parsers, and comes with the work on real
Klipper in the loop (issue 11).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

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
