"""The simulator's kernels give the same results as plain Python and as numba code, and a short program
never loads numba (what makes the command line start in a blink)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUBE = ROOT / "sim_bridge" / "data" / "cube20_ender3.gcode"

# Each case: a program (the first lines of a real slicer file, or a short one with defects) and the run.
RUNS = """
import json, sys
from pathlib import Path
import numpy as np
from sim_bridge import simulate
from envs.geometry import _raise_beads

cube = "".join(Path(sys.argv[1]).read_text().splitlines(keepends=True)[:1800])
mid_air = ("G28\\nM104 S210\\nM190 S60\\nM109 S210\\nM107\\nG1 Z0.2 X50 Y50 F3000\\nG1 X90 E2 F1200\\n"
           "G1 Z5 F600\\nG1 X60 Y80 E3 F1200\\nG1 X100 Y80 E2\\nM106 S255\\nG1 Z5.2 X100 Y100 E2\\n")
out = {}
for name, program, kw in [
        ("cube klipper", cube, {}), ("cube marlin", cube, {"planner": "marlin"}),
        ("cube prunt", cube, {"planner": "prunt"}), ("cube traces", cube, {"traces": True, "deposition": False}),
        ("mid-air", mid_air, {}), ("mid-air marlin", mid_air, {"planner": "marlin", "printer": "mk3s-marlin"})]:
    printer = kw.pop("printer", "ender3-klipper")
    out[name] = simulate(program, printer, **kw).to_dict()
grid = np.zeros((200, 200), dtype=np.float32)
rng = np.random.default_rng(1)
starts, ends = rng.uniform(1, 19, (300, 3)), rng.uniform(1, 19, (300, 3))
_raise_beads(grid, starts, ends, rng.uniform(0.3, 0.6, 300), 0.0, 0.0, 0.1)
out["beads"] = {"cells": int((grid > 0).sum()), "rows": (grid > 0).sum(axis=1).tolist()}
out["numba loaded"] = "numba" in sys.modules
print(json.dumps(out))
"""


def _run(mode: str, script: str = RUNS, *args: str) -> dict:
    env = {**os.environ, "LAYERLOOP_KERNELS": mode}
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _close(a: object, b: object, path: str = "") -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-9), path
    else:
        assert a == b, path


def test_python_and_numba_kernels_agree_on_real_programs() -> None:
    python, compiled = _run("python", RUNS, str(CUBE)), _run("numba", RUNS, str(CUBE))
    assert python.pop("numba loaded") is False
    assert compiled.pop("numba loaded") is True
    _close(python, compiled)
    # The cases do what they are meant to: a real part, the three corner models differ, defects are found.
    assert python["cube klipper"]["success"] and python["cube klipper"]["moves"] > 1000
    times = {python[k]["print_time_s"] for k in ("cube klipper", "cube marlin", "cube prunt")}
    assert len(times) == 3
    assert {f["mode"] for f in python["mid-air"]["failures"]} & {"extrusion_in_mid_air", "overhang_without_cooling"}
    assert len(python["cube traces"]["traces"]["t_s"]) > 10
    assert python["beads"]["cells"] > 1000


def test_a_short_program_never_loads_numba_and_a_long_one_does() -> None:
    script = ("import sys\nfrom sim_bridge import simulate\n"
              "r = simulate('G28\\nM104 S200\\nM109 S200\\nG1 X10 Y10 Z0.2 F3000\\nG1 X30 E1 F1200\\n')\n"
              "print(r.success, 'numba' in sys.modules)\n"
              "r = simulate(sys.argv[1])\nprint(r.success, 'numba' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "LAYERLOOP_KERNELS"}
    done = subprocess.run([sys.executable, "-c", script, str(CUBE)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["True", "False", "True", "True"]


def test_the_command_line_on_a_two_line_file_does_not_load_numba(tmp_path: Path) -> None:
    program = tmp_path / "two.gcode"
    program.write_text("G28\nG1 X10 Y10 F3000\n", encoding="utf-8")
    script = ("import runpy, sys\nsys.argv = ['sim_bridge', 'simulate', sys.argv[1], '--quiet']\n"
              "try:\n    runpy.run_module('sim_bridge', run_name='__main__')\n"
              "except SystemExit as e:\n    print(e.code, 'numba' in sys.modules, 'rich.progress' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "LAYERLOOP_KERNELS"}
    done = subprocess.run([sys.executable, "-c", script, str(program)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.split() == ["0", "False", "False"], done.stderr[-2000:]


def test_an_unknown_kernel_mode_is_a_clear_error() -> None:
    env = {**os.environ, "LAYERLOOP_KERNELS": "fast"}
    done = subprocess.run([sys.executable, "-c", "import sim_bridge"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "LAYERLOOP_KERNELS='fast': must be one of auto, python, numba" in done.stderr
