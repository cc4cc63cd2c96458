"""The virtual MCU's control socket: inject faults, clear them, read the simulated hardware's state.

A Unix stream socket (in the virtual printer's run folder, never a network port); one JSON object per line
in, one JSON object per line out. Requests:

- ``{"status": true}`` → the MCU's clock, config and shutdown state, carriage positions, heater
  temperatures and duties, active faults, CPU seconds used.
- ``{"fault": NAME, …}`` → ``{"ok": true}``; ``{"clear": NAME | "all", …}`` undoes it. The faults, each
  a change to the hardware whose consequence is Klippy's own reaction:

  ===================== ============================== ==================================================
  fault                 parameters                     what Klippy does
  ===================== ============================== ==================================================
  ``heater_disconnected`` ``heater`` (``extruder``,      its ``verify_heater``: "Heater extruder not heating
                        ``heater_bed``)                at expected rate" once a target is set
  ``thermistor_open``   ``heater``                     the MCU's range check: "ADC out of range"
  ``thermistor_shorted`` ``heater``                    the same, from the other end of the range
  ``endstop_stuck``     ``axis`` (``x``, ``y``, ``z``) homing: "No trigger on x after full movement"
  ``serial_disconnect`` –                              "Lost communication with MCU 'mcu'"; clearing it
                                                       plugs the cable back in, which restarts the MCU
                                                       (a USB-powered board), so FIRMWARE_RESTART
                                                       reconnects
  ``stall``             ``seconds``                    the MCU stops running that long: a short stall
                                                       makes its timers late ("Timer too close"), a long
                                                       one loses Klippy's clock sync ("Lost communication")
  ===================== ============================== ==================================================

:func:`request` is the client (what :class:`sim_bridge.virtual_printer.VirtualPrinter` and the tests use).
"""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path
from typing import Any, Protocol

FAULTS = ("heater_disconnected", "thermistor_open", "thermistor_shorted", "endstop_stuck", "serial_disconnect",
          "stall")
"""Faults the MCU can be given (see the module docstring)."""
REQUEST_TIMEOUT_S = 5.0
MAX_LINE = 4096


class ControlError(RuntimeError):
    """The MCU refused a control request (names what was wrong and what is allowed)."""


class _Mcu(Protocol):
    heaters: dict[str, Any]
    master: int

    def status(self) -> dict[str, Any]: ...
    def stall(self, seconds: float) -> None: ...
    def set_stuck(self, axis: int, stuck: bool) -> None: ...
    def replug(self) -> None: ...
    def close_serial(self) -> None: ...


def apply(mcu: _Mcu, request: dict[str, Any]) -> dict[str, Any]:
    """Carry out one request on ``mcu``; a bad request raises :class:`ControlError`."""
    if request.get("status"):
        return mcu.status()
    name = request.get("fault") or request.get("clear")
    clear = "clear" in request
    if clear and name == "all":
        for fault in FAULTS:
            if fault in ("heater_disconnected", "thermistor_open", "thermistor_shorted"):
                for heater in mcu.heaters:
                    apply(mcu, {"clear": fault, "heater": heater})
            elif fault == "endstop_stuck":
                for axis in "xyz":
                    apply(mcu, {"clear": fault, "axis": axis})
            elif fault != "stall":
                apply(mcu, {"clear": fault})
        return {"ok": True}
    if name not in FAULTS:
        raise ControlError(f"fault {name!r}: one of {list(FAULTS)} (or {{'status': true}})")
    if name in ("heater_disconnected", "thermistor_open", "thermistor_shorted"):
        heater = mcu.heaters.get(request.get("heater", "extruder"))
        if heater is None:
            raise ControlError(f"heater {request.get('heater')!r}: one of {sorted(mcu.heaters)}")
        if name == "heater_disconnected":
            heater.disconnected = not clear
        else:
            kind = name.split("_", 1)[1]
            heater.sensor_fault = None if clear else kind
    elif name == "endstop_stuck":
        axis = str(request.get("axis", "")).lower()
        if axis not in ("x", "y", "z"):
            raise ControlError(f"axis {request.get('axis')!r}: one of 'x', 'y', 'z'")
        mcu.set_stuck("xyz".index(axis), not clear)
    elif name == "serial_disconnect":
        if clear and mcu.master < 0:
            mcu.replug()
        elif not clear:
            mcu.close_serial()
    elif name == "stall" and not clear:
        seconds = request.get("seconds")
        if not isinstance(seconds, (int, float)) or not 0 < seconds <= 60:
            raise ControlError(f"stall seconds = {seconds!r}: a number in (0, 60]")
        mcu.stall(float(seconds))
    return {"ok": True}


class ControlServer:
    """The listening socket and its connections, served from the MCU's own loop (no thread)."""

    def __init__(self, path: Path, mcu: _Mcu) -> None:
        self.path = Path(path)
        self.mcu = mcu
        self.path.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(4)
        self.listener.setblocking(False)
        self.clients: dict[int, tuple[socket.socket, bytearray]] = {}

    def fds(self) -> list[int]:
        return [self.listener.fileno(), *self.clients]

    def serve(self, readable: list[int]) -> None:
        if self.listener.fileno() in readable:
            with contextlib.suppress(BlockingIOError):
                conn, _ = self.listener.accept()
                conn.setblocking(False)
                self.clients[conn.fileno()] = (conn, bytearray())
        for fd in readable:
            if fd not in self.clients:
                continue
            conn, buffer = self.clients[fd]
            try:
                data = conn.recv(MAX_LINE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data or len(buffer) > MAX_LINE:
                self._drop(fd)
                continue
            buffer += data
            while b"\n" in buffer:
                line, _, rest = bytes(buffer).partition(b"\n")
                buffer[:] = rest
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ControlError("a request is a JSON object")
                    answer = apply(self.mcu, request)
                except (ValueError, ControlError) as exc:
                    answer = {"error": str(exc)}
                conn.setblocking(True)
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps(answer).encode() + b"\n")
                conn.setblocking(False)

    def _drop(self, fd: int) -> None:
        conn, _ = self.clients.pop(fd)
        conn.close()

    def close(self) -> None:
        for fd in list(self.clients):
            self._drop(fd)
        self.listener.close()
        self.path.unlink(missing_ok=True)


def request(path: str | Path, message: dict[str, Any], timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """Send one request to the MCU at control socket ``path``; its answer (:class:`ControlError` on error)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
            sock.sendall(json.dumps(message).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(MAX_LINE)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise ControlError(f"virtual MCU control socket {path}: {exc}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError(f"virtual MCU control socket {path}: no answer (is the MCU stalled?)") from None
    if "error" in answer:
        raise ControlError(answer["error"])
    return answer
