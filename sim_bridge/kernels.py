"""Compiled kernels that cost nothing to start: numba only when the work pays for it.

The simulator's inner loops (planners, heater timeline, deposition) are plain Python functions decorated
with :func:`kernel`. Loading numba and its cached machine code takes about 0.55 s per process (measured, docs/benchmarks.md) (numba's own
import, its typing registries, and the SciPy BLAS check numba makes on its first kernel), more than a short
program takes to run in plain Python. So a kernel runs as plain Python while numba is not loaded and the
work it has done so far in this process is small, and as numba-compiled code (``cache=True``) otherwise.
Once numba is loaded in a process (a large file, a training run after its first few programs), every kernel
runs compiled: the warm in-process speed is numba's.

Both modes run the same source, so they agree; ``tests/test_kernels.py`` checks it on real programs.
``LAYERLOOP_KERNELS`` forces a mode: ``python``, ``numba``, or ``auto`` (the default).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

MODE_ENV = "LAYERLOOP_KERNELS"
"""Environment variable forcing the mode of every kernel: ``python``, ``numba`` or ``auto``."""
MODES = ("auto", "python", "numba")
MODE = os.environ.get(MODE_ENV, "auto")
"""The mode of this process, read once at import."""
SMALL_WORK = 20_000
"""Default budget of work (the largest argument array's length, summed over a process's calls) that ``auto``
runs in plain Python before it loads numba: 20,000 moves take a planner about 0.15 s in Python, about a
quarter of what loading numba costs."""


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
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any) -> Any:
        if self._compiled is None and self._python_mode(args):
            return self.py_func(*args)
        return self.compiled(*args)

    def _python_mode(self, args: tuple[Any, ...]) -> bool:
        if MODE != "auto":
            return MODE == "python"
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
            return MODE == "numba"
        return "numba" in sys.modules or self._python_work + work >= self._small_work

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
