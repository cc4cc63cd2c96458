"""Compiled kernels that cost nothing to start: machine code compiled ahead of time, else numba when the
work pays for it.

The simulator's inner loops (move scan, planners, heater timeline, deposition) are plain Python functions
decorated with :func:`kernel`. Loading numba and its cached machine code takes about 0.55 s per process
(docs/benchmarks.md: numba's import, its typing registries, and the SciPy BLAS check numba makes on its
first kernel), more than a 50k-line file takes to simulate once compiled. So each whole-program kernel has
three ways to run, chosen per call:

1. **Ahead of time** (AOT): ``scripts/build_kernels.py`` (run by ``scripts/setup.sh``) compiles the same
   source with numba's AOT compiler into the extension module ``sim_bridge/_kernels_aot*.so``, with the
   argument types the simulator really passes. It loads in milliseconds and needs no numba at run time. It
   is used only while the kernel sources are exactly those it was built from (``_kernels_aot.json`` holds
   their SHA-256), so an edited kernel never runs stale code: it falls back to 2 and 3 until rebuilt.
2. **Plain Python**, while numba is not loaded and the work done so far in this process is small.
3. **numba** (``cache=True``) otherwise; once numba is loaded in a process every kernel runs compiled.

All run the same source, so they agree; ``tests/test_kernels.py`` checks it on real programs.
``LAYERLOOP_KERNELS`` forces a mode: ``aot``, ``python``, ``numba``, or ``auto`` (the default: AOT where
built and current, else Python then numba).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MODE_ENV = "LAYERLOOP_KERNELS"
"""Environment variable forcing the mode of every kernel: ``aot``, ``python``, ``numba`` or ``auto``."""
MODES = ("auto", "aot", "python", "numba")
MODE = os.environ.get(MODE_ENV, "auto")
"""The mode of this process, read once at import."""
SMALL_WORK = 20_000
"""Default budget of work (the largest argument array's length, summed over a process's calls) that ``auto``
runs in plain Python before it loads numba: 20,000 moves take a planner about 0.15 s in Python, about a
quarter of what loading numba costs."""
AOT_MODULE = "sim_bridge._kernels_aot"
"""The extension module ``scripts/build_kernels.py`` writes (git-ignored: built on each machine)."""
AOT_MANIFEST = Path(__file__).with_name("_kernels_aot.json")
"""What the AOT module was built from: ``{"sources": {path relative to the repository: sha256}, "exports":
{name in the module: {"signature": numba's signature, "args": the argument specs each call is checked
against}}}``."""
ROOT = Path(__file__).resolve().parents[1]


def aot_name(func: Callable[..., Any]) -> str:
    """The name a kernel's function has in the AOT module: its module and name, dots as underscores."""
    return f"{func.__module__.replace('.', '_')}__{func.__name__}"


def source_digests(paths: list[str]) -> dict[str, str]:
    """SHA-256 of each source file (paths relative to the repository root); a missing file digests as ''."""
    out = {}
    for rel in paths:
        try:
            out[rel] = hashlib.sha256((ROOT / rel).read_bytes()).hexdigest()
        except OSError:
            out[rel] = ""
    return out


@functools.cache
def aot_status() -> tuple[Any, dict[str, Any], str]:
    """The AOT module and its exports' argument specs if it is built and current, with ``""``; else
    ``None``, ``{}`` and why not (for errors)."""
    try:
        manifest = json.loads(AOT_MANIFEST.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, {}, f"{AOT_MANIFEST.name} is missing or unreadable: run `python scripts/build_kernels.py`"
    sources = manifest.get("sources", {})
    stale = [rel for rel, digest in source_digests(sorted(sources)).items() if digest != sources[rel]]
    if stale:
        return None, {}, f"the AOT kernels are older than {', '.join(stale)}: run `python scripts/build_kernels.py`"
    try:
        import importlib  # here: the module is optional, and importing it is the check

        module = importlib.import_module(AOT_MODULE)
    except ImportError as e:
        return None, {}, f"{AOT_MODULE} does not load ({e}): run `python scripts/build_kernels.py`"
    return module, manifest.get("exports", {}), ""


_SCALAR_TYPES = {"float64": (float, int, np.floating, np.integer), "int64": (int, np.integer),
                 "bool": (bool, np.bool_, int, np.integer)}
_CONVERT: dict[str, Callable[[Any], Any]] = {"float64": float, "int64": int, "bool": bool}


def _aot_specs(specs: list[list[Any]]) -> list[tuple[Any, ...]]:
    """The manifest's argument specs in the form :func:`_aot_mismatch` compares fast."""
    return [("array", np.dtype(s[1]), s[2], s[3], s[4]) if s[0] == "array" else (s[0], _SCALAR_TYPES[s[0]])
            for s in specs]


def _aot_mismatch(args: tuple[Any, ...], specs: list[tuple[Any, ...]]) -> str:
    """Why ``args`` do not fit an AOT function's argument specs ('' if they do). The compiled code does not
    check them itself: a wrong dtype would crash the process, a strided array be read as contiguous."""
    if len(args) != len(specs):
        return f"{len(args)} arguments, built for {len(specs)}"
    for i, (a, spec) in enumerate(zip(args, specs, strict=True)):
        if spec[0] == "array":
            _, dtype, ndim, layout, readonly = spec
            if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != ndim:
                got = f"{a.dtype.name} {a.ndim}d array" if isinstance(a, np.ndarray) else type(a).__name__
                return f"argument {i}: {got}, built for a {dtype.name} {ndim}d array"
            flags = a.flags
            if (layout == "C" and not flags.c_contiguous) or (layout == "F" and not flags.f_contiguous):
                return f"argument {i}: not {layout}-contiguous"
            if not readonly and not flags.writeable:
                return f"argument {i}: read-only, built for a writable array"
        elif not isinstance(a, spec[1]):
            return f"argument {i}: {type(a).__name__}, built for {spec[0]}"
    return ""


def _array_work(args: tuple[Any, ...]) -> float:
    return float(max((a.shape[0] for a in args if isinstance(a, np.ndarray) and a.ndim), default=1))


class Kernel:
    """A function that runs as Python or compiled by numba (see the module docstring)."""

    def __init__(self, func: Callable[..., Any], work: Callable[..., float] | None, small_work: float,
                 bounded: bool) -> None:
        if MODE not in MODES:
            raise ValueError(f"{MODE_ENV}={MODE!r}: must be one of {', '.join(MODES)}")
        self.py_func = func
        self._bounded = bounded
        self._work = work
        self._small_work = small_work
        self._compiled: Any = None
        self._python_work = 0.0
        self._aot: Any = False  # False: not looked up yet; None: none
        self.aot_misses = 0
        """Calls whose argument types the AOT build did not have (they ran the other way instead)."""
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any) -> Any:
        if self._compiled is None:
            aot = self.aot
            if aot is not None:
                full = args + self._defaults[len(args) - self._n_required:] if len(args) < self._n_args else args
                why = _aot_mismatch(full, self._aot_args)
                if not why:
                    return aot(*(a if s[0] == "array" else _CONVERT[s[0]](a)
                                 for a, s in zip(full, self._aot_args, strict=True)))
                if MODE == "aot":
                    raise TypeError(f"LAYERLOOP_KERNELS=aot: {self.py_func.__name__}: {why}")
                self.aot_misses += 1
            if self._python_mode(args):
                return self.py_func(*args)
        return self.compiled(*args)

    @property
    def aot(self) -> Any:
        """The AOT-compiled function (None where this kernel is not built ahead of time or the mode says not)."""
        if self._aot is False:
            self._aot = None
            if MODE in ("auto", "aot") and not self._bounded:
                module, exports, why = aot_status()
                name = aot_name(self.py_func)
                if module is not None and name in exports:
                    self._aot, self._aot_args = getattr(module, name), _aot_specs(exports[name]["args"])
                if self._aot is None and MODE == "aot":
                    raise RuntimeError(f"LAYERLOOP_KERNELS=aot: {self.py_func.__name__} has no AOT build: "
                                       f"{why or 'not in the AOT module: run `python scripts/build_kernels.py`'}")
            code = self.py_func.__code__
            self._n_args = code.co_argcount
            self._defaults = self.py_func.__defaults__ or ()
            self._n_required = self._n_args - len(self._defaults)
        return self._aot

    def _python_mode(self, args: tuple[Any, ...]) -> bool:
        if MODE != "auto":
            # A helper called from Python runs as Python in ``aot`` mode: only whole programs are built.
            return MODE == "python" or (MODE == "aot" and self._bounded)
        if "numba" in sys.modules:
            return False
        # A helper runs the way the kernel calling it runs; only whole-program calls weigh their work.
        if self._bounded:
            return True
        # The budget is per process, not per call: a process running many small programs (an RL reward
        # loop) would otherwise stay in Python for good, far slower than numba once it is loaded.
        work = self._work(*args) if self._work is not None else _array_work(args)
        if self._python_work + work >= self._small_work:
            return False
        self._python_work += work
        return True

    def runs_compiled(self, work: float) -> bool:
        """Whether a call of this much work would run compiled (nothing is counted against the budget)."""
        if MODE != "auto":
            return MODE in ("numba", "aot")
        return self.aot is not None or "numba" in sys.modules or self._python_work + work >= self._small_work

    @property
    def compiled(self) -> Any:
        """The numba dispatcher (compiles, or loads from numba's cache, this module's kernels first)."""
        if self._compiled is None:
            compile_module(sys.modules[self.py_func.__module__])
        return self._compiled


def kernel(func: Callable[..., Any] | None = None, *, work: Callable[..., float] | None = None,
           small_work: float = SMALL_WORK, bounded: bool = False) -> Any:
    """Decorate a numba-compatible function as a :class:`Kernel`.

    ``work(*args)`` estimates its cost (default: the largest argument array's length); calls below
    ``small_work`` run as Python while numba is not loaded. ``bounded``: one call is small work whatever its
    arguments (a helper of other kernels, a scalar formula): it runs as Python until numba is loaded.
    """
    if func is None:
        return lambda f: Kernel(f, work, small_work, bounded)
    return Kernel(func, work, small_work, bounded)


def runs_compiled(func: Any, work: float) -> bool:
    """Whether a call of ``func`` (a :class:`Kernel`, or the dispatcher that replaced it in its module) with
    this much work would run compiled."""
    return func.runs_compiled(work) if isinstance(func, Kernel) else True


def compile_module(module: Any) -> None:
    """Give every kernel a module uses (its own and imported ones) its numba dispatcher.

    numba resolves a kernel's calls to other kernels through the module's globals when it compiles, so those
    globals become the dispatchers themselves; the :class:`Kernel` objects other modules imported keep working
    (they call their dispatcher).
    """
    from numba import njit  # here, not at import: loading numba is what plain-Python mode avoids

    names = [name for name, value in vars(module).items() if isinstance(value, Kernel)]
    for name in names:
        k = getattr(module, name)
        if k._compiled is None:
            if k.py_func.__module__ != module.__name__:
                compile_module(sys.modules[k.py_func.__module__])
            else:
                k._compiled = njit(cache=True)(k.py_func)
    for name in names:
        setattr(module, name, getattr(module, name)._compiled)
