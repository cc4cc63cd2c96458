"""Lines per second of G-code parsing, time estimation and full simulation, ours against peer libraries.

Run from the repository root::

    .venv/bin/python benchmarks/bench_gcode.py [--gcode FILE] [--repeat 3]

All figures come from one PrusaSlicer file of at least 200,000 lines (default
``benchmarks/out/bench_200k.gcode``, made by ``benchmarks/make_bench_gcode.sh`` when missing):

1. parsing: ``sim_bridge.gcode.GcodeReader`` against ``gcodeparser`` (PyPI ``gcodeparser``);
2. time estimation: ``sim_bridge.simulate(..., deposition=False)`` against printrun's ``gcoder``
   (``GCode(lines)`` then ``estimate_duration()``; printrun is installed with ``pip install --no-deps``
   when missing, because its wxPython dependency does not build everywhere and gcoder does not need it);
3. full simulation with deposition: ``sim_bridge.simulate(...)`` (0.1 mm height map).

Each task runs once to warm up (numba compiles the planner, heater and deposition kernels on first use),
then ``--repeat`` times; the best wall time (``time.perf_counter``) counts. Every input is read from the
file inside the timed region. Lines per second = lines in the file / best time. Prints a markdown table and
writes JSON (default ``benchmarks/out/bench_gcode.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_GCODE = ROOT / "benchmarks" / "out" / "bench_200k.gcode"
DEFAULT_JSON = ROOT / "benchmarks" / "out" / "bench_gcode.json"
MAKE_SCRIPT = ROOT / "benchmarks" / "make_bench_gcode.sh"
PRINTER = "mk3s-marlin"
MIN_LINES = 200_000


# ---------------------------------------------------------------------------------------------- input


def ensure_gcode(path: Path, default: bool) -> Path:
    """The benchmark file; the default one is sliced with PrusaSlicer when missing."""
    if path.is_file():
        return path
    if not default:
        sys.exit(f"error: {path} does not exist")
    print(f"{path} is missing: running bash {MAKE_SCRIPT.relative_to(ROOT)} (PrusaSlicer, about a minute)",
          flush=True)
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(["bash", str(MAKE_SCRIPT)], check=True, env=env)
    if not path.is_file():
        sys.exit(f"error: {MAKE_SCRIPT} did not write {path}")
    return path


def count_lines(path: Path) -> int:
    """Lines as ``wc -l`` counts them, plus a last line without a newline."""
    data = path.read_bytes()
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


_DURATION_RE = re.compile(r"(\d+)\s*([dhms])")


def prusaslicer_estimate_s(path: Path) -> float | None:
    """PrusaSlicer's ``; estimated printing time (normal mode) = 1d 2h 3m 4s`` in seconds, if present."""
    scale = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("; estimated printing time (normal mode)"):
                value = line.split("=", 1)[1]
                return float(sum(int(n) * scale[u] for n, u in _DURATION_RE.findall(value)))
    return None


# ---------------------------------------------------------------------------------------------- peers


def load_gcoder(install: bool) -> tuple[types.ModuleType | None, str]:
    """printrun's ``gcoder`` module, installing printrun (without dependencies) into this venv if needed."""
    if importlib.util.find_spec("printrun") is None:
        if not install:
            return None, "printrun is not installed (--no-install given)"
        print("printrun is not installed: installing it with `pip install --no-deps printrun` into "
              f"{sys.prefix}.\n  (--no-deps: its wxPython dependency cannot be built here; printrun.gcoder "
              "needs only the standard library and its own compiled gcoder_line extension.)", flush=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "printrun"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            return None, f"pip install --no-deps printrun failed:\n{proc.stdout}\n{proc.stderr}"
        importlib.invalidate_caches()
    try:
        import printrun.gcoder as gcoder
    except ImportError as exc:
        # printrun/__init__.py is empty in 2.x; should a version import GUI modules there, load the package
        # without running it: a bare module with the package's path lets ``from . import gcoder_line`` work.
        spec = importlib.util.find_spec("printrun")
        if spec is None or not spec.submodule_search_locations:
            return None, f"cannot import printrun.gcoder: {exc}"
        for name in [n for n in sys.modules if n == "printrun" or n.startswith("printrun.")]:
            del sys.modules[name]
        package = types.ModuleType("printrun")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["printrun"] = package
        try:
            gcoder = importlib.import_module("printrun.gcoder")
        except ImportError as exc2:
            return None, f"cannot import printrun.gcoder: {exc2}"
    return gcoder, ""


def dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# ---------------------------------------------------------------------------------------------- timing


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, list[float], Any]:
    """Warm up once, then time ``repeat`` runs; (best seconds, all seconds, last result)."""
    result = fn()
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times, result


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": dist_version("numpy"),
        "numba": dist_version("numba"),
        "gcodeparser": dist_version("gcodeparser"),
        "printrun": dist_version("Printrun"),
    }
    with contextlib.suppress(OSError):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        info["git_commit"] = commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def fmt_hms(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    s = round(seconds)
    return f"{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s"


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gcode", type=Path, default=None,
                        help=f"G-code file (default {DEFAULT_GCODE.relative_to(ROOT)}, made if missing)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per task after one warm-up (best counts)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    parser.add_argument("--no-install", action="store_true", help="do not pip-install printrun when missing")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    path = ensure_gcode(args.gcode or DEFAULT_GCODE, default=args.gcode is None).resolve()
    n_lines = count_lines(path)
    if n_lines < MIN_LINES:
        print(f"warning: {path} has {n_lines} lines (< {MIN_LINES}); figures are less stable", file=sys.stderr)

    from gcodeparser import GcodeParser

    import sim_bridge
    from sim_bridge.gcode import GcodeReader

    gcoder, gcoder_note = load_gcoder(install=not args.no_install)
    if gcoder is None:
        print(f"warning: gcoder unavailable, its rows are skipped: {gcoder_note}", file=sys.stderr)

    info = machine_info()
    started = dt.datetime.now().astimezone()
    print(f"{path}: {n_lines} lines; {args.repeat} timed runs per task after one warm-up", flush=True)

    # --- the tasks; each reads the file itself ------------------------------------------------------
    def ours_parse() -> int:
        return len(list(GcodeReader(path)))

    def peer_parse() -> int:
        text = path.read_text(encoding="utf-8", errors="replace")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # GcodeParser is deprecated in 0.3.0
            return len(GcodeParser(text).lines)

    def ours_estimate() -> Any:
        return sim_bridge.simulate(path, PRINTER, deposition=False)

    def peer_estimate() -> tuple[int, float]:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()
        layers, duration = gcoder.GCode(lines).estimate_duration()
        return layers, duration.total_seconds()

    def ours_full() -> Any:
        return sim_bridge.simulate(path, PRINTER)

    tasks: list[tuple[str, str, str, Callable[[], Any] | None]] = [
        ("parse", "ours", "sim_bridge.gcode.GcodeReader", ours_parse),
        ("parse", "peer", f"gcodeparser {info['gcodeparser']} GcodeParser", peer_parse),
        ("time estimate", "ours", f"sim_bridge.simulate(deposition=False), {PRINTER}", ours_estimate),
        ("time estimate", "peer", f"printrun {info['printrun']} gcoder GCode + estimate_duration",
         peer_estimate if gcoder is not None else None),
        ("full simulation", "ours", f"sim_bridge.simulate, {PRINTER}, 0.1 mm deposition", ours_full),
    ]

    rows: list[dict[str, Any]] = []
    results: dict[tuple[str, str], Any] = {}
    for task, who, label, fn in tasks:
        if fn is None:
            rows.append({"task": task, "who": who, "implementation": label, "skipped": gcoder_note})
            continue
        print(f"  {task:16s} {label} ...", end="", flush=True)
        best, times, result = best_of(fn, args.repeat)
        results[(task, who)] = result
        rows.append({"task": task, "who": who, "implementation": label, "best_s": best,
                     "times_s": times, "lines_per_s": n_lines / best})
        print(f" best {best:.3f} s, {n_lines / best:,.0f} lines/s", flush=True)

    by_key = {(r["task"], r["who"]): r for r in rows}
    for task in ("parse", "time estimate"):
        ours, peer = by_key.get((task, "ours")), by_key.get((task, "peer"))
        if ours and peer and "lines_per_s" in ours and "lines_per_s" in peer:
            ours["ours_over_peer"] = ours["lines_per_s"] / peer["lines_per_s"]

    # --- sanity and fidelity -------------------------------------------------------------------------
    checks: dict[str, Any] = {}
    if ("parse", "ours") in results:
        checks["commands_ours"] = results[("parse", "ours")]
    if ("parse", "peer") in results:
        checks["commands_gcodeparser"] = results[("parse", "peer")]
    sim_runs = {}
    for key, name in ((("time estimate", "ours"), "estimate"), (("full simulation", "ours"), "full")):
        report = results.get(key)
        if report is not None:
            sim_runs[name] = {"success": report.success, "lines": report.lines, "commands": report.commands,
                              "moves": report.moves, "stopped_at_line": report.stopped_at_line,
                              "print_time_s": report.print_time_s,
                              "time_breakdown_s": dict(report.time_breakdown_s),
                              "layer_count": report.layer_count,
                              "failure_modes": report.failure_modes()}
    checks["simulate"] = sim_runs

    slicer_s = prusaslicer_estimate_s(path)
    fidelity: dict[str, Any] = {"prusaslicer_normal_mode_s": slicer_s}
    estimates = {}
    if "estimate" in sim_runs:
        estimates[f"ours (simulate, {PRINTER}), total"] = sim_runs["estimate"]["print_time_s"]
        motion = sim_runs["estimate"]["time_breakdown_s"].get("motion")
        if motion is not None:
            # The slicer's estimate covers the moves (and dwells), not heat-up waits or homing.
            estimates["ours, motion + dwell only"] = motion + sim_runs["estimate"]["time_breakdown_s"].get("dwell", 0.0)
    if ("time estimate", "peer") in results:
        estimates["printrun gcoder"] = results[("time estimate", "peer")][1]
    fidelity["estimates_s"] = estimates
    if slicer_s:
        fidelity["relative_to_prusaslicer"] = {k: v / slicer_s - 1.0 for k, v in estimates.items()}
    fidelity["gcodeparser"] = "parser only: no time estimate"

    # --- output ----------------------------------------------------------------------------------------
    table = [
        f"| task | implementation | best of {args.repeat} (s) | lines/s | ours / peer |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        if "skipped" in r:
            table.append(f"| {r['task']} | {r['implementation']} | skipped | | |")
            continue
        ratio = f"{r['ours_over_peer']:.2f}x" if "ours_over_peer" in r else ""
        table.append(f"| {r['task']} | {r['implementation']} | {r['best_s']:.3f} | "
                     f"{r['lines_per_s']:,.0f} | {ratio} |")
    fid = ["| print time estimate | value | vs PrusaSlicer |", "|---|---:|---:|",
           f"| PrusaSlicer `; estimated printing time (normal mode)` | {fmt_hms(slicer_s)} ({slicer_s or 0:.0f} s) | |"]
    for name, value in estimates.items():
        rel = f"{(value / slicer_s - 1.0) * 100:+.1f} %" if slicer_s else ""
        fid.append(f"| {name} | {fmt_hms(value)} ({value:.0f} s) | {rel} |")

    print()
    print(f"File: {path.name}, {n_lines:,} lines; date {started.isoformat(timespec='seconds')}")
    print(f"Machine: {info['cpu']}, {info['usable_cores']} usable of {info['logical_cores']} logical cores; "
          f"Python {info['python']}, numpy {info['numpy']}, numba {info['numba']}")
    print()
    print("\n".join(table))
    print()
    print("\n".join(fid))
    print()
    print(f"Commands parsed: ours {checks.get('commands_ours')}, gcodeparser {checks.get('commands_gcodeparser')}")
    for name, run in sim_runs.items():
        print(f"simulate ({name}): success {run['success']}, {run['lines']} lines, {run['moves']} moves, "
              f"stopped at {run['stopped_at_line']}, failures {run['failure_modes']}, "
              f"time {', '.join(f'{k} {v:.0f} s' for k, v in run['time_breakdown_s'].items())}")

    out = {
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "benchmarks/bench_gcode.py", *(argv or sys.argv[1:])]),
        "gcode": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
        "lines": n_lines,
        "repeat": args.repeat,
        "printer": PRINTER,
        "machine": info,
        "results": rows,
        "checks": checks,
        "fidelity": fidelity,
        "gcoder_line_class": (f"{gcoder.Line.__module__}.{gcoder.Line.__name__}" if gcoder is not None else None),
        "markdown_table": "\n".join(table),
        "markdown_fidelity": "\n".join(fid),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
