"""Command line: ``python -m sim_bridge.klippy dictionary [--out FILE] [--refresh]``,
``python -m sim_bridge.klippy printer-cfg --printer NAME|FILE [--out FILE]`` and
``python -m sim_bridge.klippy mcu --printer-cfg FILE --serial PATH [--control SOCKET] [--profile NAME|FILE]
[--start-temp HEATER=C …]``.

``dictionary`` derives the MCU data dictionary from the installed Klippy host (cached per host version) and
prints its path, or writes it to ``--out``. ``printer-cfg`` writes a Klipper ``printer.cfg`` for a printer
profile (stdout without ``--out``). ``mcu`` runs the virtual MCU (:mod:`sim_bridge.klippy.virtual_mcu`) on a
pseudo-terminal linked at ``--serial`` until SIGTERM; the printer.cfg says what its pins drive, the profile
(default: read from the printer.cfg) gives the heaters' physics. Exit 2 on a usage error or a missing host
(with the set-up hint).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from sim_bridge.config import ConfigError
from sim_bridge.klippy.dictionary import DictionaryError, dictionary_path
from sim_bridge.klippy.host import KlippyMissing
from sim_bridge.klippy.mcu_process import parse_start_temps
from sim_bridge.klippy.printer_cfg import write_printer_cfg_for
from sim_bridge.klippy.wiring import read_wiring
from sim_bridge.printers import load_printer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sim_bridge.klippy", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    dictionary = sub.add_parser("dictionary", help="derive the MCU data dictionary from the installed host")
    dictionary.add_argument("--out", type=Path, help="copy it here (default: print the cached file's path)")
    dictionary.add_argument("--refresh", action="store_true", help="derive it again even when cached")
    cfg = sub.add_parser("printer-cfg", help="write a Klipper printer.cfg for a printer profile")
    cfg.add_argument("--printer", required=True, help="bundled profile name or a profile/printer.cfg file")
    cfg.add_argument("--out", type=Path, help="write it here (default: stdout)")
    mcu = sub.add_parser("mcu", help="run the virtual MCU on a pseudo-terminal until SIGTERM")
    mcu.add_argument("--printer-cfg", required=True, type=Path, help="the printer.cfg Klippy runs")
    mcu.add_argument("--serial", required=True, type=Path, help="where to link the pseudo-terminal")
    mcu.add_argument("--control", type=Path, help="Unix socket for faults and status (sim_bridge.klippy.mcu_control)")
    mcu.add_argument("--profile", help="printer profile for the heaters' physics (default: from the printer.cfg)")
    mcu.add_argument("--dictionary", type=Path, help="host-derived data dictionary (default: the cached one)")
    mcu.add_argument("--start-temp", action="append", default=[], metavar="HEATER=C",
                     help="a heater's temperature at power-on (default: the profile's ambient)")
    return parser


def _run_mcu(args: argparse.Namespace) -> int:
    # Imported here: the MCU's thermal model and serial code, which the other commands do not need.
    from sim_bridge.klippy.virtual_mcu import VirtualMcu

    profile = load_printer(args.profile or args.printer_cfg)
    wiring = read_wiring(args.printer_cfg, profile)
    dictionary = json.loads((args.dictionary or dictionary_path()).read_text(encoding="utf-8"))
    mcu = VirtualMcu(dictionary, wiring, args.serial, args.control, parse_start_temps(args.start_temp))
    mcu.open_serial()
    print(f"virtual MCU on {args.serial}", flush=True)
    mcu.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "dictionary":
            path = dictionary_path(refresh=args.refresh)
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, args.out)
                path = args.out
            print(path)
            return 0
        if args.command == "mcu":
            return _run_mcu(args)
        text = write_printer_cfg_for(args.printer, args.out)
        if args.out is None:
            sys.stdout.write(text)
        else:
            print(args.out)
        return 0
    except (KlippyMissing, DictionaryError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
