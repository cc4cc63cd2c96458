"""The simulator's kernels give the same results as plain Python, as numba code and as the build compiled
ahead of time; the command line never loads numba where that build is current (what makes it start in a
blink), and without it a short program still does not."""

from __future__ import annotations

import ast
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
# Runs a script with the AOT build out of sight: what a user who has not built it gets.
WITHOUT_AOT = ("from pathlib import Path\nimport sim_bridge.kernels as k\n"
               "k.AOT_MANIFEST = Path('/nonexistent/_kernels_aot.json')\n")


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


def test_the_ahead_of_time_build_is_current() -> None:
    # scripts/setup.sh builds it; a kernel source edited since then needs `python scripts/build_kernels.py`.
    done = subprocess.run([sys.executable, "scripts/build_kernels.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_python_numba_and_aot_kernels_agree_on_real_programs() -> None:
    python, compiled = _run("python", RUNS, str(CUBE)), _run("numba", RUNS, str(CUBE))
    aot = _run("aot", RUNS, str(CUBE))
    assert python.pop("numba loaded") is False
    assert compiled.pop("numba loaded") is True
    assert aot.pop("numba loaded") is False
    _close(python, compiled)
    _close(python, aot)
    # The cases do what they are meant to: a real part, the three corner models differ, defects are found.
    assert python["cube klipper"]["success"] and python["cube klipper"]["moves"] > 1000
    times = {python[k]["print_time_s"] for k in ("cube klipper", "cube marlin", "cube prunt")}
    assert len(times) == 3
    assert {f["mode"] for f in python["mid-air"]["failures"]} & {"extrusion_in_mid_air", "overhang_without_cooling"}
    assert len(python["cube traces"]["traces"]["t_s"]) > 10
    assert python["beads"]["cells"] > 1000


def test_every_kernel_module_is_built_ahead_of_time() -> None:
    # Read, not imported: the script sets LAYERLOOP_KERNELS for its own run.
    tree = ast.parse((ROOT / "scripts" / "build_kernels.py").read_text(encoding="utf-8"))
    KERNEL_MODULES = next(ast.literal_eval(node.value) for node in tree.body  # noqa: N806
                          if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "KERNEL_MODULES")
    defining = {p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
                for folder in ("sim_bridge", "envs", "safety", "agent", "training")
                for p in (ROOT / folder).rglob("*.py") if "@kernel" in p.read_text(encoding="utf-8")}
    assert defining == set(KERNEL_MODULES)


def test_an_aot_call_with_the_wrong_types_runs_the_other_way_instead_of_crashing() -> None:
    # The compiled code does not check its arguments (a wrong dtype would crash the process): the kernel does.
    script = ("import numpy as np, sys\nfrom envs.geometry import _raise_beads\n"
              "args = (np.zeros((2, 3)), np.ones((2, 3)), np.ones(2), 0.0, 0.0, 0.5)\n"
              "for grid in (np.zeros((8, 8)), np.zeros((8, 16), np.float32)[:, ::2], np.zeros((8, 8), np.float32)):\n"
              "    _raise_beads(grid, *args)\n    print(int((grid > 0).sum()), end=' ')\n"
              "print(_raise_beads.aot_misses, 'numba' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "LAYERLOOP_KERNELS"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    *cells, misses, numba_loaded = done.stdout.split()
    assert len(set(cells)) == 1 and int(cells[0]) > 0  # float64 grid, strided float32, the built type agree
    assert (misses, numba_loaded) == ("2", "False")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**env, "LAYERLOOP_KERNELS": "aot"},
                          capture_output=True, text=True, timeout=300)
    assert "_raise_beads: argument 0: float64 2d array, built for a float32 2d array" in done.stderr


def test_a_stale_aot_build_is_not_used(tmp_path: Path) -> None:
    manifest = json.loads((ROOT / "sim_bridge" / "_kernels_aot.json").read_text(encoding="utf-8"))
    manifest["sources"]["sim_bridge/planner.py"] = "0" * 64
    stale = tmp_path / "_kernels_aot.json"
    stale.write_text(json.dumps(manifest), encoding="utf-8")
    script = ("import sys\nfrom pathlib import Path\nimport sim_bridge.kernels as k\n"
              "k.AOT_MANIFEST = Path(sys.argv[1])\nfrom sim_bridge.planner import plan_klipper\n"
              "print(plan_klipper.aot is None, k.aot_status()[2])\n")
    done = subprocess.run([sys.executable, "-c", script, str(stale)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.startswith("True the AOT kernels are older than sim_bridge/planner.py"), done.stderr[-2000:]


def test_a_short_program_never_loads_numba_and_a_long_one_does_without_the_aot_build() -> None:
    script = ("import sys\nfrom sim_bridge import simulate\n"
              "r = simulate('G28\\nM104 S200\\nM109 S200\\nG1 X10 Y10 Z0.2 F3000\\nG1 X30 E1 F1200\\n')\n"
              "print(r.success, 'numba' in sys.modules)\n"
              "r = simulate(sys.argv[1])\nprint(r.success, 'numba' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "LAYERLOOP_KERNELS"}
    for prelude, expected in (("", ["True", "False", "True", "False"]),
                              (WITHOUT_AOT, ["True", "False", "True", "True"])):
        done = subprocess.run([sys.executable, "-c", prelude + script, str(CUBE)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.split() == expected


def test_the_command_line_on_a_two_line_file_does_not_load_numba(tmp_path: Path) -> None:
    program = tmp_path / "two.gcode"
    program.write_text("G28\nG1 X10 Y10 F3000\n", encoding="utf-8")
    script = ("import runpy, sys\nsys.argv = ['sim_bridge', 'simulate', sys.argv[1], '--quiet']\n"
              "try:\n    runpy.run_module('sim_bridge', run_name='__main__')\n"
              "except SystemExit as e:\n    print(e.code, 'numba' in sys.modules, 'rich.progress' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "LAYERLOOP_KERNELS"}
    for prelude in ("", WITHOUT_AOT):
        done = subprocess.run([sys.executable, "-c", prelude + script, str(program)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.stdout.split() == ["0", "False", "False"], done.stderr[-2000:]


def test_an_unknown_kernel_mode_is_a_clear_error() -> None:
    env = {**os.environ, "LAYERLOOP_KERNELS": "fast"}
    done = subprocess.run([sys.executable, "-c", "import sim_bridge"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "LAYERLOOP_KERNELS='fast': must be one of auto, aot, python, numba" in done.stderr
