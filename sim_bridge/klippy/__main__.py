"""Command line: ``python -m sim_bridge.klippy dictionary [--out FILE] [--refresh]`` and
``python -m sim_bridge.klippy printer-cfg --printer NAME|FILE [--out FILE]``.

``dictionary`` derives the MCU data dictionary from the installed Klippy host (cached per host version) and
prints its path, or writes it to ``--out``. ``printer-cfg`` writes a Klipper ``printer.cfg`` for a printer
profile (stdout without ``--out``). Exit 2 on a usage error or a missing host (with the set-up hint).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from sim_bridge.config import ConfigError
from sim_bridge.klippy.dictionary import DictionaryError, dictionary_path
from sim_bridge.klippy.host import KlippyMissing
from sim_bridge.klippy.printer_cfg import write_printer_cfg_for


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sim_bridge.klippy", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    dictionary = sub.add_parser("dictionary", help="derive the MCU data dictionary from the installed host")
    dictionary.add_argument("--out", type=Path, help="copy it here (default: print the cached file's path)")
    dictionary.add_argument("--refresh", action="store_true", help="derive it again even when cached")
    cfg = sub.add_parser("printer-cfg", help="write a Klipper printer.cfg for a printer profile")
    cfg.add_argument("--printer", required=True, help="bundled profile name or a profile/printer.cfg file")
    cfg.add_argument("--out", type=Path, help="write it here (default: stdout)")
    return parser


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
