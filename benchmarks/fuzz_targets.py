"""The fuzz campaign's targets and its worker process (see ``benchmarks/fuzz_campaign.py``).

Each target takes one :class:`~fuzz_inputs.FuzzInput` and says how it ended:

* ``ok`` — it returned and its result is well-formed;
* ``rejected`` — it raised the error its contract promises for bad input (the reader's ``GcodeError``; the
  simulator's ``GcodeError``/``ConfigError``, or a ``ValueError`` that names a line);
* ``crash`` — any other exception (or, for the validator, any exception: its contract is that everything
  about a program's contents is a finding), with the innermost project frame as its location;
* ``invalid`` — it returned, but the result breaks an invariant (a non-finite print time, a verdict whose
  ``allowed`` disagrees with its findings, commands out of line order …);
* ``unclear`` — the simulator raised a bare ``ValueError`` that names no line (not a crash, not a clear error);
* ``memory`` — ``MemoryError`` under the worker's ``RLIMIT_AS`` bound;
* ``backend_error`` — the Klippy backend raised ``KlippyError`` (Klippy timed out, crashed or was killed);
* ``hang`` and ``died`` are the parent's verdicts: no answer within the time bound, or the worker exited.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import resource
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from fuzz_inputs import FuzzInput

from safety.findings import Verdict
from safety.validator import validate
from sim_bridge import GcodeError, GcodeReader, PrintReport, load_printer, simulate
from sim_bridge.backends import simulate as simulate_backend
from sim_bridge.config import ConfigError

TARGETS = ("reader", "validator", "simulator", "klippy")
FINDING_OUTCOMES = ("crash", "invalid", "unclear", "memory", "backend_error", "hang", "died")
_LINE_REF_RE = re.compile(r":\d+:|\bline \d+")
_PROJECT_DIRS = (f"{os.sep}sim_bridge{os.sep}", f"{os.sep}safety{os.sep}")
_PROFILES: dict[str, Any] = {}


def _profile(name: str) -> Any:
    if name not in _PROFILES:
        _PROFILES[name] = load_printer(name)
    return _PROFILES[name]


def maxrss_mb() -> float:
    """This process's peak resident memory so far (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _source(inp: FuzzInput, workdir: Path, target: str) -> Any:
    if inp.form == "str":
        return inp.data.decode("utf-8", errors="replace")
    if inp.form == "path":
        path = workdir / f"in-{inp.index}.gcode"
        path.write_bytes(inp.data)
        # Both ways a path reaches the targets: a Path, and a short str ending in .gcode (program_path's rule).
        return path if target != "simulator" else str(path)
    if inp.form == "lines" and target == "reader":
        return inp.data.decode("utf-8", errors="replace").split("\n")
    return inp.data


def _validated_bytes(inp: FuzzInput) -> bytes:
    return inp.data.decode("utf-8", errors="replace").encode("utf-8") if inp.form == "str" else inp.data


def check_reader(inp: FuzzInput, workdir: Path) -> str:
    reader = GcodeReader(_source(inp, workdir, "reader"), **inp.reader_options)  # type: ignore[arg-type]
    try:
        commands = list(reader)
    except GcodeError as exc:
        if exc.line < 0 or not str(exc).startswith(f"{exc.source}:{exc.line}: "):
            return f"invalid: GcodeError without file:line: {exc}"
        raise
    last = 0
    for cmd in commands:
        if cmd.line < last or cmd.line < 1 or cmd.line > reader.lines_read:
            return f"invalid: command line {cmd.line} out of order (previous {last}, lines read {reader.lines_read})"
        # With keep_comments a comment-only line is a command without a code.
        if cmd.code != cmd.code.upper() or not (cmd.code or inp.reader_options.get("keep_comments")):
            return f"invalid: command code {cmd.code!r} not upper case"
        if not all(isinstance(v, float) for v in cmd.params.values()):
            return f"invalid: non-float parameter in {cmd.params!r}"
        last = cmd.line
    return "ok"


def check_validator(inp: FuzzInput, workdir: Path) -> str:
    verdict: Verdict = validate(_source(inp, workdir, "validator"), _profile(inp.printer))
    if verdict.verdict not in ("allow", "block") or verdict.allowed != (not verdict.violations):
        return f"invalid: verdict {verdict.verdict} with {len(verdict.violations)} findings"
    if inp.form in ("bytes", "str", "lines") and verdict.sha256 != hashlib.sha256(_validated_bytes(inp)).hexdigest():
        return "invalid: sha256 is not that of the bytes validated"
    bad = [v for v in verdict.violations if not (v.rule and v.message and v.line >= 0)]
    if bad:
        return f"invalid: finding without rule/message/line: {bad[0]!r}"[:300]
    json.dumps(verdict.as_dict())
    return "ok"


def _check_report(report: PrintReport) -> str:
    if not isinstance(report, PrintReport):
        return f"invalid: returned {type(report).__name__}, not a PrintReport"
    if not (math.isfinite(report.print_time_s) and report.print_time_s >= 0):
        return f"invalid: print_time_s {report.print_time_s!r}"
    if not math.isfinite(report.filament_mm):
        return f"invalid: filament_mm {report.filament_mm!r}"
    if report.success != (not report.failures):
        return f"invalid: success {report.success} with {len(report.failures)} failures"
    if any(not (f.mode and f.message) for f in report.failures):
        return "invalid: failure without mode or message"
    json.dumps(report.to_dict())
    report.summary()
    return "ok"


def check_simulator(inp: FuzzInput, workdir: Path) -> str:
    return _check_report(simulate(_source(inp, workdir, "simulator"), _profile(inp.printer),
                                  deposition=inp.deposition))


def check_klippy(inp: FuzzInput, _workdir: Path) -> str:
    return _check_report(simulate_backend(inp.data, _profile(inp.printer), backend="klipper-batch"))


CHECKS = {"reader": check_reader, "validator": check_validator, "simulator": check_simulator,
          "klippy": check_klippy}


def _location(exc: BaseException) -> str:
    """The innermost frame in the project's own code (else the innermost frame): where to look first."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if any(d in f.filename for d in _PROJECT_DIRS)]
    frame = (ours or frames or [None])[-1]
    if frame is None:
        return "?"
    name = frame.filename
    for d in _PROJECT_DIRS:
        if d in name:
            name = d.strip(os.sep) + os.sep + name.split(d, 1)[1]
    return f"{name}:{frame.lineno} {frame.name}"


def _expected(target: str, exc: BaseException) -> str | None:
    """``rejected``/``unclear`` for an error the target may raise on bad input, else None (a crash)."""
    if target == "validator":
        return None
    if isinstance(exc, GcodeError):
        return "rejected"
    if target in ("simulator", "klippy") and isinstance(exc, ConfigError):
        return "rejected"
    if target in ("simulator", "klippy") and type(exc) is ValueError:
        return "rejected" if _LINE_REF_RE.search(str(exc)) else "unclear"
    if target == "klippy" and type(exc).__name__ == "KlippyError":
        return "backend_error"
    return None


def run_target(target: str, inp: FuzzInput, workdir: Path) -> dict[str, Any]:
    """Run one target on one input: outcome, time, memory, and for errors the type, message and place."""
    start = time.perf_counter()
    result: dict[str, Any] = {"target": target, "outcome": "ok"}
    try:
        verdict = CHECKS[target](inp, workdir)
        if verdict != "ok":
            result.update(outcome="invalid", message=verdict)
    except MemoryError as exc:
        result.update(outcome="memory", error="MemoryError", location=_location(exc), message="MemoryError")
    except (Exception, RecursionError) as exc:  # noqa: BLE001 - every other exception is a finding or a rejection
        outcome = _expected(target, exc) or "crash"
        result.update(outcome=outcome, error=type(exc).__name__, message=str(exc)[:400])
        if outcome != "rejected":
            result.update(location=_location(exc), traceback=traceback.format_exc()[-3000:])
    result["elapsed_s"] = time.perf_counter() - start
    result["rss_mb"] = maxrss_mb()
    return result


def worker_main(conn: Connection, mem_mb: int, workdir: str) -> None:
    """The worker: its own process group (a hang's Klippy children die with it), an address-space bound,
    then inputs from ``conn`` until ``None``; one message per target as it finishes, then ``done``."""
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends its workers
    limit = mem_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    folder = Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        job = conn.recv()
        if job is None:
            return
        inp, targets = job
        for target in targets:
            result = run_target(target, inp, folder)
            result["kernels"] = "numba" if "numba" in sys.modules else "python"
            conn.send(("result", inp.index, result))
        if inp.form == "path":
            (folder / f"in-{inp.index}.gcode").unlink(missing_ok=True)
        conn.send(("done", inp.index, None))
