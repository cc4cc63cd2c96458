"""The ``klipper-batch`` backend: a program run by the real Klipper host (Klippy) in batch mode.

Klippy reads the G-code from a file (``-i``), writes the MCU's commands to a file instead of a serial port
(``-o``, with the data dictionary of :mod:`sim_bridge.klippy.dictionary`) and exits: with status 0 and the
log line ``Exiting (print time N s)`` when it accepts the whole file, with status 255 (``sys.exit(-1)``)
and the error as the last line of its log at the first error, which ends the run. Its ``Unknown command``
and ``Invalid M204 command`` replies are log lines too: the run goes on. The command line lives in
:mod:`sim_bridge.klippy.host`; this module runs it, reads its log and maps the run onto a
:class:`~sim_bridge.report.PrintReport`.

**The error's line.** Klippy names the error, not the line (and, as it reads 4 KiB blocks and runs the
rest of a block after an error, the last error in its log need not be the first). It is found by running Klippy on prefixes of
the file: prefix ``L`` (the first ``L`` lines) fails while prefix ``L - 1`` runs clean exactly when line
``L`` is the first failing line, because Klippy runs the lines in order and the lines before the first
error run clean (a prefix ends the file early; ending a file runs nothing that could fail). The message
reported is that of the run on prefix ``L``, where line ``L``'s error is the only one. The candidate comes first: the
line where the embedded simulator in Klipper batch mode stopped, or else the line of the move that reaches
the position a ``Move out of range``/``Must home axis first`` message prints. When the candidate is
confirmed the cost is two more Klippy runs on prefixes; when it is wrong, the search bisects the range the
two runs left (``log2`` of its lines in runs, each on a prefix no longer than the file).
:attr:`KlippyRun.line_runs` says how many runs it took; a line no run confirmed is never reported.

**What batch mode cannot see.** In file-output mode nothing paces the MCU: heaters read 0 °C, M109/M190
return at once, ``min_extrude_temp`` is never checked, and nothing deposits material. Those figures
(temperatures, cold extrusion and heater faults, the height map and its defects, filament, layers, the
final state) come from the embedded simulator and the report says so per field (``report.sources``) and
per failure (``Failure.source``).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import sim_bridge.failures as fail
from sim_bridge.gcode import program_source
from sim_bridge.klipper_cfg import printer_from_klipper_cfg
from sim_bridge.klippy import host
from sim_bridge.klippy.dictionary import dictionary_path
from sim_bridge.klippy.printer_cfg import write_printer_cfg
from sim_bridge.options import SimOptions
from sim_bridge.printers import load_material, load_printer
from sim_bridge.profiles import PrinterProfile
from sim_bridge.report import EMBEDDED, KLIPPER_BATCH, Failure, Notice, PrintReport
from sim_bridge.simulator import Simulator

BASE_TIMEOUT_S = 60.0
"""Time a Klippy run may take on an empty file (start-up, compiling the C helper on a fresh install)."""
TIMEOUT_S_PER_MB = 60.0
"""Extra time per MB of G-code (Klippy plans about 1 MB in 5-15 s on this project's CI machine)."""
MAX_LINE_RUNS = 40
"""Most Klippy runs the line search may spend (bisecting a million lines takes 20)."""
BATCH_BUDGET_RUNS = 3.0
"""The whole run (the file and every prefix run) may take this many single-run limits
(:func:`batch_timeout_s` of the file); when it is spent the line search stops, as at :data:`MAX_LINE_RUNS`."""
EMBEDDED_ONLY_MODES = fail.FILE_MCU_BLIND_MODES | {fail.UNREADABLE} | fail.DEFECT_MODES
"""Failure modes batch mode cannot see (no temperatures, no material): kept from the embedded simulator."""
KLIPPY_FIELDS = ("success", "print_time_s", "failures", "notices", "stopped_at_line")
"""Report fields Klippy decides (when it accepted the file, ``print_time_s`` is its own figure)."""

READY_PREFIX = "Configured MCU "
"""The log line after which Klippy reads the G-code."""
SHUTDOWN_PREFIX = "Transition to shutdown state: "
"""How the log names the reason of a shutdown."""
_UNKNOWN_RE = re.compile(r'^Unknown command:"(.*)"$')
_M204_RE = re.compile(r'^Invalid M204 command "(.*)"$')
_POSITION_RE = re.compile(r"^(?:Move out of range|Must home axis first): (-?[0-9.]+) (-?[0-9.]+) (-?[0-9.]+)")
_WORD_RE = re.compile(r"([A-Z_]+|[A-Z*])")


class KlippyError(RuntimeError):
    """Klippy did not run the program: its config was refused, it timed out or could not start."""


@dataclass
class KlippyRun:
    """What one batch run of Klippy said."""

    exit_code: int
    print_time_s: float | None = None
    """From ``Exiting (print time N s)``; None when the run ended on an error."""
    error: str | None = None
    """Klippy's first error message (its first line), None when it accepted the file."""
    error_line: int | None = None
    """1-based line of the error in the program, as the prefix runs confirmed it."""
    unknown_commands: list[str] = field(default_factory=list)
    """Each ``Unknown command`` reply, in order (a command once per time it was met)."""
    invalid_m204: list[str] = field(default_factory=list)
    """Each ``Invalid M204 command`` reply, in order."""
    line_runs: int = 0
    """Extra Klippy runs on prefixes it took to find ``error_line``."""
    restarts: int = 0
    """Times Klippy restarted while reading (``RESTART``, ``FIRMWARE_RESTART``, ``SAVE_CONFIG``: batch mode
    then starts over on a fresh host, which finds the input already read)."""
    body: list[str] = field(default_factory=list)
    """The log's non-blank lines after the last ``Configured MCU`` (what the G-code made Klippy write)."""
    log: str = ""


def parse_log(text: str, exit_code: int) -> KlippyRun:
    """A run's figures from Klippy's log file (``-l``: one message per line, no level).

    The G-code starts after the MCU is configured (``Configured MCU …``). An accepted file ends with the
    ``Exiting`` line; on an error Klippy exits soon after, so the last line it wrote is an error (a
    shutdown writes ``Transition to shutdown state: …`` and a dump after it). A ``Config error`` before that point
    raises :class:`KlippyError` with the reason (the last line of its traceback).

    >>> run = parse_log("Configured MCU 'mcu' (500 moves)\\nUnknown command:\\"M73\\"\\nExiting (print time 95.838s)\\n", 0)
    >>> run.print_time_s, run.unknown_commands
    (95.838, ['M73'])
    >>> parse_log("Configured MCU 'mcu' (500 moves)\\nMove out of range: 240.000 46.000 5.000 [0.000]\\n", 255).error
    'Move out of range: 240.000 46.000 5.000 [0.000]'
    """
    run = KlippyRun(exit_code=exit_code, log=text)
    lines = text.splitlines()
    start = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith(READY_PREFIX)), None)
    if start is None:
        reason = next((lines[i] for i in range(len(lines) - 1, -1, -1) if lines[i].strip()
                       and not lines[i].startswith(" ")), "no log")
        if any(line.startswith("Config error") for line in lines):
            raise KlippyError(f"Klippy refused the printer config: {reason.split(': ', 1)[-1]}")
        raise KlippyError(f"Klippy stopped before reading the G-code (exit {exit_code}): {reason}")
    body = [line for line in lines[start + 1:] if line.strip()]
    run.body = body
    run.restarts = sum(1 for line in lines if line.startswith(READY_PREFIX)) - 1
    for line in body:
        if (time_s := host.exit_print_time_s(line)) is not None:
            run.print_time_s = time_s
        elif (m := _UNKNOWN_RE.match(line)) is not None:
            run.unknown_commands.append(m.group(1))
        elif (m := _M204_RE.match(line)) is not None:
            run.invalid_m204.append(m.group(1))
    if exit_code != 0 and body:
        # The last line is an error, not always the first one (see run_batch); a shutdown's reason precedes
        # its dump.
        shutdown = next((line for line in body if line.startswith(SHUTDOWN_PREFIX)), None)
        run.error = shutdown.removeprefix(SHUTDOWN_PREFIX).strip() if shutdown else body[-1].strip()
    return run


def batch_timeout_s(gcode_bytes: int) -> float:
    """The wall-clock limit of one Klippy run on a file of this size."""
    return BASE_TIMEOUT_S + TIMEOUT_S_PER_MB * gcode_bytes / 1e6


def run_klippy(gcode: bytes, printer_cfg: Path, workdir: Path, timeout_s: float | None = None) -> KlippyRun:
    """One batch run of Klippy on ``gcode`` (bytes of the program) in ``workdir``; raises
    :class:`KlippyError` on a refused config, a crash without an error message, or a timeout."""
    gcode_path = workdir / "in.gcode"
    gcode_path.write_bytes(gcode)
    log_path = workdir / "klippy.log"
    # Klippy appends to its log: each run (the prefix runs share the folder) starts a fresh one.
    log_path.unlink(missing_ok=True)
    argv = host.batch_argv(printer_cfg, gcode_path, workdir / "out.serial", dictionary_path(), log_path)
    limit = timeout_s if timeout_s is not None else batch_timeout_s(len(gcode))
    with open(workdir / "klippy.out", "wb") as out:
        try:
            # Output to a file, not a pipe: nothing has to read it while Klippy runs.
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=limit, cwd=workdir, check=False)
        except subprocess.TimeoutExpired:
            raise KlippyError(f"Klippy batch run timed out after {limit:.0f} s ({len(gcode)} bytes)") from None
    text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.is_file() else ""
    if not text:
        text = (workdir / "klippy.out").read_text(encoding="utf-8", errors="replace")
    if proc.returncode < 0:
        raise KlippyError(f"Klippy killed by signal {-proc.returncode} ({len(gcode)} bytes); its log ends: "
                          f"{text[-500:]}")
    if proc.returncode not in (host.EXIT_OK, host.EXIT_ERROR):
        # Neither accepted nor stopped at a G-code error: a crash, not a verdict on the program.
        raise KlippyError(f"Klippy exited with status {proc.returncode} (expected 0 or 255); its log ends: "
                          f"{text[-500:]}")
    run = parse_log(text, proc.returncode)
    if run.exit_code == 0 and run.print_time_s is None:
        raise KlippyError(f"Klippy exited 0 without a print time; its log ends: {text[-500:]}")
    if run.exit_code != 0 and run.error is None:
        raise KlippyError(f"Klippy exited {proc.returncode} without an error message; its log ends: "
                          f"{text[-500:]}")
    return run


def split_lines(program: bytes) -> list[bytes]:
    """The program's lines as Klippy counts them (split at ``\\n``; a ``\\r`` stays in its line)."""
    lines = program.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line + b"\n" for line in lines]


def klipper_command(line: str) -> str:
    """The command name Klippy reads from a line (upper case, after an ``N`` line number, before ``;``).

    >>> klipper_command("g1x10 y5 ; travel"), klipper_command("N12 M104 S200*45"), klipper_command("print_start")
    ('G1', 'M104', 'PRINT_START')
    """
    text = line.split(";", 1)[0].strip().upper()
    parts = _WORD_RE.split(text)
    if "".join(parts[:2]) == "N":
        return "".join(parts[3:5]).strip()
    return "".join(parts[:3]).strip()


def position_candidates(lines: list[bytes], message: str, limit: int = 3) -> list[int]:
    """Lines (1-based) of moves whose written X/Y/Z match the position a move error prints (absolute
    coordinates only: a cheap guess, confirmed by Klippy before it is used)."""
    m = _POSITION_RE.match(message)
    if m is None:
        return []
    target = [float(v) for v in m.groups()]
    found: list[int] = []
    for number, raw in enumerate(lines, 1):
        text = raw.decode("utf-8", "replace")
        if klipper_command(text) not in {"G0", "G1"}:
            continue
        words = dict(re.findall(r"([XYZ])\s*(-?[0-9.]+)", text.split(";", 1)[0].upper()))
        try:
            if words and all(abs(float(v) - target["XYZ".index(k)]) < 5e-4 for k, v in words.items()):
                found.append(number)
        except ValueError:
            continue
        if len(found) >= limit:
            break
    return found


def find_error_line(lines: list[bytes], fails: Callable[[int], bool], candidates: list[int],
                    max_runs: int = MAX_LINE_RUNS) -> tuple[int | None, int]:
    """The first line ``L`` with ``fails(L)`` and not ``fails(L - 1)`` (``fails(n)``: does the prefix of ``n``
    lines end on an error; the whole file does), trying the candidates first; returns it (None when the run
    budget ran out) and the number of calls to ``fails``.

    >>> find_error_line([b""] * 100, lambda n: n >= 42, [40])
    (42, 7)
    >>> find_error_line([b""] * 100, lambda n: n >= 42, [42])
    (42, 2)
    """
    lo, hi = 0, len(lines)  # invariant: prefix lo runs clean (0 lines always does), prefix hi fails
    runs = 0
    for candidate in candidates:
        if not lo < candidate <= hi or runs + 2 > max_runs:
            continue
        runs += 1
        if fails(candidate):
            hi = candidate
            if candidate - 1 <= lo:
                return candidate, runs
            runs += 1
            if not fails(candidate - 1):
                return candidate, runs
            hi = candidate - 1
        else:
            lo = candidate
    while hi - lo > 1:
        if runs >= max_runs:
            return None, runs
        mid = (lo + hi) // 2
        runs += 1
        if fails(mid):
            hi = mid
        else:
            lo = mid
    return hi, runs


def _notices(run: KlippyRun, lines: list[bytes]) -> list[Notice]:
    """Klippy's replies as notices, each on the next line (in file order) that carries its command."""
    replies = [(fail.UNKNOWN_COMMAND, cmd, f'Unknown command:"{cmd}"') for cmd in run.unknown_commands]
    replies += [(fail.INVALID_M204, "M204", f'Invalid M204 command "{text}"') for text in run.invalid_m204]
    commands = [klipper_command(raw.decode("utf-8", "replace")) for raw in lines]
    notices: list[Notice] = []
    for kind in (fail.UNKNOWN_COMMAND, fail.INVALID_M204):
        at = 0
        for reply_kind, command, message in replies:
            if reply_kind != kind:
                continue
            while at < len(commands) and commands[at] != command:
                at += 1
            notices.append(Notice(kind, message, at + 1 if at < len(commands) else 0, source=KLIPPER_BATCH))
            at += 1
    return sorted(notices, key=lambda n: n.line)


def printer_and_cfg(printer: PrinterProfile | str | os.PathLike[str], workdir: Path
                    ) -> tuple[PrinterProfile, Path]:
    """The profile and the printer.cfg Klippy runs: the user's own ``.cfg`` (and the profile read from it),
    or one written from the profile (a bundled name, a profile YAML or a slicer config via
    :func:`sim_bridge.printers.load_printer`)."""
    if not isinstance(printer, PrinterProfile):
        path = Path(printer)
        if path.suffix.lower() == ".cfg":
            return printer_from_klipper_cfg(path), path.resolve()
        printer = load_printer(printer)
    cfg = workdir / "printer.cfg"
    write_printer_cfg(printer, cfg)
    return printer, cfg


def run_batch(program: bytes, printer_cfg: Path, workdir: Path, candidates: Callable[[], list[int]],
              budget_s: float | None = None) -> KlippyRun:
    """Klippy on the whole program and, when it fails, on prefixes to find the first error's line and
    message (``candidates`` is called only then).

    The whole run has one deadline, ``budget_s`` from its start (default :data:`BATCH_BUDGET_RUNS` times
    :func:`batch_timeout_s` of the program): each prefix run gets what is left of it, at most its own
    limit; when it is spent the search stops and ``error_line`` stays None (as when the run count is spent).

    Batch mode reads its input 4 KiB at a time and, after an error, still runs the rest of that block
    before it exits, so the whole file's log can end on a later error than the first. The run on the
    prefix that ends at the first failing line has that error alone: its message is the one reported.
    """
    per_run_s = batch_timeout_s(len(program))
    deadline = time.monotonic() + (budget_s if budget_s is not None else BATCH_BUDGET_RUNS * per_run_s)
    run = run_klippy(program, printer_cfg, workdir, min(per_run_s, max(deadline - time.monotonic(), 0.0)))
    if run.error is None:
        return run
    lines = split_lines(program)
    prefix_runs: dict[int, KlippyRun] = {}

    class _BudgetSpent(Exception):
        """The deadline passed before a prefix run could start."""

    def fails(n: int) -> bool:
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            raise _BudgetSpent
        prefix_runs[n] = run_klippy(b"".join(lines[:n]), printer_cfg, workdir, min(per_run_s, left_s))
        return prefix_runs[n].error is not None

    guesses = [*candidates(), *position_candidates(lines, run.error)]
    try:
        run.error_line, run.line_runs = find_error_line(lines, fails, list(dict.fromkeys(guesses)))
    except _BudgetSpent:
        run.error_line, run.line_runs = None, len(prefix_runs)
    if run.error_line is not None:
        first = prefix_runs.get(run.error_line, run)  # not run: the whole file is the shortest failing prefix
        clean = prefix_runs.get(run.error_line - 1, KlippyRun(exit_code=0))
        run.error = error_text(first, clean)
    return run


def error_text(failing: KlippyRun, clean: KlippyRun) -> str | None:
    """The error's whole message: what the run on the failing prefix logged beyond the run on the prefix one
    line shorter (a message can span lines: ``Move exceeds maximum extrusion (…)`` and a ``See the …``
    hint); the last line of the failing run when the two logs do not share their start.

    >>> clean = KlippyRun(0, body=['Unknown command:"M73"', "Exiting (print time 1.000s)"])
    >>> failing = KlippyRun(255, error="See the hint", body=['Unknown command:"M73"', "Bad move", "See the hint"])
    >>> error_text(failing, clean)
    'Bad move\\nSee the hint'
    """
    before = [line for line in clean.body if host.exit_print_time_s(line) is None]
    if failing.body[: len(before)] != before or len(failing.body) <= len(before):
        return failing.error
    new = failing.body[len(before):]
    shutdown = next((line for line in new if line.startswith(SHUTDOWN_PREFIX)), None)
    return failing.error if shutdown else "\n".join(line.strip() for line in new)


def simulate_klipper_batch(program: str | os.PathLike[str] | bytes,
                           printer: PrinterProfile | str | os.PathLike[str], *,
                           options: SimOptions | None = None, material: str = "PLA") -> PrintReport:
    """Run ``program`` through Klippy's batch mode on ``printer`` and report it, with what batch mode cannot
    see taken from the embedded simulator (``options``), each field marked with its source."""
    data, name = program_source(program)
    # The embedded model stands in for what batch mode cannot see: it models the host that runs.
    options = replace(options or SimOptions(), klipper_host=host.find_host().fork)
    with tempfile.TemporaryDirectory(prefix="layerloop-klippy-") as tmp:
        workdir = Path(tmp)
        profile, cfg = printer_and_cfg(printer, workdir)
        mat = load_material(material)

        def candidates() -> list[int]:
            # Bytes, as Klippy reads them (the simulator decodes them as it does a file).
            batch = Simulator(profile, mat, replace(options, klipper_batch_mode=True, deposition=False,
                                                    traces=False)).run(data, name=name)
            return [batch.stopped_at_line] if batch.stopped_at_line else []

        run = run_batch(data, cfg, workdir, candidates)
        lines = split_lines(data)
        # The embedded figures stop where Klippy stopped (the failing line is not run).
        executed = data if run.error_line is None else b"".join(lines[: run.error_line - 1])
        embedded = Simulator(profile, mat, options).run(executed, name=name)
    return merge_report(run, embedded, lines)


def merge_report(run: KlippyRun, embedded: PrintReport, lines: list[bytes]) -> PrintReport:
    """The report of a Klippy run: Klippy's verdict, time, error and notices; the rest from ``embedded``
    (the embedded simulator's report of the part Klippy ran).

    ``success`` is the embedded simulator's rule: no failure of any kind (fatal or not) in the report."""
    failures = [replace(f, source=EMBEDDED) for f in embedded.failures if f.mode in EMBEDDED_ONLY_MODES]
    stopped = next((f.line for f in failures if f.fatal), None)
    if run.error is not None:
        mode = fail.classify_klipper_message(run.error) or fail.OTHER
        line = run.error_line or 0
        layer = next((m.index for m in reversed(embedded.layers) if m.first_line <= line), -1)
        failures.append(Failure(mode, run.error, line, layer, fatal=True, source=KLIPPER_BATCH))
        stopped = line if stopped is None else min(stopped, line)
    failures.sort(key=lambda f: f.line)
    sources = {name: EMBEDDED for name in embedded.to_dict() if name not in {"backend", "sources"}}
    sources.update(dict.fromkeys(KLIPPY_FIELDS, KLIPPER_BATCH))
    if run.print_time_s is None:
        sources["print_time_s"] = EMBEDDED
    return replace(embedded, success=not failures, failures=failures,
                   print_time_s=run.print_time_s if run.print_time_s is not None else embedded.print_time_s,
                   notices=_notices(run, lines), stopped_at_line=stopped, backend=KLIPPER_BATCH,
                   sources=sources)
