"""Whole-process time of the command lines a user runs, ours against printrun's gcoder, in one run.

Run from the repository root::

    .venv/bin/python benchmarks/bench_startup.py [--repeat 5] [--baseline REV]

Each command starts a fresh Python process, as a user, a git hook or CI does, and reads one file:

* a two-line file (``G28`` and one move), the 56k-line and the 280k-line PrusaSlicer files of
  ``benchmarks/make_bench_gcode.sh`` (made when missing);
* ``python -m sim_bridge simulate FILE --printer mk3s-marlin --quiet`` (full simulation), the same with
  ``--no-deposition`` (the time estimate) and ``python -m safety check FILE --printer mk3s-marlin``;
* the peer: ``python -c`` running printrun's ``gcoder.GCode(lines).estimate_duration()`` on the file;
* with ``--baseline REV``: our simulate command as commit REV had it (a git worktree in ``benchmarks/out``),
  to measure a change in the same run.

Each command runs once to warm up (page cache, numba's on-disk cache), then ``--repeat`` times; the best
wall time counts, with the peak memory (``ru_maxrss``) of that process. Prints a markdown table and writes
``benchmarks/out/bench_startup.json``. The warm in-process figures are ``benchmarks/bench_gcode.py``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_gcode import count_lines, dist_version, load_gcoder, machine_info  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
PRINTER = "mk3s-marlin"
GCODER = ("import sys\nfrom printrun import gcoder\n"
          "with open(sys.argv[1]) as f:\n    print(gcoder.GCode(f.readlines()).estimate_duration())\n")


def inputs() -> list[Path]:
    """The two-line file and the two PrusaSlicer files (sliced when missing)."""
    OUT.mkdir(parents=True, exist_ok=True)
    two = OUT / "two_lines.gcode"
    two.write_text("G28\nG1 X10 Y10 F3000\n", encoding="utf-8")
    files = [OUT / "bench_58k.gcode", OUT / "bench_200k.gcode"]
    if not all(f.is_file() for f in files):
        subprocess.run(["bash", str(ROOT / "benchmarks" / "make_bench_gcode.sh")], check=True,
                       env={**os.environ, "PYTHON": sys.executable})
    return [two, *files]


def run_once(cmd: list[str], cwd: Path) -> tuple[float, float, int]:
    """(wall seconds, peak memory MiB, exit code) of one process."""
    env = {k: v for k, v in os.environ.items() if k != "LAYERLOOP_KERNELS"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err[-2000:]}")
    return wall, usage.ru_maxrss / 1024.0, proc.returncode


def best_of(cmd: list[str], cwd: Path, repeat: int) -> dict[str, Any]:
    run_once(cmd, cwd)
    runs = [run_once(cmd, cwd) for _ in range(repeat)]
    best = min(runs)
    return {"best_s": best[0], "peak_mib": best[1], "exit": best[2], "all_s": [r[0] for r in runs]}


def baseline_tree(rev: str) -> Path:
    """A worktree of ``rev`` (kept in benchmarks/out for later runs)."""
    tree = OUT / f"baseline-{rev}"
    if not tree.is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True,
                       capture_output=True)
    return tree


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per command (default 5)")
    parser.add_argument("--baseline", help="also time our simulate command at this git revision")
    parser.add_argument("--json", type=Path, default=OUT / "bench_startup.json")
    args = parser.parse_args(argv)
    gcoder, why = load_gcoder(install=True)
    if gcoder is None:
        print(f"printrun's gcoder is not available: {why}", file=sys.stderr)
        return 2
    gcoder_version = dist_version("Printrun")
    py = sys.executable
    info = machine_info()
    commands: dict[str, tuple[list[str], Path]] = {
        "ours: simulate": ([py, "-m", "sim_bridge", "simulate", "{f}", "--printer", PRINTER, "--quiet"], ROOT),
        "ours: simulate --no-deposition": ([py, "-m", "sim_bridge", "simulate", "{f}", "--printer", PRINTER,
                                            "--quiet", "--no-deposition"], ROOT),
        "ours: safety check": ([py, "-m", "safety", "check", "{f}", "--printer", PRINTER], ROOT),
        f"peer: printrun {gcoder_version} gcoder parse + estimate": ([py, "-c", GCODER, "{f}"], ROOT),
    }
    if args.baseline:
        tree = baseline_tree(args.baseline)
        commands[f"baseline {args.baseline}: simulate"] = (
            [py, "-m", "sim_bridge", "simulate", "{f}", "--printer", PRINTER, "--quiet"], tree)
        commands[f"baseline {args.baseline}: simulate --no-deposition"] = (
            [py, "-m", "sim_bridge", "simulate", "{f}", "--printer", PRINTER, "--quiet", "--no-deposition"], tree)
    results: list[dict[str, Any]] = []
    for path in inputs():
        lines = count_lines(path)
        for name, (template, cwd) in commands.items():
            cmd = [str(path) if part == "{f}" else part for part in template]
            r = best_of(cmd, cwd, args.repeat)
            results.append({"file": path.name, "lines": lines, "command": name, **r})
            print(f"{path.name}: {name}: {r['best_s']:.3f} s", file=sys.stderr, flush=True)
    print(f"machine: {info.get('cpu')}, {info.get('usable_cores')} cores, load {info.get('load_average_at_start')}, "
          f"commit {info.get('git_commit')}\n")
    print("| file | lines | command | best (s) | peak memory (MiB) | peer / ours |")
    print("|---|---:|---|---:|---:|---:|")
    for r in results:
        peer = next(p for p in results if p["file"] == r["file"] and p["command"].startswith("peer"))
        ratio = "" if r is peer else f"{peer['best_s'] / r['best_s']:.2f}x"
        print(f"| {r['file']} | {r['lines']:,} | {r['command']} | {r['best_s']:.3f} | {r['peak_mib']:.0f} | {ratio} |")
    args.json.write_text(json.dumps({"machine": info, "repeat": args.repeat, "results": results}, indent=1),
                         encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
