#!/usr/bin/env bash
# Regenerate must_allow/*.gcode: real PrusaSlicer 2.5 output for each bundled printer profile.
# Needs prusa-slicer (Debian package). Models and the ender3/mk3s configs are the simulator's fixtures;
# corexy300_klipper.ini is the ender3 config on a 300 mm bed with PRINT_START/PRINT_END macros and relative E.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
fx=../fixtures/prusaslicer
slicer="${PRUSA_SLICER:-prusa-slicer}"
"$slicer" --load corexy300_klipper.ini --center 150,150 --scale 0.5 --layer-height 0.3 --first-layer-height 0.3 \
    --export-gcode --output must_allow/prusaslicer_corexy300_cube10.gcode "$fx/cube20.stl" >/dev/null 2>&1
"$slicer" --load "$fx/mk3s_marlin.ini" --center 125,105 --scale 0.6 --layer-height 0.3 --first-layer-height 0.2 \
    --export-gcode --output must_allow/prusaslicer_mk3s_cone.gcode "$fx/ps_cone.stl" >/dev/null 2>&1
"$slicer" --load "$fx/ender3_klipper.ini" --center 110,110 --scale 0.6 --layer-height 0.3 \
    --use-relative-e-distances --layer-gcode 'G92 E0' \
    --start-gcode 'PRINT_START BED=[first_layer_bed_temperature] EXTRUDER=[first_layer_temperature]' \
    --end-gcode 'PRINT_END' \
    --export-gcode --output must_allow/prusaslicer_ender3_macros_cylinder.gcode "$fx/cylinder.stl" >/dev/null 2>&1
echo "sliced must_allow/*.gcode"
# What a print host (OctoPrint, Printrun) sends over serial: the line-number reset first, then every
# command numbered and checksummed, comments and blank lines dropped.
python3 - must_allow/prusaslicer_corexy300_cube10.gcode must_allow/host_numbered_corexy300_cube10.gcode <<'PY'
import sys
from functools import reduce
src, out = sys.argv[1:]
lines = ["M110 N0"]
for raw in open(src, encoding="utf-8"):
    body = raw.split(";", 1)[0].strip()
    if body:
        lines.append(body)
with open(out, "w", encoding="ascii") as f:
    for n, body in enumerate(lines):
        text = f"N{n} {body}" if n else "N0 M110 N0"
        f.write(f"{text}*{reduce(lambda a, c: a ^ ord(c), text, 0)}\n")
PY
echo "numbered must_allow/host_numbered_corexy300_cube10.gcode"
