"""Command line: ``python -m sim_bridge simulate FILE.gcode --printer NAME_OR_PRINTER_CFG [--backend B]``.

``python -m sim_bridge virtual-printer --printer NAME|printer.cfg [--mcu virtual|file] [--port N]
[--api-key-file F] [--start-temp HEATER=C]`` runs real Klippy and Moonraker on 127.0.0.1, on the virtual MCU
(default) or a file MCU, until Ctrl-C or SIGTERM (:mod:`sim_bridge.virtual_printer`);
``--api-key KEY`` is for throwaway keys only (any local user can read a command line).
``python -m sim_bridge trajectory SAMPLES[.xz] [--decimation N]`` measures a ``prunt_simulator`` recording
(:mod:`sim_bridge.prunt_trajectory`).

Prints a readable summary (with a progress bar on large files) and exits 1 when the print fails, 2 on a
usage error (bad file, unknown printer, a backend that cannot run). ``--json`` writes the report; ``--plot``
a PNG of the print (embedded backend). ``--backend klipper-batch`` runs the real Klipper host in batch mode,
``--backend moonraker --url URL [--api-key-file F]`` a printer behind Moonraker, ``--backend prunt --url URL``
a Prunt motion controller or ``prunt_simulator`` (:mod:`sim_bridge.backends`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from sim_bridge.backends import BACKENDS, check_backend, simulate
from sim_bridge.config import ConfigError, load_yaml
from sim_bridge.failures import UNREADABLE
from sim_bridge.gcode import GcodeError
from sim_bridge.options import PLANNERS, SimOptions
from sim_bridge.printers import MATERIALS, bundled_printers, load_material, load_printer
from sim_bridge.report import EMBEDDED
from sim_bridge.simulator import Simulator

PROGRESS_MIN_BYTES = 2_000_000
"""Files larger than this get a progress bar."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sim_bridge", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="run a G-code file on a simulation backend (default: embedded)")
    sim.add_argument("file", type=Path, help="G-code file")
    sim.add_argument("--printer", default="ender3-klipper",
                     help=f"bundled profile ({', '.join(bundled_printers())}), a profile .yaml, a Klipper "
                          "printer.cfg or a PrusaSlicer .ini/.gcode")
    sim.add_argument("--backend", choices=BACKENDS, default=EMBEDDED,
                     help="embedded simulator, Klippy batch mode, a Moonraker printer or a Prunt (these two "
                          "need --url)")
    sim.add_argument("--url", help="the printer's URL for --backend moonraker (e.g. http://127.0.0.1:7125) or "
                                   "prunt (e.g. http://127.0.0.1:8080)")
    sim.add_argument("--api-key-file", type=Path, help="file holding the Moonraker API key (first line)")
    sim.add_argument("--material", default="PLA", help=f"one of {', '.join(MATERIALS)}")
    sim.add_argument("--planner", choices=PLANNERS, help="corner model only (default: the printer's firmware's); the firmware rules "
                          "(commands, homing, heater waits) are always the printer's")
    sim.add_argument("--klipper-batch", action="store_true",
                     help="model Klipper's batch mode (no heater waits, homing runs its full length)")
    sim.add_argument("--options", type=Path, help="SimOptions YAML (keys as in configs/sim-default.yaml); "
                     "the flags below override it")
    sim.add_argument("--resolution", type=float, help="height-map cell size in mm (default 0.1)")
    sim.add_argument("--no-deposition", action="store_true", help="skip the height map (time and errors only)")
    sim.add_argument("--traces", action="store_true", help="include sensor traces in the JSON report")
    sim.add_argument("--json", type=Path, help="write the report as JSON here")
    sim.add_argument("--plot", type=Path, help="write a PNG (height map and toolpath) here")
    sim.add_argument("--quiet", action="store_true", help="no summary, only the exit code")
    sub.add_parser("printers", help="list the bundled printer profiles")
    traj = sub.add_parser("trajectory", help="measure a prunt_simulator recording (its DATA OUTPUT lines)")
    traj.add_argument("file", type=Path, help="the samples, plain text or .xz")
    traj.add_argument("--decimation", type=int, default=1, help="the file keeps every N-th sample (default 1)")
    traj.add_argument("--gcode", type=Path, help="compare with the prunt planner's run of this program")
    traj.add_argument("--printer", default="prunt-sim",
                      help="with --gcode: the printer (a Prunt config .json, or a profile; default prunt-sim)")
    vp = sub.add_parser("virtual-printer", help="run real Klippy and Moonraker on 127.0.0.1 until Ctrl-C")
    vp.add_argument("--printer", default="ender3-klipper",
                    help=f"bundled profile ({', '.join(bundled_printers())}), a profile .yaml or a printer.cfg")
    vp.add_argument("--port", type=int, help="Moonraker's port (default: a free one)")
    vp.add_argument("--mcu", choices=("virtual", "file"), default="virtual",
                    help="virtual: the emulated MCU in real time (homing, heating, faults); file: Klippy's "
                         "file output, prints complete at once (default virtual)")
    vp.add_argument("--start-temp", action="append", default=[], metavar="HEATER=C",
                    help="with --mcu virtual: a heater's temperature at power-on (extruder=150)")
    vp.add_argument("--extra-cfg", type=Path, metavar="FILE",
                    help="printer.cfg sections to append, e.g. the dead-man switch a deployment requires "
                         "(python -m safety.deploy deadman-cfg > deadman.cfg)")
    keys = vp.add_mutually_exclusive_group()
    keys.add_argument("--api-key-file", type=Path,
                      help="require the API key on this file's first line (default: 127.0.0.1 is a trusted "
                           "client)")
    keys.add_argument("--api-key", help="require this API key: throwaway keys only, since any local user "
                                        "can read a command line (/proc/PID/cmdline)")
    return parser


def _virtual_printer(args: argparse.Namespace, console: _Stderr) -> int:
    """Run the virtual printer until Ctrl-C or SIGTERM; 2 when it cannot start."""
    # Klippy and Moonraker are this command's only: the simulator's command line does not load them.
    from sim_bridge.klippy.mcu_process import parse_start_temps
    from sim_bridge.virtual_printer import KlippyError, VirtualPrinter, VirtualPrinterError  # as above

    def on_term(signum: int, frame: object) -> None:
        # One signal stops the printer; a second one must not cut its clean-up short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    # SIGTERM stops the printer as Ctrl-C does (the context manager's exit stops both processes); SIGINT is
    # set too, because a shell starting the command in the background leaves it ignored.
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        api_key = args.api_key
        if args.api_key_file is not None:
            lines = args.api_key_file.read_text(encoding="utf-8").splitlines()
            api_key = lines[0].strip() if lines else ""
            if not api_key:
                raise VirtualPrinterError(f"{args.api_key_file}: line 1: no API key")
        extra_cfg = args.extra_cfg.read_text(encoding="utf-8") if args.extra_cfg is not None else ""
        with VirtualPrinter(args.printer, port=args.port, api_key=api_key, mcu=args.mcu, extra_cfg=extra_cfg,
                            start_temps_c=parse_start_temps(args.start_temp)) as printer:
            control = f", faults: {printer.mcu.control_path}" if printer.mcu is not None else ""
            print(f"virtual printer {printer.profile.name} ready at {printer.url} "
                  f"({printer.startup_s:.1f} s, {args.mcu} MCU{control})"
                  f"{' (API key required)' if api_key else ''}", flush=True)
            try:
                while printer.running():
                    time.sleep(0.5)
            except KeyboardInterrupt:
                console.print("stopping")
                return 0
            console.print("[red]error:[/red] Klippy or Moonraker exited")
            return 1
    except (VirtualPrinterError, KlippyError, ConfigError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    except KeyboardInterrupt:
        return 0


def _compare_with_plan(args: argparse.Namespace) -> str:
    """``trajectory --gcode``: the recording against the prunt planner, corner by corner."""
    # Only this option plans a program against a recording.
    from sim_bridge.prunt_path import compare_timing
    from sim_bridge.prunt_planner import plan_file  # this option's only

    table, prog = plan_file(load_printer(args.printer), args.gcode)
    c = compare_timing(args.file, prog.starts, prog.xyz, prog.de, table, decimation=args.decimation)
    planned_s = float((table[:, 3] + table[:, 4] + table[:, 5]).sum())
    moving = c.corner_speed_real_mm_s > 0.5
    ratio = c.corner_speed_planned_mm_s[moving] / c.corner_speed_real_mm_s[moving] - 1.0
    lines = [f"planned {planned_s:.4f} s for {len(table)} moves ({args.gcode}, printer {args.printer})",
             f"{c.corners} corners: time between them off by at most {1e3 * abs(c.segment_error_s).max():.2f} ms"]
    if moving.any():
        lines.append(f"corner speeds off by at most {100 * abs(ratio).max():.2f} % "
                     f"(median {100 * float(np.median(abs(ratio))):.2f} %)")
    return "\n".join(lines)


class _Stderr:
    """rich's console on stderr, made on first use: a run that prints no error need not import rich (~15 ms of
    a short file's start-up)."""

    def __init__(self) -> None:
        self._console: Any = None

    @property
    def rich(self) -> Any:
        if self._console is None:
            from rich.console import Console  # here: see the class docstring

            self._console = Console(stderr=True)
        return self._console

    def print(self, *objects: Any) -> None:
        self.rich.print(*objects)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    console = _Stderr()
    if args.command == "virtual-printer":
        return _virtual_printer(args, console)
    if args.command == "trajectory":
        # The trajectory reader is this command's only; the simulator's command line does not load it.
        from sim_bridge.prunt_trajectory import TrajectoryError, read_trajectory

        try:
            print(read_trajectory(args.file, decimation=args.decimation).summary())
            if args.gcode is not None:
                print(_compare_with_plan(args))
        except (TrajectoryError, ValueError, OSError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 2
        return 0
    if args.command == "printers":
        for name in bundled_printers():
            print(f"{name}: {load_printer(name).description}")
        return 0
    try:
        printer = load_printer(args.printer)
        material = load_material(args.material)
        options = load_yaml(SimOptions, args.options) if args.options else SimOptions()
        changes: dict[str, object] = {}
        if args.planner:
            changes["planner"] = args.planner
        if args.klipper_batch:
            changes["klipper_batch_mode"] = True
        if args.resolution is not None:
            changes["resolution_mm"] = args.resolution
        if args.no_deposition:
            changes["deposition"] = False
        if args.traces:
            changes["traces"] = True
        try:
            options = replace(options, **changes)
        except ConfigError as exc:
            raise ConfigError(f"command line: {exc}") from None
        sim = Simulator(printer, material, options)
        if not args.file.is_file():
            raise GcodeError(str(args.file), 0, "no such file")
        size = args.file.stat().st_size
        if args.backend != EMBEDDED:
            if args.plot:
                raise ConfigError("--plot draws the embedded simulator's height map: use --backend embedded")
            check_backend(args.backend, args.url)
            api_key = args.api_key_file.read_text(encoding="utf-8").splitlines()[0].strip() \
                if args.api_key_file else None
            # A printer.cfg goes to Klippy as it is; anything else as the profile read from it.
            target = args.printer if Path(args.printer).suffix.lower() == ".cfg" else printer
            report = simulate(args.file, target, backend=args.backend, url=args.url, api_key=api_key,
                              options=options, material=args.material)
        elif size >= PROGRESS_MIN_BYTES and not args.quiet:
            # rich's progress bar costs a short file's run a tenth of its start-up: only large files load it.
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

            with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                          TimeRemainingColumn(), console=console.rich, transient=True) as bar:
                task = bar.add_task(f"simulating {args.file.name}", total=size)
                report = sim.run(args.file, progress=lambda done, total: bar.update(task, completed=done))
        else:
            report = sim.run(args.file)
    except (GcodeError, ConfigError, OSError, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    unreadable = next((f for f in report.failures if f.mode == UNREADABLE), None)
    if unreadable is not None:
        console.print(f"[red]error:[/red] {unreadable.message}")
        return 2
    try:
        # The report and the plot go where they are asked for, folders made as needed (runs/ on a fresh clone).
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(report.to_json(), encoding="utf-8")
        if args.plot:
            # matplotlib loads only when a plot is asked for: it costs the command line its start-up time.
            from sim_bridge.plots import save_plot

            args.plot.parent.mkdir(parents=True, exist_ok=True)
            save_plot(sim, args.plot, title=f"{args.file.name} on {printer.name}")
    except OSError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    if not args.quiet:
        print(report.summary())
    return 0 if report.success else 1


if __name__ == "__main__":
    sys.exit(main())
