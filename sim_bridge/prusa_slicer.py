"""PrusaSlicer's command line: slice a mesh with a config, and split its program into layers.

The one module that runs ``prusa-slicer`` (``scripts/setup.sh`` installs the Debian package, 2.5): the
baseline policy :mod:`agent.prusa_policy` and ``benchmarks/shapes_sweep.py`` call it. Facts of its output
used here, read from PrusaSlicer 2.5's G-code:

* every layer begins with a ``;LAYER_CHANGE`` line (then ``;Z:`` and ``;HEIGHT:``);
* everything before the first one is the preamble and ``start_gcode``;
* the program ends with the ``end_gcode``, then statistics comments and the config dump, which begins with
  ``; prusaslicer_config = begin``.

A private ``HOME`` keeps a user's own PrusaSlicer settings out of every run; the config is written beside
the output as an ``.ini`` (``--load``), so each program can be sliced again by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PRUSA_SLICER_ENV = "PRUSA_SLICER"
"""Environment variable naming another ``prusa-slicer`` executable."""
PRUSA_SLICER_DEFAULT = "prusa-slicer"
SLICE_TIMEOUT_S = 600.0
"""Longest one slicing may take."""
LAYER_MARKER = ";LAYER_CHANGE"
CONFIG_DUMP_BEGIN = "; prusaslicer_config = begin"
NO_LAYERS_MESSAGE = "No layers were detected"
"""What PrusaSlicer says when the part is thinner than the first layer."""


class SlicerError(RuntimeError):
    """PrusaSlicer is missing, failed, or printed nothing."""


class NoLayersError(SlicerError):
    """PrusaSlicer found nothing to print: the part is thinner than the first layer."""


def executable() -> str:
    """The ``prusa-slicer`` to run: ``$PRUSA_SLICER`` or the one on ``PATH``; a clear error without one."""
    name = os.environ.get(PRUSA_SLICER_ENV, PRUSA_SLICER_DEFAULT)
    found = shutil.which(name)
    if found is None:
        raise SlicerError(f"{name!r} is not installed or not on PATH (scripts/setup.sh installs the Debian "
                          f"package prusa-slicer; ${PRUSA_SLICER_ENV} names another executable)")
    return found


def write_ini(config: Mapping[str, str | float | int], path: Path) -> Path:
    """A PrusaSlicer ``.ini`` of ``config`` (``key = value``, newlines in G-code written as ``\\n``)."""
    lines = [f"{key} = {str(value).replace(chr(10), chr(92) + 'n')}" for key, value in config.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def slice_mesh(mesh: Path, config: Mapping[str, str | float | int], out: Path,
               extra_args: Sequence[str] = ()) -> Path:
    """Slice the STL ``mesh`` into the G-code file ``out`` with ``config`` (written to ``out`` with suffix
    ``.ini``) and ``extra_args`` (``--dont-arrange``, ``--scale 50%``, ``--center X,Y`` …); returns ``out``.
    An output already there is reused. Raises :class:`SlicerError` with PrusaSlicer's own message."""
    if out.is_file() and out.stat().st_size > 0:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    ini = write_ini(config, out.with_suffix(".ini"))
    home = out.parent / ".home"
    home.mkdir(exist_ok=True)
    partial = out.with_suffix(".partial.gcode")
    cmd = [executable(), "--load", str(ini), *extra_args, "--export-gcode", "--output", str(partial), str(mesh)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SLICE_TIMEOUT_S,
                              env={**os.environ, "HOME": str(home)}, check=False)
    except subprocess.TimeoutExpired as err:
        raise SlicerError(f"{' '.join(cmd)}: no result after {SLICE_TIMEOUT_S:.0f} s") from err
    messages = "\n".join(line for line in (proc.stdout + proc.stderr).splitlines() if "[trace]" not in line)
    if NO_LAYERS_MESSAGE in messages:
        raise NoLayersError(f"{mesh}: PrusaSlicer found no layers (the part is thinner than the first layer)")
    if proc.returncode != 0 or not partial.is_file():
        raise SlicerError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {messages[-800:]}")
    partial.replace(out)  # only a whole program is ever reused
    return out


def version() -> str:
    """PrusaSlicer's version line (``PrusaSlicer-2.5.0+…``)."""
    proc = subprocess.run([executable(), "--help"], capture_output=True, text=True, timeout=60, check=False)
    return next((line.strip() for line in proc.stdout.splitlines() if line.strip()), "unknown")


@dataclass(frozen=True)
class SlicedProgram:
    """A PrusaSlicer program cut where its layers begin: ``start + "".join(layers) + end`` is the program
    without its config dump."""

    start: str
    """Preamble and start G-code: everything before the first layer."""
    layers: tuple[str, ...]
    """Each layer from its ``;LAYER_CHANGE`` line to the next one (the last up to ``end_marker``)."""
    end: str
    """From ``end_marker`` (or the config dump when the marker is missing) to the config dump."""


def split_layers(text: str, end_marker: str = "") -> SlicedProgram:
    """Cut a PrusaSlicer program into start, layers and end (see :class:`SlicedProgram`). ``end_marker`` is a
    line the config's ``end_gcode`` begins with; without it the last layer runs to the config dump."""
    dump = text.find("\n" + CONFIG_DUMP_BEGIN)
    body = text if dump < 0 else text[:dump + 1]
    cuts = []
    offset = 0
    for line in body.splitlines(keepends=True):
        if line.rstrip() == LAYER_MARKER:
            cuts.append(offset)
        offset += len(line)
    if not cuts:
        return SlicedProgram(body, (), "")
    end_at = len(body)
    if end_marker:
        found = body.find("\n" + end_marker, cuts[-1])
        if found >= 0:
            end_at = found + 1
    bounds = [*cuts, end_at]
    layers = tuple(body[a:b] for a, b in zip(bounds, bounds[1:], strict=False))
    return SlicedProgram(body[:cuts[0]], layers, body[end_at:])
