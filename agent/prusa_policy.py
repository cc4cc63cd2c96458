"""The ``slicer`` baseline: PrusaSlicer's own program for each job, one step at a time.

This is what a user would otherwise do: slice the part with the real slicer. For each job the part is
meshed layer by layer (:mod:`envs.mesh`, so PrusaSlicer cuts exactly the outlines the job asks for), sliced
by ``prusa-slicer`` with the job's settings (:func:`prusa_config`), and its program cut at PrusaSlicer's own
``;LAYER_CHANGE`` lines into the episode's steps: the preamble and start G-code as the start step, each
layer as a layer step, the end G-code as the end step. A job without start/end sequences gets the layers
only (the environment heats and homes first, as for every policy).

Settings the job names are mapped one to one (:func:`prusa_config`); the rest stay PrusaSlicer's defaults
(its cooling slowdown, gap fill, seam placement, infill anchors …), as a user's slicer would print them.
The start and end G-code are the reference program's (:mod:`envs.slicer`), so slicer and expert differ in
their layers, not in how they heat, home and prime; as the reference start (or the environment's silent
setup) ends retracted and PrusaSlicer expects a primed nozzle, one line (:func:`unretract`) pushes the
filament back before the first layer. Programs are cached by config and mesh in
``~/.cache/layerloop/prusa-slicer`` (``$XDG_CACHE_HOME`` honoured, or ``$LAYERLOOP_SLICER_CACHE``).

PrusaSlicer may make a different number of layers than the job (rounding of a height that is not a whole
number of layers): extra layers are appended to the job's last layer, missing ones answered with nothing,
and :attr:`PrusaSlicerPolicy.notes` says so for each such job.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from agent.expert import scripted_policy
from agent.policy import Prompt
from envs.jobs import PrintJob
from envs.mesh import binary_stl, job_triangles
from envs.sampler import load_suite
from envs.slicer import cached_slice
from sim_bridge import prusa_slicer
from sim_bridge.printers import load_printer

CACHE_ENV = "LAYERLOOP_SLICER_CACHE"
"""Environment variable naming the cache folder of sliced programs."""
END_MARKER = "; layerloop: end G-code"
"""First line of the end G-code given to PrusaSlicer: where the end step begins."""
FILL_PATTERNS = {"lines": "rectilinear", "grid": "grid"}
"""The job's infill pattern → PrusaSlicer's ``fill_pattern`` (rectilinear alternates its direction per
layer, as ``lines`` does)."""
KLIPPER_FLAVOR = "marlin"
"""PrusaSlicer 2.5 has no Klipper flavour; legacy Marlin writes ``M204 S``, which Klipper honours."""
FLAVORS = {"klipper": KLIPPER_FLAVOR, "marlin": "marlin2", "prunt": KLIPPER_FLAVOR}


def cache_dir() -> Path:
    """Where sliced programs are kept."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "layerloop" / "prusa-slicer"


def prusa_config(job: PrintJob) -> dict[str, str]:
    """The PrusaSlicer settings of ``job``: its printer (bed, height, nozzle, filament, flavour), its process
    settings one to one, relative E, no skirt, brim or support, no acceleration commands (the printer's
    own limits apply), and the reference program's start and end G-code."""
    p = job.process
    printer = load_printer(job.printer)
    (x0, y0, _), (x1, y1, z1) = printer.position_min_mm, printer.position_max_mm
    width = f"{p.line_width_mm:g}"
    speed = f"{p.print_speed_mm_s:g}"
    fan = f"{round(100 * p.fan)}"
    sliced = cached_slice(job)
    config = {
        "bed_shape": f"{x0:g}x{y0:g},{x1:g}x{y0:g},{x1:g}x{y1:g},{x0:g}x{y1:g}",
        "max_print_height": f"{z1:g}",
        "gcode_flavor": FLAVORS[printer.firmware],
        "machine_limits_usage": "time_estimate_only",
        "nozzle_diameter": f"{printer.nozzle_diameter_mm:g}",
        "filament_diameter": f"{printer.filament_diameter_mm:g}",
        "use_relative_e_distances": "1",
        "layer_gcode": "G92 E0",
        "layer_height": f"{p.layer_height_mm:g}",
        "first_layer_height": f"{p.first_layer_height_mm:g}",
        "perimeters": str(p.perimeters),
        "fill_density": f"{100 * p.infill_density:g}%",
        "fill_pattern": FILL_PATTERNS[p.infill_pattern],
        "top_solid_layers": str(p.solid_layers),
        "bottom_solid_layers": str(p.solid_layers),
        "top_solid_min_thickness": "0",
        "bottom_solid_min_thickness": "0",
        # The job's infill density holds for small regions too (PrusaSlicer would fill them solid).
        "solid_infill_below_area": "0",
        "first_layer_speed": f"{p.first_layer_speed_mm_s:g}",
        "travel_speed": f"{p.travel_speed_mm_s:g}",
        "travel_speed_z": f"{p.z_speed_mm_s:g}",
        "retract_length": f"{p.retract_mm:g}",
        "retract_speed": f"{p.retract_speed_mm_s:g}",
        "deretract_speed": "0",
        "retract_before_travel": f"{p.retract_min_travel_mm:g}",
        "retract_lift": "0",
        "wipe": "0",
        "temperature": f"{p.hotend_temp_c:g}",
        "first_layer_temperature": f"{p.hotend_temp_c:g}",
        "bed_temperature": f"{p.bed_temp_c:g}",
        "first_layer_bed_temperature": f"{p.bed_temp_c:g}",
        "cooling": "1" if p.fan > 0 else "0",
        "fan_always_on": "1" if p.fan > 0 else "0",
        "min_fan_speed": fan,
        "max_fan_speed": fan,
        "bridge_fan_speed": fan,
        "disable_fan_first_layers": "1",
        "extrusion_multiplier": f"{p.extrusion_multiplier:g}",
        "skirts": "0",
        "brim_width": "0",
        "support_material": "0",
        "elefant_foot_compensation": "0",
        "default_acceleration": "0",
        "start_gcode": sliced.start + unretract(job) if job.start_end else "",
        "end_gcode": END_MARKER + "\n" + (sliced.end if job.start_end else ""),
        "start_filament_gcode": "\"\"",  # per-extruder strings: an empty one is written quoted
        "end_filament_gcode": "\"\"",
    }
    for key in ("extrusion_width", "first_layer_extrusion_width", "perimeter_extrusion_width",
                "external_perimeter_extrusion_width", "infill_extrusion_width", "solid_infill_extrusion_width",
                "top_infill_extrusion_width"):
        config[key] = width
    for key in ("perimeter_speed", "external_perimeter_speed", "small_perimeter_speed", "infill_speed",
                "solid_infill_speed", "top_solid_infill_speed", "gap_fill_speed", "bridge_speed"):
        config[key] = speed
    return config


def unretract(job: PrintJob) -> str:
    """The line that pushes back the filament the reference start (and setup) leaves retracted: PrusaSlicer's
    layers assume the start G-code left the nozzle primed, as its own start G-code does."""
    p = job.process
    return f"G1 E{p.retract_mm:g} F{60 * p.retract_speed_mm_s:g} ; prime after the reference start\n" \
        if p.retract_mm > 0 else ""


def slice_with_prusaslicer(job: PrintJob, cache: Path | None = None) -> prusa_slicer.SlicedProgram:
    """PrusaSlicer's program for ``job``, cut into start, layers and end (sliced once, then cached)."""
    config = prusa_config(job)
    stl = binary_stl(job_triangles(job), name=job.job_id)
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode() + stl).hexdigest()[:20]
    folder = (cache or cache_dir()) / key
    folder.mkdir(parents=True, exist_ok=True)
    mesh = folder / "part.stl"
    if not mesh.is_file():
        mesh.write_bytes(stl)
    # The mesh stands where the job's part stands: PrusaSlicer must not move it.
    gcode = prusa_slicer.slice_mesh(mesh, config, folder / "part.gcode", ["--dont-arrange"])
    return prusa_slicer.split_layers(gcode.read_text(encoding="utf-8"), END_MARKER)


class PrusaSlicerPolicy:
    """PrusaSlicer's programs for a suite's jobs as a :class:`~agent.policy.Policy` (see the module
    docstring); slices every job when built."""

    def __init__(self, suite: str | Sequence[PrintJob], cache: Path | None = None) -> None:
        jobs = load_suite(suite) if isinstance(suite, str) else list(suite)
        self.notes: list[str] = []
        """One line per job whose PrusaSlicer program has another number of layers than the job."""
        self.programs: dict[str, prusa_slicer.SlicedProgram] = {}
        for job in jobs:
            program = slice_with_prusaslicer(job, cache)
            self.programs[job.job_id] = program
            if len(program.layers) != job.layer_count:
                self.notes.append(f"job {job.job_id}: PrusaSlicer made {len(program.layers)} layers, the job has "
                                  f"{job.layer_count}")
        self._policy = scripted_policy(jobs, self.step_text)

    def step_text(self, job: PrintJob, kind: str, k: int) -> str:
        """The answer of one step: start, end, or layer ``k`` (the last layer also takes any extra ones)."""
        program = self.programs[job.job_id]
        if kind == "start":
            return program.start
        if kind == "end":
            return program.end
        if k >= len(program.layers):
            return ""
        text = "".join(program.layers[k:]) if k == job.layer_count - 1 else program.layers[k]
        # Without a start step the environment's silent setup ran instead, and left the filament retracted.
        return unretract(job) + text if k == 0 and not job.start_end else text

    def __call__(self, prompts: Sequence[Prompt], /) -> list[str]:
        return self._policy(prompts)
