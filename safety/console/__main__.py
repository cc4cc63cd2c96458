"""``python -m safety.console``: serve the approval console, or do what it does from a script.

    python -m safety.console adduser alice --role reviewer --password-stdin < pw.txt
    python -m safety.console adduser olga --role operator
    python -m safety.console set-roles alice --role reviewer --role operator
    python -m safety.console users
    python -m safety.console revoke-sessions alice  # every session of alice ends at its next request
    python -m safety.console submit part.gcode --printer ender3-klipper --job "bracket v2"
    python -m safety.console list
    python -m safety.console approve 3 --comment "checked first layer" --user alice
    python -m safety.console audit
    python -m safety.console actions             # the console's action log (logins, requests, refusals)
    python -m safety.console serve               # http://127.0.0.1:8765

Every subcommand takes ``--db PATH`` (default ``approvals.db``). Bad input exits with status 2 and a
message saying what to change.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from dataclasses import asdict
from pathlib import Path

from safety.accounts import ROLES, AccountError, Accounts
from safety.approvals import ApprovalError, ApprovalStore
from safety.console.activity import CLI_CLIENT, ActivityLog
from safety.console.config import LOOPBACK_HOSTS, ConsoleConfig
from safety.console.security import ConsoleError, load_or_create_secret
from safety.database import StoreError
from sim_bridge.backends import OFFLINE_BACKENDS
from sim_bridge.config import ConfigError

EXIT_BAD_INPUT = 2
CLI_USER = "cli"
"""Who the action log names for an account change made from the command line (with the OS user)."""


def _store(args: argparse.Namespace) -> ApprovalStore:
    return ApprovalStore(args.db)


def _log(args: argparse.Namespace, action: str, target: str, user: str = CLI_USER, **detail: object) -> None:
    """One row of the console's action log for a command-line action."""
    ActivityLog(args.db).record(user, CLI_CLIENT, action, target, os_user=_os_user(), **detail)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment and none in the password database
        return "?"


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ApprovalError(f"{what} {path}: {exc.strerror or exc}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    # The web stack (FastAPI, uvicorn) loads only for `serve`: the other subcommands start at once.
    import uvicorn

    from safety.console.app import create_app  # imports FastAPI; see above

    config = ConsoleConfig(db=args.db, host=args.host, port=args.port, max_upload_mib=args.max_upload_mib,
                           secure_cookie=args.secure_cookie, submitter_may_approve=args.submitter_may_approve,
                           login_max_failures=args.login_max_failures, login_window_s=args.login_window_s,
                           live_poll_s=args.live_poll_s)
    store = ApprovalStore(config.db)
    if not store.accounts.users():
        print(f"note: no users yet; add one with `python -m safety.console adduser NAME --db {config.db}`",
              file=sys.stderr)
    if config.host not in LOOPBACK_HOSTS:
        print(f"WARNING: binding {config.host}: the console is reachable from other machines. It speaks plain "
              "HTTP; put it behind a TLS proxy and pass --secure-cookie.", file=sys.stderr)
    app = create_app(store, config, load_or_create_secret(config.db))
    uvicorn.run(app, host=config.host, port=config.port, server_header=False, proxy_headers=False,
                log_level="info")
    return 0


def cmd_adduser(args: argparse.Namespace) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise AccountError("the passwords differ")
    roles = tuple(args.role or ROLES)
    Accounts(args.db).add_user(args.name, password, roles)
    _log(args, "adduser", f"user:{args.name}", roles=" ".join(sorted(set(roles))))
    print(f"added user {args.name} ({', '.join(sorted(set(roles)))})")
    return 0


def cmd_set_roles(args: argparse.Namespace) -> int:
    roles = Accounts(args.db).set_roles(args.name, args.role)
    _log(args, "set-roles", f"user:{args.name}", roles=" ".join(roles))
    print(f"user {args.name}: {', '.join(roles)}")
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    accounts = Accounts(args.db)
    for name in accounts.users():
        print(f"{name}\t{' '.join(accounts.roles(name)) or '-'}")
    return 0


def cmd_revoke_sessions(args: argparse.Namespace) -> int:
    generation = Accounts(args.db).revoke_sessions(args.name, by=f"{CLI_USER}:{_os_user()}")
    _log(args, "revoke-sessions", f"user:{args.name}", generation=generation)
    print(f"revoked every session of {args.name}: they are refused from their next request")
    return 0


def cmd_actions(args: argparse.Namespace) -> int:
    rows = ActivityLog(args.db).rows()
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=1))
        return 0
    for r in rows:
        detail = "; ".join(f"{k}: {v}" for k, v in r.detail.items())
        print(f"{r.id}\t{r.time_utc}\t{r.user or '-'}\t{r.client}\t{r.action}\t{r.target or '-'}\t{r.outcome}"
              f"\t{detail}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    gcode = _read_file(args.file, "program")
    expert = _read_file(args.expert, "expert program") if args.expert else None
    store = _store(args)
    program_id = store.submit(gcode, printer=args.printer, job=args.job or Path(args.file).stem,
                              description=args.description, expert_gcode=expert, submitted_by=args.user,
                              backend=args.backend)
    p = store.program(program_id)
    _log(args, "submit", f"program:{program_id}", user=args.user or CLI_USER, sha256=p.sha256)
    failures = len(p.report.get("failures", []))
    print(f"program {program_id} sha256 {p.sha256} validator {p.verdict['verdict']} "
          f"({len(p.verdict['violations'])} findings), simulation "
          f"{'success' if p.report.get('success') else f'{failures} failures'}: pending")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    rows = store.programs() if args.all else store.pending()
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=1))
        return 0
    for r in rows:
        print(f"{r.id}\t{r.status}\t{r.verdict}\t{r.printer}\t{r.sha256}\t{r.submitted_at}\t{r.job}")
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    try:
        row = _store(args).decide(args.id, args.user, args.command, args.comment,
                                  submitter_may_approve=args.submitter_may_approve)
    except ApprovalError as exc:
        _log(args, args.command, f"program:{args.id}", user=args.user, outcome="refused", reason=str(exc))
        raise
    _log(args, row.decision, f"program:{row.program_id}", user=row.user, sha256=row.sha256, audit_id=row.id)
    print(f"audit {row.id}: {row.decision} program {row.program_id} sha256 {row.sha256} by {row.user} "
          f"at {row.time_utc}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    rows = _store(args).audit()
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=1))
        return 0
    for r in rows:
        print(f"{r.id}\t{r.time_utc}\t{r.user}\t{r.program_id}\t{r.sha256}\t{r.decision}\t{r.comment}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m safety.console", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default="approvals.db", help="approvals database (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = ConsoleConfig()

    p = sub.add_parser("serve", parents=[common], help="serve the web console")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, loopback only)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--max-upload-mib", type=float, default=20.0, help="largest upload (default: %(default)s)")
    p.add_argument("--secure-cookie", action="store_true", help="session cookie only over HTTPS (behind TLS)")
    p.add_argument("--submitter-may-approve", action="store_true",
                   help="let the user who submitted a program approve it (off: another reviewer must)")
    p.add_argument("--login-max-failures", type=int, default=defaults.login_max_failures,
                   help="failed logins per user name and per address within the window (default: %(default)s)")
    p.add_argument("--login-window-s", type=float, default=defaults.login_window_s,
                   help="login rate-limit window in seconds (default: %(default)s)")
    p.add_argument("--live-poll-s", type=float, default=defaults.live_poll_s,
                   help="how often a deployment's live page refreshes (default: %(default)s)")
    p.set_defaults(func=cmd_serve)

    roles_help = f"{' or '.join(ROLES)}; repeat for both"
    p = sub.add_parser("adduser", parents=[common], help="add a console user")
    p.add_argument("name")
    p.add_argument("--role", action="append", choices=ROLES,
                   help=f"{roles_help} (default: both)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    p.set_defaults(func=cmd_adduser)

    p = sub.add_parser("set-roles", parents=[common], help="replace a user's roles")
    p.add_argument("name")
    p.add_argument("--role", action="append", choices=ROLES, required=True, help=roles_help)
    p.set_defaults(func=cmd_set_roles)

    p = sub.add_parser("users", parents=[common], help="list the users and their roles")
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("revoke-sessions", parents=[common], help="end every console session of a user")
    p.add_argument("name")
    p.set_defaults(func=cmd_revoke_sessions)

    p = sub.add_parser("submit", parents=[common], help="validate, simulate and queue a program")
    p.add_argument("file")
    p.add_argument("--printer", required=True, help="bundled printer profile name or profile file")
    p.add_argument("--job", default="", help="job name (default: the file's name)")
    p.add_argument("--description", default="")
    p.add_argument("--expert", help="the expert's program for the same job, for the diff")
    p.add_argument("--user", default="", help="who submits (recorded as is)")
    p.add_argument("--backend", choices=OFFLINE_BACKENDS, default=OFFLINE_BACKENDS[0],
                   help="simulate for the review also on this backend (klipper-batch: the real Klipper host)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("list", parents=[common], help="pending programs (or all with --all)")
    p.add_argument("--all", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    for decision in ("approve", "reject"):
        p = sub.add_parser(decision, parents=[common], help=f"{decision} a pending program")
        p.add_argument("id", type=int)
        p.add_argument("--comment", required=True)
        p.add_argument("--user", required=True, help="a console user with the reviewer role (see adduser)")
        p.add_argument("--submitter-may-approve", action="store_true",
                       help="allow approval by the user who submitted the program")
        p.set_defaults(func=cmd_decide)

    p = sub.add_parser("audit", parents=[common], help="print the audit log")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("actions", parents=[common], help="print the console's action log")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_actions)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (StoreError, ConsoleError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
