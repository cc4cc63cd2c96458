"""The embedded simulator's ``prunt`` planner against the real Prunt: every recording of ``prunt_simulator``
in ``../shared/data/prunt`` (beside the clone).

Run from the repository root (after ``bash scripts/setup.sh``)::

    .venv/bin/python benchmarks/prunt_agreement.py [--out benchmarks/out/prunt_agreement]

For each recording: the simulator on its ``input.gcode`` with the printer read from its ``config.json``
(``load_printer``), against the recording's ``summary.json`` (total time by the README's convention, and
the interval that holds the exact time) and its samples (:mod:`sim_bridge.prunt_trajectory`): the speed at
which the real head passes each commanded corner against the planner's corner speed, the peak speed of
each block, and the time at which each corner is passed against the planner's cumulative time.

Writes ``OUT.md`` (the table for docs/simulator.md) and ``OUT.json`` (every figure) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sim_bridge.printers import load_printer  # noqa: E402
from sim_bridge.prunt_path import compare_timing  # noqa: E402
from sim_bridge.prunt_planner import plan_file  # noqa: E402
from sim_bridge.simulator import Simulator  # noqa: E402

PRUNT_DIR = ROOT.parent / "shared" / "data" / "prunt"
DECIMATED = {"cube_layers": 10}
"""Recordings that keep every n-th sample only (the README says which)."""
RECORDINGS = ["square20_chord0.0035", "square20_chord0.1", "circle64", "zigzag", "infill_layer", "speeds",
              "accel_sweep_a1000", "accel_sweep_a3000", "accel_sweep_a10000", "cube_layers"]


def plan(folder: Path) -> tuple[np.ndarray, object]:
    """The planner's table for a recording's program, and the interpreted program."""
    return plan_file(load_printer(folder / "config.json"), folder / "input.gcode")


def passing(folder: Path, table: np.ndarray, prog: object, decimation: int) -> dict:
    """Planned against recorded: the time between consecutive corners and the speed at each corner."""
    c = compare_timing(folder / "samples.txt.xz", prog.starts, prog.xyz, prog.de, table, decimation=decimation)
    long = c.segment_real_s > 0.05
    moving = c.corner_speed_real_mm_s > 0.5
    rel_v = np.abs(c.corner_speed_planned_mm_s[moving] / c.corner_speed_real_mm_s[moving] - 1.0)
    err = np.abs(c.segment_error_s)
    return {"corners": c.corners, "segment_max_abs_ms": float(1e3 * err.max()),
            "segment_median_abs_ms": float(1e3 * np.median(err)),
            "segment_max_rel_pct_over_50ms": float(100 * (err[long] / c.segment_real_s[long]).max())
            if long.any() else 0.0,
            "corner_speeds": int(moving.sum()),
            "corner_speed_max_rel_pct": float(100 * rel_v.max()) if moving.any() else 0.0,
            "corner_speed_median_rel_pct": float(100 * np.median(rel_v)) if moving.any() else 0.0}


def compare(name: str) -> dict:
    folder = PRUNT_DIR / name
    summary = json.loads((folder / "summary.json").read_text())
    started = time.perf_counter()
    report = Simulator(load_printer(folder / "config.json")).run(folder / "input.gcode")
    wall_s = time.perf_counter() - started
    table, prog = plan(folder)
    lo, hi = summary["time_s_bounds"]
    row = {"recording": name, "real_time_s": summary["time_s"], "real_bounds_s": [lo, hi],
           "sim_time_s": report.print_time_s, "error_pct": 100.0 * (report.print_time_s / summary["time_s"] - 1.0),
           "within_bounds": lo - 1e-4 <= report.print_time_s <= hi + 1e-4, "wall_s": wall_s,
           "real_peak_mm_s": max(b["peak_speed_xyz_mm_s"] for b in summary["blocks"]),
           "sim_peak_mm_s": float(table[:, 1].max()), "moves": int(len(table))}
    row["peak_error_pct"] = 100.0 * (row["sim_peak_mm_s"] / row["real_peak_mm_s"] - 1.0)
    row["decimation"] = DECIMATED.get(name, 1)
    row.update(passing(folder, table, prog, row["decimation"]))
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| recording | moves | real time s | simulated s | error | peak mm/s real / ours | corners timed: "
             "max / median error per segment | corner speeds: max / median error |",
             "|---|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        note = f" (1 in {r['decimation']} samples)" if r["decimation"] > 1 else ""
        lines.append(f"| `{r['recording']}`{note} | {r['moves']} | {r['real_time_s']:.4f} | "
                     f"{r['sim_time_s']:.4f} | {r['error_pct']:+.3f} % | "
                     f"{r['real_peak_mm_s']:.2f} / {r['sim_peak_mm_s']:.2f} | "
                     f"{r['corners']}: {r['segment_max_abs_ms']:.2f} / {r['segment_median_abs_ms']:.2f} ms | "
                     f"{r['corner_speeds']}: {r['corner_speed_max_rel_pct']:.2f} / "
                     f"{r['corner_speed_median_rel_pct']:.2f} % |")
    worst = max(abs(r["error_pct"]) for r in rows)
    lines.append("")
    lines.append(f"Worst total-time error {worst:.3f} %.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "prunt_agreement")
    args = parser.parse_args()
    if not PRUNT_DIR.is_dir():
        print(f"no Prunt recordings at {PRUNT_DIR}", file=sys.stderr)
        return 2
    rows = [compare(name) for name in RECORDINGS]
    text = markdown(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
