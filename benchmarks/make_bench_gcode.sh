#!/usr/bin/env bash
# Slice the benchmark G-code: the 20 mm test cylinder scaled to 40 mm x 30 mm, 0.1 mm layers,
# gyroid infill, on the MK3S-like Marlin test printer. Writes benchmarks/out/bench_200k.gcode
# (>= 200,000 lines; benchmarks/out is git-ignored) and, for the start-up benchmark, bench_58k.gcode (the
# cylinder at 1.2x, 0.15 mm layers: about 56,000 lines). Needs prusa-slicer 2.5 and python3 + numpy.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fixtures="$root/tests/fixtures/prusaslicer"
out="$root/benchmarks/out"
python="${PYTHON:-python3}"
mkdir -p "$out"
"$python" "$fixtures/make_models.py" "$out" >/dev/null
"${PRUSA_SLICER:-prusa-slicer}" --load "$fixtures/mk3s_marlin.ini" \
    --layer-height 0.1 --first-layer-height 0.2 --fill-pattern gyroid --fill-density 20% \
    --scale 2 --center 125,105 --export-gcode --output "$out/bench_200k.gcode" \
    "$out/cylinder.stl" >/dev/null 2>&1
"${PRUSA_SLICER:-prusa-slicer}" --load "$fixtures/mk3s_marlin.ini" \
    --layer-height 0.15 --first-layer-height 0.2 --fill-pattern gyroid --fill-density 20% \
    --scale 1.2 --center 125,105 --export-gcode --output "$out/bench_58k.gcode" \
    "$out/cylinder.stl" >/dev/null 2>&1
echo "$out/bench_58k.gcode: $(wc -l < "$out/bench_58k.gcode") lines"
lines="$(wc -l < "$out/bench_200k.gcode")"
echo "$out/bench_200k.gcode: $lines lines"
if (( lines < 200000 )); then
    echo "expected at least 200000 lines" >&2
    exit 1
fi
