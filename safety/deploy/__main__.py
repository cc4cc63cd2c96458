"""``python -m safety.deploy PROGRAM --printer PROFILE --url URL --stage dry-run|first-layer|full --db DB
[--api-key-file F] [--supervisor none|rule|MODEL] [--on-fault pause|cancel|estop] [--policy P.yaml]``

or, for a Marlin-style printer on a serial port, ``--serial PORT [--baud N]`` instead of ``--url``
(:mod:`safety.deploy.serial_run`); and ``python -m safety.deploy deadman-cfg`` (the printer.cfg sections of
the dead-man switch).

The API key comes from ``--api-key-file`` or ``$LAYERLOOP_MOONRAKER_API_KEY`` (never the command line). A live
status line shows temperatures, layer, progress and ETA. Exit status: :mod:`safety.deploy.run`. Ctrl-C or
SIGTERM during a print takes the ``--on-fault`` action and exits 5.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from safety.deploy import credentials, deadman, run
from safety.deploy.config import FAULT_ACTIONS, REFUSED_TUNING, DeployConfig
from safety.deploy.supervision import LiveTelemetry, Supervisor
from sim_bridge.config import ConfigError
from sim_bridge.moonraker import MoonrakerClient, MoonrakerError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m safety.deploy", description=__doc__.split("\n")[0])
    parser.add_argument("program", help="the G-code file, or `deadman-cfg` to print the dead-man sections")
    parser.add_argument("--printer", help="printer profile (bundled name, profile YAML or printer.cfg)")
    parser.add_argument("--url", help="Moonraker's URL, e.g. http://127.0.0.1:7125")
    parser.add_argument("--serial", help="a Marlin-style printer's serial port (instead of --url)")
    parser.add_argument("--baud", type=int, default=115200, help="with --serial: the port's baud rate")
    parser.add_argument("--api-key-file", type=Path, help=f"Moonraker API key on line 1 (else ${credentials.API_KEY_ENV})")
    parser.add_argument("--stage", choices=("dry-run", "first-layer", "full"), default="dry-run")
    parser.add_argument("--db", type=Path, default=Path("approvals.db"), help="the approvals database")
    parser.add_argument("--user", default="operator", help="who deploys (recorded)")
    parser.add_argument("--supervisor", default="none", help="none, rule, or a trained PrintSupervisor-v1 model (folder or Hugging Face id)")
    parser.add_argument("--on-fault", choices=FAULT_ACTIONS, default="pause")
    parser.add_argument("--on-refused-tuning", choices=REFUSED_TUNING, default="log")
    parser.add_argument("--policy", type=Path, help="safety policy YAML")
    parser.add_argument("--material", default="PLA")
    parser.add_argument("--allow-insecure-http", action="store_true",
                        help="permit plain http to a printer that is not this machine")
    return parser


def _supervisor(name: str, config: DeployConfig) -> Supervisor | None:
    if name == "none":
        return None
    # The supervisors are the agent's: this command line (not the safety package) may reach up to agent/.
    from agent.live_supervisor import load_live_supervisor

    return load_live_supervisor(name, config.printer, config.material, config.program.read_bytes())


def _shower(console: Console) -> object:
    def show(live: LiveTelemetry, transport: str) -> None:
        console.print(f"[{live.print_state}] hotend {live.hotend_temp_c:.1f}/{live.hotend_target_c:.0f} °C  "
                      f"bed {live.bed_temp_c:.1f}/{live.bed_target_c:.0f} °C  layer {live.layer + 1}/{live.layer_count}"
                      f"  {100 * live.progress:.0f} %  ETA {live.eta_s:.0f} s  ({transport})", highlight=False)
    return show


def _serial(args: argparse.Namespace, console: Console) -> int:
    # Loaded for a serial deployment only (pyserial).
    from safety.deploy.serial_run import deploy_serial
    from safety.serial_sender import SerialSenderConfig, SerialSenderError  # (the same)

    program = Path(args.program)
    if not program.is_file():
        raise ConfigError(f"{program}: no such file")
    config = DeployConfig(program=program, printer=args.printer, url=f"serial:{args.serial}", stage=args.stage,
                          db=args.db, user=args.user, on_fault="estop", policy=args.policy, material=args.material)
    try:
        outcome = deploy_serial(config, args.serial, SerialSenderConfig(baud=args.baud))
    except SerialSenderError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return run.USAGE
    console.print(f"{'done' if outcome.code == run.OK else 'stopped'}: {outcome.summary}", highlight=False)
    return outcome.code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=True)
    if args.program == "deadman-cfg":
        sys.stdout.write(deadman.DEADMAN_CFG)
        return 0
    try:
        if not args.printer or bool(args.url) == bool(args.serial):
            raise ConfigError("--printer and one of --url or --serial are required")
        if args.serial:
            return _serial(args, console)
        url = credentials.check_url(args.url, args.allow_insecure_http)
        key = credentials.read_api_key(args.api_key_file)
        program = Path(args.program)
        if not program.is_file():
            raise ConfigError(f"{program}: no such file")
        config = DeployConfig(program=program, printer=args.printer, url=url, stage=args.stage, db=args.db,
                              user=args.user, supervisor=args.supervisor, on_fault=args.on_fault,
                              on_refused_tuning=args.on_refused_tuning, policy=args.policy, material=args.material,
                              allow_insecure_http=args.allow_insecure_http)
        deployment = run.Deployment(config, MoonrakerClient(url, api_key=key),
                                    _supervisor(args.supervisor, config), _shower(console))  # type: ignore[arg-type]
        outcome = deployment.run()
    except (ConfigError, credentials.CredentialError, OSError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return run.USAGE
    except MoonrakerError as exc:
        console.print(f"[red]error:[/red] the printer refused: {exc.message}", highlight=False)
        return run.USAGE
    if outcome.gate is not None:
        for check in outcome.gate.checks:
            console.print(f"{'ok  ' if check.passed else 'FAIL'} {check.name}: {check.detail}", highlight=False)
    where = f" (deployment {outcome.deployment_id})" if outcome.deployment_id else ""
    console.print(f"{'done' if outcome.code == run.OK else 'stopped'}{where}: {outcome.summary}", highlight=False)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
