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
