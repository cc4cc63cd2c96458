"""The virtual MCU as a managed process: started beside Klippy, waited for, asked, stopped.

A process of its own (``python -m sim_bridge.klippy mcu …``), so that Klippy talks to it over a real
pseudo-terminal exactly as to a board, its CPU use is measured on its own, and a stall fault stalls only it.
Its own process group and ``PR_SET_PDEATHSIG`` (:func:`sim_bridge.klippy.live.die_with_parent`), so a test
run killed outright leaves no MCU behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sim_bridge.config import ConfigError
from sim_bridge.klippy import mcu_control
from sim_bridge.klippy.live import die_with_parent, stop_group

START_TIMEOUT_S = 30.0
"""How long the MCU may take to open its terminal (well under a second unloaded; slack for a busy CI machine)."""
STOP_TIMEOUT_S = 5.0


def parse_start_temps(pairs: list[str]) -> dict[str, float]:
    """``["extruder=150"]`` → ``{"extruder": 150.0}`` (a :class:`ConfigError` naming the bad pair)."""
    temps = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            temps[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--start-temp {pair!r}: expected HEATER=CELSIUS (extruder=150)") from None
        if name.strip() not in ("extruder", "heater_bed") or not -20.0 <= temps[name.strip()] <= 500.0:
            raise ConfigError(f"--start-temp {pair!r}: heater extruder or heater_bed, -20 … 500 °C")
    return temps


class McuProcessError(RuntimeError):
    """The virtual MCU did not start; carries its own output."""


class VirtualMcuProcess:
    """One virtual MCU for ``printer_cfg``, its terminal at ``run_dir/mcu.tty``."""

    def __init__(self, printer_cfg: Path, profile: Path, dictionary: Path, run_dir: Path,
                 start_temps_c: dict[str, float] | None = None) -> None:
        self.printer_cfg = Path(printer_cfg)
        self.profile = Path(profile)
        self.dictionary = Path(dictionary)
        self.run_dir = Path(run_dir)
        self.serial_path = self.run_dir / "mcu.tty"
        """The pseudo-terminal's link: ``[mcu] serial`` of the printer.cfg."""
        self.control_path = self.run_dir / "mcu.sock"
        self.output_path = self.run_dir / "mcu.out"
        self.start_temps_c = dict(start_temps_c or {})
        self.process: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "sim_bridge.klippy", "mcu", "--printer-cfg", str(self.printer_cfg),
                "--serial", str(self.serial_path), "--control", str(self.control_path),
                "--profile", str(self.profile), "--dictionary", str(self.dictionary)]
        for name, temp_c in sorted(self.start_temps_c.items()):
            argv += ["--start-temp", f"{name}={temp_c}"]
        return argv

    def start(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
        with open(self.output_path, "wb") as out:
            self.process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=die_with_parent, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self.serial_path.is_symlink() and self.control_path.exists()):
            if self.process.poll() is not None:
                raise McuProcessError(f"the virtual MCU exited ({self.process.returncode}):\n{self.output()}")
            if time.monotonic() > deadline:
                self.stop()
                raise McuProcessError(f"the virtual MCU opened no terminal in {START_TIMEOUT_S:.0f} s:\n"
                                      f"{self.output()}")
            time.sleep(0.02)

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")[-4000:] if self.output_path.is_file() else ""

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """One control request (:mod:`sim_bridge.klippy.mcu_control`)."""
        return mcu_control.request(self.control_path, message)

    def cpu_s(self) -> float:
        """CPU seconds the MCU process has used (user + system, from ``/proc``)."""
        if self.process is None:
            return 0.0
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_group(process, STOP_TIMEOUT_S)
        for path in (self.serial_path, self.control_path):
            path.unlink(missing_ok=True)
