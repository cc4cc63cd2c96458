"""A virtual Klipper printer: real Klippy (live mode) behind real Moonraker, on 127.0.0.1, in a temp dir.

:class:`VirtualPrinter` writes a ``printer.cfg`` from a layerloop printer profile
(:mod:`sim_bridge.klippy.printer_cfg`) and a ``moonraker.conf`` (:func:`moonraker_conf`) into a temporary
directory, starts Klippy (:class:`sim_bridge.klippy.live.KlippyLive`) and Moonraker, waits until Moonraker
reports ``klippy_state == "ready"``, and on stop ends both (SIGTERM, then SIGKILL), removes the sockets and
the directory. Every wait has a timeout; a printer that cannot start is a :class:`VirtualPrinterError`
carrying Klippy's or Moonraker's own message.

Authorization: with ``api_key`` set, every client needs that key (``X-Api-Key``; no trusted clients); without
it 127.0.0.0/8 is a trusted client and no key is needed. Moonraker 0.11 makes a random key of its own on a
first start and keeps it in its database; a chosen key is written there before it starts (the
``_API_KEY_USER_`` row of its ``authorized_users`` table, as Moonraker's authorization component reads it).

What the MCU is (``mcu``):

- ``virtual`` (the default): the virtual MCU (:mod:`sim_bridge.klippy.virtual_mcu`), a process of its own
  on a pseudo-terminal that Klippy connects to as to a board. It runs in real time: homing moves until the
  simulated carriage reaches its endstop, heaters heat on the embedded simulator's thermal model under
  Klippy's own PID and ``verify_heater``, a print takes its time, and faults can be injected
  (:meth:`VirtualPrinter.inject_fault`, :mod:`sim_bridge.klippy.mcu_control`).
- ``file``: a file (``-o /dev/null``), so nothing paces it: a print completes as fast as Klippy can plan
  it, ``print_stats.print_duration`` is that wall time, heaters read 0 °C, and Klippy itself skips heater
  waits (M109/M190 return at once) and the cold-extrusion check when its MCU output is a file. Moves,
  limits, homing, macros, errors and the G-code line where a print stopped are Klipper's own; times and
  temperatures are not (the embedded simulator supplies those). The fast check of a file.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import yaml

from sim_bridge.config import to_dict
from sim_bridge.klippy import dictionary, printer_cfg
from sim_bridge.klippy.dictionary import DictionaryError
from sim_bridge.klippy.host import KlippyMissing
from sim_bridge.klippy.live import KlippyError, KlippyLive, die_with_parent, stop_group
from sim_bridge.klippy.mcu_process import McuProcessError, VirtualMcuProcess
from sim_bridge.moonraker import KLIPPY_READY, MoonrakerClient, MoonrakerError
from sim_bridge.printers import load_printer
from sim_bridge.profiles import PrinterProfile

HOST = "127.0.0.1"
"""The only address a virtual printer listens on."""
READY_TIMEOUT_S = 30.0
"""How long Klippy and Moonraker together may take to reach ``klippy_state == ready``."""
READY_LOG_LINES = ("Klippy ready", "Configuring available sensors")
"""What Moonraker 0.11 logs, in this order, before it is ready for a print: ``klippy_connection.py`` once its
``server:klippy_started`` handlers are done (``job_state`` has subscribed to ``print_stats``), then
``data_store.py`` at the end of its ``server:klippy_ready`` handler (its sensor subscription). ``/server/info``
says ``ready`` before both; a print started before the second completes unrecorded by ``history`` (the
re-subscription loses the print's state changes). Every layerloop printer has an extruder, so the sensor line
always comes."""
READY_SETTLE_S = 0.05
"""A short pause after :data:`READY_LOG_LINES`, for the handlers that log nothing (``job_queue``)."""
STOP_TIMEOUT_S = 5.0
"""How long a stopping Moonraker gets after SIGTERM before it is killed."""
MOONRAKER_ENV = "LAYERLOOP_MOONRAKER"
"""Environment variable naming Moonraker's executable (default: ``.venv-moonraker/bin/moonraker`` of the
repository, made by ``scripts/setup.sh``)."""
SETUP_HINT = "run scripts/setup.sh (it makes .venv-klippy and .venv-moonraker)"
CORS_ORIGINS = ("http://127.0.0.1:*", "http://localhost:*", "https://my.mainsail.xyz", "https://app.fluidd.xyz")
"""Browser origins Moonraker accepts (``cors_domains``): a web UI served on this machine or the hosted ones."""
MCU_KINDS = ("virtual", "file")
"""What Klippy's MCU is (module docstring)."""
API_KEY_USER = "_API_KEY_USER_"
"""The user row under which Moonraker keeps its API key (``authorized_users`` table, Moonraker 0.11)."""


class VirtualPrinterError(RuntimeError):
    """The virtual printer could not start (not installed, port taken, Moonraker failed); a config Klippy
    refuses is a :class:`~sim_bridge.klippy.live.KlippyError` with Klippy's own message."""


__all__ = ["KlippyError", "VirtualPrinter", "VirtualPrinterError", "free_port", "moonraker_conf"]


def moonraker_executable() -> Path:
    """Moonraker's entry point (:data:`MOONRAKER_ENV`, else the repository's ``.venv-moonraker``)."""
    path = Path(os.environ.get(MOONRAKER_ENV) or
                Path(__file__).resolve().parent.parent / ".venv-moonraker" / "bin" / "moonraker")
    if not path.is_file():
        raise VirtualPrinterError(f"Moonraker not found at {path}: {SETUP_HINT}")
    return path


def moonraker_conf(port: int, klippy_socket: Path, trusted_localhost: bool) -> str:
    """Moonraker's config for a virtual printer: 127.0.0.1 only, no system services, history on."""
    lines = ["[server]", f"host: {HOST}", f"port: {port}", f"klippy_uds_address: {klippy_socket}", "",
             # No systemd or dbus probing: there is no service to manage, and probing costs start-up time.
             "[machine]", "provider: none", "validate_service: False", "",
             "[authorization]", "enable_api_key: True"]
    if trusted_localhost:
        lines += ["trusted_clients:", "    127.0.0.0/8"]
    # A browser on this machine may run Mainsail or Fluidd (a local copy, or the hosted one) against it.
    lines += ["cors_domains:", *(f"    {origin}" for origin in CORS_ORIGINS)]
    lines += ["", "[file_manager]", "enable_object_processing: False", "", "[history]", "",
              # No remote announcement feeds: Moonraker 0.11 always subscribes to its "moonraker" and
              # "klipper" feeds; with enable_moonlight off it fetches none of them.
              "[announcements]", "enable_moonlight: False", ""]
    return "\n".join(lines)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise VirtualPrinterError(f"port {port}: must be 1..65535")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            raise VirtualPrinterError(f"port {port} on {HOST} is taken ({exc.strerror}): choose another "
                                      "with --port") from None


def _seed_api_key(database_dir: Path, api_key: str) -> None:
    # Moonraker finds this table unregistered, runs its migration, which inserts a random key only where no
    # row exists ("INSERT OR IGNORE"), and registers the table: the row, and so the chosen key, stays.
    database_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(database_dir / "moonraker-sql.db")
    try:
        with db:
            db.execute("CREATE TABLE authorized_users (username TEXT PRIMARY KEY NOT NULL, password TEXT NOT "
                       "NULL, created_on REAL NOT NULL, salt TEXT NOT NULL, source TEXT NOT NULL, jwt_secret "
                       "TEXT, jwk_id TEXT, groups pyjson)")
            db.execute("INSERT INTO authorized_users VALUES (?, ?, ?, '', 'moonraker', NULL, NULL, ?)",
                       (API_KEY_USER, api_key, time.time(), '["admin"]'))
    finally:
        db.close()


class VirtualPrinter:
    """Klippy live + Moonraker for one printer; a context manager (``with VirtualPrinter("ender3-klipper")
    as vp: vp.client.server_info()``)."""

    def __init__(self, printer: str | Path | PrinterProfile, port: int | None = None,
                 api_key: str | None = None, ready_timeout_s: float = READY_TIMEOUT_S,
                 extra_cfg: str = "", mcu: str = "virtual", start_temps_c: dict[str, float] | None = None) -> None:
        self.profile = printer if isinstance(printer, PrinterProfile) else load_printer(printer)
        if mcu not in MCU_KINDS:
            raise VirtualPrinterError(f"mcu {mcu!r}: one of {list(MCU_KINDS)}")
        if start_temps_c and mcu != "virtual":
            raise VirtualPrinterError("start_temps_c needs mcu='virtual' (a file MCU has no heaters)")
        for heater, temp_c in (start_temps_c or {}).items():
            if heater not in ("extruder", "heater_bed") or not -20.0 <= temp_c <= 500.0:
                raise VirtualPrinterError(f"start_temps_c[{heater!r}] = {temp_c}: heater extruder or heater_bed, "
                                          "-20 … 500 °C")
        self.mcu_kind = mcu
        self.start_temps_c = dict(start_temps_c or {})
        """Heater temperatures at power-on (``{"extruder": 150.0}``; default the profile's ambient)."""
        self.mcu: VirtualMcuProcess | None = None
        if port is not None:
            _check_port(port)
        if api_key is not None and (not api_key.strip() or any(c.isspace() for c in api_key)):
            raise VirtualPrinterError(f"api key {api_key!r}: must be a non-empty word")
        if not ready_timeout_s > 0:
            raise VirtualPrinterError(f"ready_timeout_s = {ready_timeout_s}: must be > 0 (seconds)")
        self.port = port or free_port()
        self.api_key = api_key
        self.ready_timeout_s = ready_timeout_s
        self.extra_cfg = extra_cfg
        """Text appended to the generated ``printer.cfg`` (macros, or sections a test wants Klippy to see)."""
        self.url = f"http://{HOST}:{self.port}"
        self.client = MoonrakerClient(self.url, api_key=api_key)
        self.dir: Path | None = None
        self.klippy: KlippyLive | None = None
        self.moonraker: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0
        """Seconds from :meth:`start` to ``klippy_state == ready``."""

    # -- paths inside the temp dir
    @property
    def data_path(self) -> Path:
        assert self.dir is not None, "not started"
        return self.dir / "printer_data"

    @property
    def gcodes_dir(self) -> Path:
        return self.data_path / "gcodes"

    @property
    def moonraker_log(self) -> Path:
        return self.data_path / "logs" / "moonraker.log"

    def start(self) -> VirtualPrinter:
        """Write the configs, start Klippy and Moonraker, wait for ``ready``; on any failure stop both."""
        if self.dir is not None:
            raise VirtualPrinterError(f"already started at {self.url}")
        started = time.monotonic()
        # Both installs first: a missing one fails at once, before any process or folder exists.
        moonraker = moonraker_executable()
        try:
            klippy_dictionary = dictionary.dictionary_path()
        except (KlippyMissing, DictionaryError) as exc:
            raise VirtualPrinterError(str(exc)) from None
        # A short path: Unix socket paths are limited to 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="ll-vp-"))
        try:
            for sub in ("config", "gcodes", "logs", "comms", "misc"):
                (self.data_path / sub).mkdir(parents=True)
            # Moonraker's machine component downloads usb.ids from linux-usb.org unless the file exists.
            (self.data_path / "misc" / "usb.ids").write_text("# empty: no USB ids needed (layerloop)\n")
            cfg = self.data_path / "config" / "printer.cfg"
            virtual = self.mcu_kind == "virtual"
            options = printer_cfg.PrinterCfgOptions(sdcard_path=str(self.gcodes_dir))
            if virtual:
                options = printer_cfg.PrinterCfgOptions(sdcard_path=str(self.gcodes_dir),
                                                        mcu_serial=str(self.dir / "mcu.tty"),
                                                        mcu_baud=printer_cfg.MCU_BAUD)
            printer_cfg.write_printer_cfg(self.profile, cfg, options)
            if self.extra_cfg:
                with cfg.open("a", encoding="utf-8") as handle:
                    handle.write("\n" + self.extra_cfg.strip() + "\n")
            if virtual:
                # The profile as a file: the MCU process takes the heaters' physics from it.
                profile_yaml = self.dir / "printer-profile.yaml"
                profile_yaml.write_text(yaml.safe_dump(to_dict(self.profile), sort_keys=False))
                self.mcu = VirtualMcuProcess(cfg, profile_yaml, klippy_dictionary, self.dir, self.start_temps_c)
                try:
                    self.mcu.start()
                except McuProcessError as exc:
                    raise VirtualPrinterError(str(exc)) from None
            self.klippy = KlippyLive(cfg, None if virtual else klippy_dictionary, self.dir)
            self.klippy.start()
            conf = self.data_path / "config" / "moonraker.conf"
            conf.write_text(moonraker_conf(self.port, self.klippy.socket_path, self.api_key is None))
            if self.api_key is not None:
                _seed_api_key(self.data_path / "database", self.api_key)
            argv = [str(moonraker), "-d", str(self.data_path), "-c", str(conf),
                    "-l", str(self.moonraker_log), "-u", str(self.data_path / "comms" / "moonraker.sock")]
            with open(self.data_path / "logs" / "moonraker.out", "wb") as out:
                # Its own process group, so that stop() ends Moonraker's children with it.
                self.moonraker = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                                  stderr=subprocess.STDOUT, start_new_session=True,
                                                  preexec_fn=die_with_parent)
            self._wait_ready(started + self.ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        return self

    def _wait_ready(self, deadline: float) -> None:
        assert self.klippy is not None and self.moonraker is not None
        state, message = "unknown", ""
        while time.monotonic() < deadline:
            if self.moonraker.poll() is not None:
                raise VirtualPrinterError(f"Moonraker exited ({self.moonraker.returncode}):\n"
                                          f"{_tail(self.moonraker_log)}\n{_tail(self.moonraker_log.with_suffix('.out'))}")
            if not self.klippy.running():
                raise KlippyError(f"Klippy exited on {self.klippy.printer_cfg}:\n{self.klippy.log_tail()}")
            if self.mcu is not None and not self.mcu.running():
                raise VirtualPrinterError(f"the virtual MCU exited:\n{self.mcu.output()}")
            try:
                state = str(self.client.server_info().get("klippy_state"))
                if state == KLIPPY_READY and _logged_in_order(self.moonraker_log, READY_LOG_LINES):
                    self.client.objects_query(("print_stats",))
                    time.sleep(READY_SETTLE_S)
                    return
                if state in ("error", "shutdown"):
                    # Klippy's message is its first paragraph; the rest is advice on RESTART.
                    message = str(self.client.printer_info().get("state_message", "")).strip().split("\n\n")[0]
                    raise KlippyError(f"Klippy refused {self.klippy.printer_cfg}: "
                                      f"{message or self.klippy.config_error()}")
            except MoonrakerError as exc:
                message = exc.message  # not listening yet, or Klippy not connected yet
            time.sleep(0.1)
        raise VirtualPrinterError(f"not ready after {self.ready_timeout_s:.0f} s (klippy_state = {state!r}, "
                                  f"{message}):\n{self.klippy.log_tail()}")

    def running(self) -> bool:
        """Whether Klippy and Moonraker (and the virtual MCU) are all still running."""
        return (self.moonraker is not None and self.moonraker.poll() is None and self.klippy is not None
                and self.klippy.running() and (self.mcu is None or self.mcu.running()))

    # -- the virtual MCU's hardware
    def _mcu(self) -> VirtualMcuProcess:
        if self.mcu is None:
            raise VirtualPrinterError(f"{self.url}: no virtual MCU (mcu={self.mcu_kind!r})")
        return self.mcu

    def inject_fault(self, fault: str, **params: object) -> None:
        """Break something in the simulated hardware (:mod:`sim_bridge.klippy.mcu_control` lists the faults:
        ``heater_disconnected``, ``thermistor_open``/``_shorted``, ``endstop_stuck``, ``serial_disconnect``,
        ``stall``); Klippy's reaction is its own."""
        self._mcu().request({"fault": fault, **params})

    def clear_fault(self, fault: str = "all", **params: object) -> None:
        """Repair what :meth:`inject_fault` broke (``all``: every fault)."""
        self._mcu().request({"clear": fault, **params})

    def mcu_status(self) -> dict[str, object]:
        """The simulated hardware: carriage positions, heater temperatures and duties, faults, MCU clock."""
        return self._mcu().request({"status": True})

    def stop(self) -> None:
        """Stop Moonraker, then Klippy (SIGTERM, SIGKILL after a timeout); remove the temp dir."""
        moonraker, self.moonraker = self.moonraker, None
        if moonraker is not None and moonraker.poll() is None:
            stop_group(moonraker, STOP_TIMEOUT_S)
        if self.klippy is not None:
            self.klippy.stop()
            self.klippy = None
        if self.mcu is not None:
            self.mcu.stop()
            self.mcu = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> VirtualPrinter:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def _logged_in_order(path: Path, needles: tuple[str, ...]) -> bool:
    """Whether the log at ``path`` holds each of ``needles``, each after the one before."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False  # not written yet
    at = 0
    for needle in needles:
        at = text.find(needle, at)
        if at < 0:
            return False
        at += len(needle)
    return True


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""
