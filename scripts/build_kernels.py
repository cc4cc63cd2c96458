"""Compile the simulator's whole-program kernels ahead of time (sim_bridge/kernels.py, mode 1).

    python scripts/build_kernels.py            # build if the sources changed since the last build
    python scripts/build_kernels.py --force    # build anyway
    python scripts/build_kernels.py --check    # exit 1 if the build is missing or stale, build nothing

``scripts/setup.sh`` runs the first form. The steps:

1. Run real programs (a slicer's cube under the three corner models, a program with defects, the writer
   environment's bead raster) with every kernel compiled by numba, to learn the argument types the code
   really passes. Scalars take the type their annotation names (``float`` is float64 even where a caller
   passed an int literal: an AOT function converts its arguments, and an int64 slot would truncate).
2. Compile each whole-program kernel with those types into ``sim_bridge/_kernels_aot*.so`` with numba's
   AOT compiler (``numba.pycc``), for this machine's CPU, like numba's own JIT: the folder is built on each
   machine (git-ignored), not shipped.
3. Write ``sim_bridge/_kernels_aot.json``: the SHA-256 of every source the compiled code depends on (the
   kernel modules and the modules their kernels take constants from), which ``sim_bridge.kernels`` checks
   before it uses the module.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KERNEL_MODULES = ("sim_bridge.move_scan", "sim_bridge.planner", "sim_bridge.deposition", "sim_bridge.thermal",
                  "sim_bridge.prunt_planner", "envs.geometry")
"""Every module that defines kernels (tests/test_kernels.py checks that none is missing)."""
CUBE = ROOT / "sim_bridge" / "data" / "cube20_ender3.gcode"
MID_AIR = ("G28\nM104 S210\nM190 S60\nM109 S210\nM107\nG1 Z0.2 X50 Y50 F3000\nG1 X90 E2 F1200\n"
           "G1 Z5 F600\nG1 X60 Y80 E3 F1200\nG1 X100 Y80 E2\nM106 S255\nG1 Z5.2 X100 Y100 E2\n")
SCALARS = {"float": "float64", "int": "int64", "bool": "boolean"}


def _rel(path: str | Path) -> str:
    return Path(path).resolve().relative_to(ROOT).as_posix()


def kernel_sources(modules: list[Any]) -> list[str]:
    """The files the compiled kernels depend on: each kernel module, and each project module from which a
    kernel's body uses an imported name (a flag constant, a table column)."""
    # Imported here, as every project module in this script: after LAYERLOOP_KERNELS is set.
    from sim_bridge.kernels import Kernel

    files = set()
    for module in modules:
        files.add(_rel(module.__file__))
        imported: dict[str, str] = {}
        for node in ast.walk(ast.parse(Path(module.__file__).read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("sim_bridge", "envs"):
                for alias in node.names:
                    imported[alias.asname or alias.name] = node.module
        for value in vars(module).values():
            if isinstance(value, Kernel) and value.py_func.__module__ == module.__name__:
                for name in value.py_func.__code__.co_names:
                    if name in imported and imported[name] != "sim_bridge.kernels":
                        files.add(_rel(importlib.util.find_spec(imported[name]).origin))
    return sorted(files)


def record_types() -> None:
    """Step 1: run the programs whose argument types the build takes."""
    import numpy as np

    from envs.geometry import _raise_beads
    from sim_bridge import simulate

    cube = "".join(CUBE.read_text(encoding="utf-8").splitlines(keepends=True)[:1800])
    for program, printer, kw in [(cube, "ender3-klipper", {}), (cube, "ender3-klipper", {"planner": "marlin"}),
                                 (cube, "ender3-klipper", {"planner": "prunt"}),
                                 (cube, "ender3-klipper", {"traces": True, "deposition": False}),
                                 (MID_AIR, "ender3-klipper", {}), (MID_AIR, "mk3s-marlin", {"planner": "marlin"}),
                                 (CUBE, "ender3-klipper", {})]:
        simulate(program, printer, **kw)
    rng = np.random.default_rng(1)
    _raise_beads(np.zeros((50, 50), dtype=np.float32), rng.uniform(1, 4, (20, 3)), rng.uniform(1, 4, (20, 3)),
                 rng.uniform(0.3, 0.6, 20), 0.0, 0.0, 0.1)


def export_signature(kern: Any) -> Any:
    """The signature a kernel is built with: its recorded argument types, scalars as annotated."""
    from numba.core import types

    disp = kern._compiled
    if disp is None or not disp.signatures:
        raise SystemExit(f"build_kernels: {kern.py_func.__module__}.{kern.py_func.__name__} never ran in "
                         f"step 1: add a program that calls it to record_types()")
    code = kern.py_func.__code__
    names = code.co_varnames[:code.co_argcount]
    hints = kern.py_func.__annotations__
    chosen = set()
    for recorded in disp.signatures:
        args = tuple(getattr(types, SCALARS[hints[n]]) if hints.get(n) in SCALARS else t
                     for n, t in zip(names, recorded, strict=True))
        chosen.add(args)
    if len(chosen) > 1:
        raise SystemExit(f"build_kernels: {kern.py_func.__name__} ran with {len(chosen)} argument type lists "
                         f"{sorted(map(str, chosen))}: make its callers pass one")
    args = chosen.pop()
    disp.compile(args)
    return disp.overloads[args].signature


def arg_spec(kern: Any, t: Any) -> list[Any]:
    """How ``sim_bridge.kernels`` checks one argument before an AOT call: an AOT function does not check its
    arguments' types (a wrong dtype crashes the process, a strided array is read as if contiguous).
    ``["array", dtype, ndim, layout, readonly]`` or ``["float64"]``, ``["int64"]``, ``["bool"]``."""
    from numba.core import types

    if isinstance(t, types.Array):
        return ["array", str(t.dtype), t.ndim, t.layout, not t.mutable]
    if t in (types.float64, types.int64, types.boolean):
        return [str(t)]
    raise SystemExit(f"build_kernels: {kern.py_func.__name__} takes a {t}: only arrays and float, int and "
                     f"bool scalars are checked before an AOT call")


def _called_by_kernels(kern: Any, others: list[Any]) -> bool:
    name = kern.py_func.__name__
    return any(name in k.py_func.__code__.co_names and k.py_func.__module__ == kern.py_func.__module__
               for k in others if k is not kern)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="build even if the build is current")
    parser.add_argument("--check", action="store_true", help="exit 1 if the build is missing or stale")
    args = parser.parse_args()
    # Before sim_bridge is imported (in main, not at import, so importing this file changes no environment).
    os.environ["LAYERLOOP_KERNELS"] = "numba"  # step 1 records numba's types

    from sim_bridge import kernels
    from sim_bridge.kernels import AOT_MANIFEST, Kernel, aot_name, compile_module, source_digests

    modules = [importlib.import_module(m) for m in KERNEL_MODULES]
    sources = kernel_sources(modules)
    digests = source_digests(sources)
    try:
        current = json.loads(AOT_MANIFEST.read_text(encoding="utf-8")).get("sources") == digests
    except (OSError, ValueError):
        current = False
    current = current and any(AOT_MANIFEST.parent.glob("_kernels_aot*.so"))
    if args.check:
        print(f"build_kernels: the AOT kernels are {'current' if current else 'missing or stale'}")
        return 0 if current else 1
    if current and not args.force:
        return 0

    started = time.monotonic()
    print("build_kernels: compiling the simulator's kernels ahead of time (about a minute)", flush=True)
    AOT_MANIFEST.unlink(missing_ok=True)  # a build that stops half-way leaves no manifest: the module is unused
    whole = [v for m in modules for v in vars(m).values()
             if isinstance(v, Kernel) and v.py_func.__module__ == m.__name__ and not v._bounded]
    for m in modules:
        compile_module(m)
    record_types()

    from numba.pycc import CC

    cc = CC(kernels.AOT_MODULE.rsplit(".", 1)[1])
    cc.output_dir = str(AOT_MANIFEST.parent)
    cc.target_cpu = "host"
    cc.verbose = False
    exports = {}
    for kern in whole:
        if not kern._compiled.signatures and _called_by_kernels(kern, whole):
            continue  # only ever called from compiled code (it is compiled into its caller)
        sig = export_signature(kern)
        exports[aot_name(kern.py_func)] = {"signature": str(sig), "args": [arg_spec(kern, t) for t in sig.args]}
        cc.export(aot_name(kern.py_func), sig)(kern.py_func)
    cc.compile()
    AOT_MANIFEST.write_text(json.dumps({"sources": digests, "exports": exports}, indent=1) + "\n", encoding="utf-8")
    print(f"build_kernels: {len(exports)} kernels built into {cc.output_file} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
