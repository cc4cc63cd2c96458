"""Klippy in live mode as a managed process: started, waited for, stopped, its errors read from its log.

Live mode is Klippy serving its API socket (``-a``) and a G-code pseudo-terminal (``-I``). Its MCU is
either a file (``-o /dev/null`` with a derived dictionary, ``-d``: nothing paces it, so moves complete at
once and heaters read 0 °C) or, with no dictionary given, the MCU its printer.cfg names: the virtual MCU
(:mod:`sim_bridge.klippy.virtual_mcu`) on its pseudo-terminal.
The command line itself is :mod:`sim_bridge.klippy.host`'s; this module owns the process: its own process
group (so a stop ends Klippy's children too), a timeout on every wait, the socket removed afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sim_bridge.klippy import host

SOCKET_TIMEOUT_S = 20.0
"""How long Klippy may take to open its API socket (its C helper compiles on a first start: ~3 s)."""
STOP_TIMEOUT_S = 5.0
"""How long a stopping Klippy gets after SIGTERM before it is killed."""
PR_SET_PDEATHSIG = 1
"""Linux ``prctl`` option: the signal a process gets when its parent dies."""
LOG_TAIL_LINES = 15
"""Lines of Klippy's log quoted in an error."""


class KlippyError(RuntimeError):
    """Klippy did not start or did not accept its config; the message is Klippy's own (from its log)."""


class KlippyLive:
    """One Klippy in live mode on ``printer_cfg``; files (socket, pseudo-terminal link, log) in ``run_dir``."""

    def __init__(self, printer_cfg: Path, dictionary: Path | None, run_dir: Path) -> None:
        self.printer_cfg = Path(printer_cfg)
        self.dictionary = Path(dictionary) if dictionary is not None else None
        """The file-mode MCU's dictionary; None: Klippy connects to the MCU on ``[mcu] serial``."""
        self.run_dir = Path(run_dir)
        self.socket_path = self.run_dir / "klippy.sock"
        """Klippy's API socket (Moonraker's ``klippy_uds_address``)."""
        self.pty_path = self.run_dir / "klippy.pty"
        self.log_path = self.run_dir / "klippy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start Klippy; returns once its API socket exists (:class:`KlippyError` if it exits first)."""
        if self.process is not None:
            raise RuntimeError("Klippy already started")
        argv = host.live_argv(self.printer_cfg, dictionary=self.dictionary, api_socket=self.socket_path,
                              pty=self.pty_path, log=self.log_path)
        with open(self.run_dir / "klippy.out", "wb") as out:
            # A process group of its own: the stop signals Klippy and whatever it started, nothing else.
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            cwd=self.run_dir, start_new_session=True,
                                            preexec_fn=die_with_parent)
        deadline = time.monotonic() + SOCKET_TIMEOUT_S
        while not self.socket_path.exists():
            if self.process.poll() is not None:
                raise KlippyError(f"Klippy exited ({self.process.returncode}) on {self.printer_cfg}:\n"
                                  f"{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise KlippyError(f"Klippy opened no API socket in {SOCKET_TIMEOUT_S:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The end of Klippy's log and console output (where its own error messages are)."""
        texts = []
        for path in (self.log_path, self.run_dir / "klippy.out"):
            if path.is_file():
                texts.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(texts) or "(Klippy wrote no log)"

    def config_error(self) -> str | None:
        """Klippy's message for a config it refused (the lines after ``Config error`` in its log), or None."""
        if not self.log_path.is_file():
            return None
        lines = self.log_path.read_text(errors="replace").splitlines()
        starts = [i for i, line in enumerate(lines) if line.strip() == "Config error"]
        if not starts:
            return None
        # Klippy logs a traceback after the heading; its message is the last line of that traceback.
        block = [line for line in lines[starts[-1] + 1:] if line.strip()]
        message = next((line for line in block if not line.startswith((" ", "Traceback"))), "")
        return message.split(": ", 1)[-1] if message.startswith(("configparser.", "Error", "config")) else message

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT_S`; the socket and pseudo-terminal link removed."""
        process, self.process = self.process, None
        if process is not None:
            stop_group(process)
        for path in (self.socket_path, self.pty_path):
            path.unlink(missing_ok=True)


def die_with_parent() -> None:
    """In a child before it runs: ask Linux to SIGTERM it when its parent dies (PR_SET_PDEATHSIG), so that
    a test run killed outright leaves no Klippy or Moonraker behind. Elsewhere a no-op. Linux's "parent" is
    the thread that started the child: start a printer from a thread that outlives it."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_group(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """End ``process`` and its process group: SIGTERM, then SIGKILL after ``timeout_s`` (Klippy, Moonraker and
    the virtual MCU each run in a group of their own)."""
    if process.poll() is not None:
        return
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait(timeout_s)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
