"""Real slicer output must print: every shape PrusaSlicer ships, sliced and simulated on both planners.

Run from the repository root (needs ``prusa-slicer``; the machine is shared, so be nice)::

    nice -n 10 .venv/bin/python benchmarks/shapes_sweep.py [--scales 35,100,200] [--configs default,...]
        [--shapes bunny,box] [--out benchmarks/out/shapes] [--markdown | --grouped]

Each STL in ``/usr/share/PrusaSlicer/shapes`` is sliced at each scale with each config into ``--out``
(git-ignored; a G-code already there is reused) and simulated on the config's printer with
``--planner klipper`` and ``--planner marlin``. Configs:

* ``default``: PrusaSlicer's stock settings on the Ender-3 bed (220 × 220, centre 110,110), absolute E;
* ``default-rel``: the same with ``--use-relative-e-distances``;
* ``ender3``: ``tests/fixtures/prusaslicer/ender3_klipper.ini`` (printer ``ender3-klipper``);
* ``mk3s``: ``tests/fixtures/prusaslicer/mk3s_marlin.ini`` (printer ``mk3s-marlin``).

A scale whose part (plus skirt) does not fit the bed, or is taller than the printer, is skipped and said so.
Prints one row per case: shape, scale, config, lines, success per planner, failures and warnings; exits 1
when any case fails.
"""

from __future__ import annotations

import argparse
import re
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sim_bridge import prusa_slicer  # noqa: E402
from sim_bridge.options import SimOptions  # noqa: E402
from sim_bridge.simulator import Simulator  # noqa: E402

SHAPES_DIR = Path("/usr/share/PrusaSlicer/shapes")
FIXTURES = ROOT / "tests" / "fixtures" / "prusaslicer"
SKIRT_MARGIN_MM = 8.0
"""Room a skirt needs beyond the part on each side (stock skirt_distance 6 mm plus its line)."""
PLANNERS = ("klipper", "marlin")


@dataclass(frozen=True)
class SliceConfig:
    """One way of slicing: PrusaSlicer arguments, the printer that runs the output, its bed."""

    name: str
    args: tuple[str, ...]
    printer: str
    bed_mm: tuple[float, float]
    max_height_mm: float


ENDER3_BED = ("--bed-shape", "0x0,220x0,220x220,0x220", "--center", "110,110")
CONFIGS = {
    "default": SliceConfig("default", ENDER3_BED, "ender3-klipper", (220.0, 220.0), 200.0),
    "default-rel": SliceConfig("default-rel", (*ENDER3_BED, "--use-relative-e-distances"), "ender3-klipper",
                               (220.0, 220.0), 200.0),
    "ender3": SliceConfig("ender3", ("--load", str(FIXTURES / "ender3_klipper.ini"), "--center", "110,110"),
                          "ender3-klipper", (220.0, 220.0), 250.0),
    "mk3s": SliceConfig("mk3s", ("--load", str(FIXTURES / "mk3s_marlin.ini"), "--center", "125,105"),
                        "mk3s-marlin", (250.0, 210.0), 210.0),
}
"""Stock PrusaSlicer's bed is 200 × 200 and 200 mm high; the default configs move it to the Ender-3's."""


class SliceRefused(RuntimeError):
    """PrusaSlicer found nothing to print (a part thinner than the first layer)."""


@dataclass
class Case:
    """One sliced file and what each planner made of it."""

    shape: str
    scale_pct: int
    config: str
    lines: int = 0
    success: dict[str, bool] = field(default_factory=dict)
    failures: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: str = ""
    seconds: float = 0.0


def stl_size_mm(path: Path) -> np.ndarray:
    """The bounding-box size (x, y, z) of an ASCII or binary STL."""
    data = path.read_bytes()
    if data[:5] == b"solid" and b"facet" in data[:400]:
        vertices = np.array(re.findall(rb"vertex\s+(\S+)\s+(\S+)\s+(\S+)", data), dtype=float)
    else:
        count = struct.unpack("<I", data[80:84])[0]
        facet = np.dtype([("normal", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
        vertices = np.frombuffer(data[84:84 + 50 * count], dtype=facet)["v"].reshape(-1, 3).astype(float)
    return vertices.max(axis=0) - vertices.min(axis=0)


def misfit(size_mm: np.ndarray, config: SliceConfig) -> str:
    """Why a part of this size does not fit the config's printer ("" when it fits)."""
    x, y, z = (float(v) for v in size_mm)
    bx, by = config.bed_mm
    if x + 2 * SKIRT_MARGIN_MM > bx or y + 2 * SKIRT_MARGIN_MM > by:
        return f"{x:.0f} x {y:.0f} mm + skirt > {bx:.0f} x {by:.0f} bed"
    if z > config.max_height_mm:
        return f"{z:.0f} mm tall > {config.max_height_mm:.0f} mm"
    return ""


def slice_shape(stl: Path, scale_pct: int, config: SliceConfig, out: Path) -> Path:
    """Slice (or reuse) ``stl`` at ``scale_pct`` with ``config`` into ``out`` (PrusaSlicer's own settings
    where the config's arguments name none: an empty ``.ini`` is loaded first)."""
    gcode = out / f"{stl.stem}_{scale_pct}_{config.name}.gcode"
    try:
        return prusa_slicer.slice_mesh(stl, {}, gcode, [*config.args, "--scale", f"{scale_pct}%"])
    except prusa_slicer.NoLayersError as err:
        raise SliceRefused("no layers: thinner than the first layer") from err


def run_case(stl: Path, scale_pct: int, config: SliceConfig, out: Path) -> Case:
    """Slice one case and simulate it with each planner."""
    case = Case(stl.stem, scale_pct, config.name)
    why = misfit(stl_size_mm(stl) * scale_pct / 100.0, config)
    if why:
        case.skipped = why
        return case
    start = time.perf_counter()
    try:
        gcode = slice_shape(stl, scale_pct, config, out)
    except SliceRefused as exc:
        case.skipped = str(exc)
        return case
    for planner in PLANNERS:
        report = Simulator(config.printer, "PLA", SimOptions(planner=planner)).run(gcode)
        case.lines = report.lines
        case.success[planner] = report.success
        case.failures[planner] = report.failure_modes()
        case.warnings[planner] = report.warning_modes()
    case.seconds = time.perf_counter() - start
    return case


def _modes(counts: dict[str, dict[str, int]]) -> str:
    merged: dict[str, int] = {}
    for by_mode in counts.values():
        for mode, n in by_mode.items():
            merged[mode] = max(merged.get(mode, 0), n)
    return ", ".join(f"{m} ×{n}" for m, n in sorted(merged.items())) or "—"


def table(cases: list[Case], markdown: bool) -> str:
    """The results, one row per case."""
    head = ("shape", "scale", "config", "lines", "klipper", "marlin", "failures", "warnings")
    rows = []
    for c in cases:
        if c.skipped:
            rows.append((c.shape, f"{c.scale_pct} %", c.config, "—", "skipped", "skipped", c.skipped, ""))
            continue
        ok = ["yes" if c.success.get(p) else "NO" for p in PLANNERS]
        rows.append((c.shape, f"{c.scale_pct} %", c.config, str(c.lines), *ok, _modes(c.failures),
                     _modes(c.warnings)))
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in (head, *rows)) for i in range(len(head))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) for r in (head, *rows))


def grouped_table(cases: list[Case], configs: list[str]) -> str:
    """Markdown, one row per shape and scale: lines per config, and what any config or planner reported."""
    rows = ["| shape | scale | lines (" + " / ".join(configs) + ") | success (2 planners × configs) | failures | "
            "warnings |", "|---|---|---|---|---|---|"]
    groups: dict[tuple[str, int], dict[str, Case]] = {}
    for c in cases:
        groups.setdefault((c.shape, c.scale_pct), {})[c.config] = c
    for (shape, scale), by_config in groups.items():
        ran = [c for c in by_config.values() if not c.skipped]
        skipped = sorted({c.skipped for c in by_config.values() if c.skipped})
        lines = " / ".join(str(by_config[n].lines) if n in by_config and not by_config[n].skipped else "—"
                           for n in configs)
        passed = sum(ok for c in ran for ok in c.success.values())
        verdict = f"{passed} of {2 * len(ran)}" + (f"; skipped: {', '.join(skipped)}" if skipped else "")
        failures = {p: m for c in ran for p, m in c.failures.items() if m}
        warnings = {f"{c.config}/{p}": m for c in ran for p, m in c.warnings.items() if m}
        rows.append(f"| {shape} | {scale} % | {lines} | {verdict} | {_modes(failures)} | {_modes(warnings)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="35,100,200", help="percent, comma-separated")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--shapes", default="", help="STL stems, comma-separated (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "shapes")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--grouped", action="store_true", help="Markdown, one row per shape and scale")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = {s for s in args.shapes.split(",") if s}
    stls = [p for p in sorted(SHAPES_DIR.glob("*.stl")) if not wanted or p.stem in wanted]
    if not stls:
        parser.error(f"no STL found in {SHAPES_DIR} (is prusa-slicer installed?)")
    configs = args.configs.split(",")
    unknown = [n for n in configs if n not in CONFIGS]
    if unknown:
        parser.error(f"--configs {', '.join(unknown)}: unknown, choose from {', '.join(CONFIGS)}")
    cases = []
    for stl in stls:
        for scale in (int(s) for s in args.scales.split(",")):
            for name in configs:
                case = run_case(stl, scale, CONFIGS[name], args.out)
                print(f"{case.shape} {case.scale_pct}% {case.config}: "
                      f"{case.skipped or case.success} {case.seconds:.1f} s", file=sys.stderr, flush=True)
                cases.append(case)
    print(grouped_table(cases, configs) if args.grouped else table(cases, args.markdown))
    failed = [c for c in cases if not c.skipped and not all(c.success.values())]
    print(f"\n{len(cases) - len(failed)} of {len(cases)} cases pass "
          f"({sum(1 for c in cases if c.skipped)} skipped); {len(failed)} fail", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
