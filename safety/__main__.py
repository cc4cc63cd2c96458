"""``python -m safety check FILE.gcode --printer NAME_OR_CFG [--policy POLICY.yaml] [--json OUT.json]``.

Exit status: 0 when the program is allowed, 1 when it is blocked, 2 on a usage error (missing file, bad
printer or policy). Findings go to stdout as ``file:line: rule: message``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safety.policy import load_policy
from safety.validator import validate
from sim_bridge.config import ConfigError
from sim_bridge.printers import load_printer

EXIT_ALLOW = 0
EXIT_BLOCK = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m safety", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a G-code program against a printer")
    check.add_argument("file", type=Path, help="G-code program")
    check.add_argument("--printer", required=True,
                       help="bundled profile name, profile .yaml, Klipper printer.cfg or PrusaSlicer .ini")
    check.add_argument("--policy", type=Path, help="safety policy YAML (allow-list, caps)")
    check.add_argument("--json", type=Path, dest="json_out", help="write the verdict as JSON here")
    return parser


def _usage_error(message: str) -> int:
    print(f"python -m safety: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_ALLOW
    path: Path = args.file
    if not path.is_file():
        return _usage_error(f"{path}: no such file")
    try:
        profile = load_printer(args.printer)
    except (ConfigError, OSError, ValueError) as exc:
        return _usage_error(f"printer {args.printer}: {exc}")
    try:
        policy = load_policy(args.policy) if args.policy else None
    except (ConfigError, OSError) as exc:
        return _usage_error(f"policy {args.policy}: {exc}")
    try:
        verdict = validate(path, profile, policy)
    except OSError as exc:
        return _usage_error(f"{path}: cannot read: {exc}")
    for v in verdict.violations:
        print(f"{path}:{v.line}: {v.rule}: {v.message} [limit {v.limit}; value {v.value}]")
    print(f"{path}: {verdict.verdict} ({len(verdict.violations)} findings, {verdict.lines} lines, "
          f"sha256 {verdict.sha256}) for printer {profile.name}")
    if args.json_out:
        try:
            args.json_out.write_text(json.dumps(verdict.as_dict(), indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            return _usage_error(f"{args.json_out}: cannot write: {exc}")
    return EXIT_ALLOW if verdict.allowed else EXIT_BLOCK


if __name__ == "__main__":
    sys.exit(main())
