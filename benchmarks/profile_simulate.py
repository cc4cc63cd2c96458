"""Where a warm full simulation spends its time: cProfile's top functions by own time, as a markdown table.

    .venv/bin/python benchmarks/profile_simulate.py [--gcode FILE] [--top 10] [--root CHECKOUT]

Runs ``sim_bridge.simulate(FILE, "mk3s-marlin")`` once to warm up (numba's cache, the page cache), then once
under cProfile, and prints the functions with the most own time (compiled kernels count as one call each).
``--root`` profiles another checkout's code (e.g. the worktree of ``bench_startup.py --baseline REV``), so a
change can be shown before and after in one session. cProfile slows Python code more than compiled code:
read the shares, and take wall times from ``bench_gcode.py``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gcode", type=Path, default=ROOT / "benchmarks" / "out" / "bench_200k.gcode")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.root.resolve()))
    # The checkout under test is known only now.
    from sim_bridge import simulate

    path = str(args.gcode)
    simulate(path, "mk3s-marlin")
    t0 = time.perf_counter()
    simulate(path, "mk3s-marlin")
    wall = time.perf_counter() - t0
    profile = cProfile.Profile()
    profile.enable()
    simulate(path, "mk3s-marlin")
    profile.disable()
    stats = pstats.Stats(profile)
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[: args.top]  # type: ignore[attr-defined]
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"{args.root.name}: {args.gcode.name}, warm wall {wall:.3f} s, under cProfile {total:.3f} s\n")
    print("| function | calls | own time (s) | share |")
    print("|---|---:|---:|---:|")
    for (file, line, name), (_cc, calls, own, _cum, _callers) in rows:
        where = f"{Path(file).name}:{line}" if line else "built-in"
        print(f"| `{name}` ({where}) | {calls:,} | {own:.3f} | {100 * own / total:.0f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
