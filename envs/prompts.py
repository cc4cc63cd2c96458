"""Prompts: the deterministic text a language model sees for each step of a job.

A prompt holds what a competent person needs to write the step's G-code: the printer and its limits, the
material and temperatures, the layer's outline coordinates and Z, line width and extrusion per mm, the
machine state, and the simulator's feedback on the previous step. Only printable ASCII is used (the
environments' ``Text`` spaces are ASCII).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import shapely
from shapely.geometry import MultiPolygon, Polygon

from envs.jobs import PrintJob
from envs.slicer import Toolpath
from sim_bridge.printers import load_printer

MAX_PROMPT_CHARS = 16000
FEEDBACK_PREFIX = "Feedback on the previous step: "
STATE_PREFIX = "Machine: "
OUTLINE_TOLERANCE_MM = 0.05
"""Outlines are simplified to this tolerance before listing (a 64-gon circle stays a 64-gon)."""


def extrusion_per_mm(job: PrintJob, layer: int) -> float:
    """Filament millimetres per millimetre of line at layer ``layer`` (rectangular bead)."""
    p = job.process
    h = p.first_layer_height_mm if layer == 0 else p.layer_height_mm
    area = math.pi * (load_printer(job.printer).filament_diameter_mm / 2.0) ** 2
    return p.line_width_mm * h / area * p.extrusion_multiplier


def _rings(region: Polygon | MultiPolygon) -> list[str]:
    polygons = list(region.geoms) if isinstance(region, MultiPolygon) else [region]
    lines = []
    for k, poly in enumerate(polygons):
        poly = shapely.simplify(poly, OUTLINE_TOLERANCE_MM)
        outer = " ".join(f"({x:.2f},{y:.2f})" for x, y in list(poly.exterior.coords)[:-1])
        lines.append(f"  polygon {k} outer: {outer}")
        for i, hole in enumerate(poly.interiors):
            inner = " ".join(f"({x:.2f},{y:.2f})" for x, y in list(hole.coords)[:-1])
            lines.append(f"  polygon {k} hole {i}: {inner}")
    return lines


def job_header(job: PrintJob) -> list[str]:
    """Lines describing the printer, material and process."""
    printer = load_printer(job.printer)
    p = job.process
    lo, hi = printer.position_min_mm, printer.position_max_mm
    return [
        f"Printer: {printer.name} ({printer.firmware}, {printer.kinematics}), volume X {lo[0]:g}..{hi[0]:g} "
        f"Y {lo[1]:g}..{hi[1]:g} Z {lo[2]:g}..{hi[2]:g} mm, max speed {printer.max_velocity_mm_s:g} mm/s, "
        f"nozzle {printer.nozzle_diameter_mm:g} mm, filament {printer.filament_diameter_mm:g} mm.",
        f"Material: {job.material}; hotend {p.hotend_temp_c:g} C, bed {p.bed_temp_c:g} C, fan {p.fan:g} from layer 2.",
        f"Process: first layer {p.first_layer_height_mm:g} mm, layers {p.layer_height_mm:g} mm, line width "
        f"{p.line_width_mm:g} mm, {p.perimeters} perimeter(s), infill {p.infill_density:g} {p.infill_pattern} "
        f"({p.solid_layers} solid bottom/top), print {p.print_speed_mm_s:g} mm/s, first layer "
        f"{p.first_layer_speed_mm_s:g} mm/s, travel {p.travel_speed_mm_s:g} mm/s, retract {p.retract_mm:g} mm.",
        "Use relative extrusion (M83 is active), F in mm/min. Part: "
        f"{job.part.kind} {job.part.size_mm} mm, height {job.part.height_mm:g} mm, {job.layer_count} layer(s).",
    ]


def state_line(state: dict[str, float | list[float] | list[bool]]) -> str:
    """The machine state as one line."""
    pos = state.get("position_mm", [0.0, 0.0, 0.0])
    return (f"{STATE_PREFIX}nozzle at X{pos[0]:.2f} Y{pos[1]:.2f} Z{pos[2]:.2f}; hotend {state.get('hotend_c', 0):.0f} C "
            f"(target {state.get('hotend_target_c', 0):.0f}), bed {state.get('bed_c', 0):.0f} C "
            f"(target {state.get('bed_target_c', 0):.0f}); homed {state.get('homed', [False] * 3)}.")


def toolpath_lines(paths: Sequence[Toolpath]) -> list[str]:
    """The planner's paths of a layer, one move per line in G-code's own words: each path's travel, then
    each extruding move's end point and filament E (the numbers as the reference program writes them)."""
    lines = ["Toolpath (nozzle centre, mm; E in mm of filament; feeds, retraction and fan are yours):"]
    for path in paths:
        lines.append(f"  travel X{path.start[0]} Y{path.start[1]}")
        lines.extend(f"  extrude X{x} Y{y} E{e}" for x, y, e in path.moves)
    return lines


def layer_prompt(job: PrintJob, layer: int, state: dict, feedback: str = "",
                 toolpath: Sequence[Toolpath] | None = None) -> str:
    """The prompt for writing layer ``layer``: v0 (``toolpath`` None) lists the outline to fill; v1 lists the
    planner's toolpath instead (:func:`planned_layer_prompt`)."""
    if toolpath is not None:
        return planned_layer_prompt(job, layer, toolpath, feedback)
    zs = job.layer_zs()
    lines = [f"Task: write the G-code for layer {layer + 1} of {len(zs)} at Z={zs[layer]:.3f} mm.", *job_header(job)]
    lines.append(f"Extrusion: {extrusion_per_mm(job, layer):.5f} mm of filament per mm of line.")
    lines.append("Outline to fill (mm):")
    lines.extend(_rings(job.target(layer)))
    lines.append(state_line(state))
    if feedback:
        lines.append(f"{FEEDBACK_PREFIX}{feedback}")
    lines.append("Answer with G-code only.")
    return _ascii("\n".join(lines))


def planned_layer_prompt(job: PrintJob, layer: int, toolpath: Sequence[Toolpath], feedback: str = "") -> str:
    """``GcodeWriter-v1``'s layer prompt: what writing a planned layer needs and nothing else — the layer's Z,
    the temperatures and fan, every speed the program uses, and the toolpath. (The outline, the printer's
    limits and the machine state are v0's: with the plan given they only lengthen the prompt, and a small
    model pays for every token.)"""
    printer = load_printer(job.printer)
    p = job.process
    zs = job.layer_zs()
    lines = [
        f"Task: write the G-code for layer {layer + 1} of {len(zs)} at Z={zs[layer]:.3f} mm.",
        f"Printer: {printer.name} ({printer.firmware}). Material: {job.material}; hotend {p.hotend_temp_c:g} C, bed "
        f"{p.bed_temp_c:g} C, fan {p.fan:g} from layer 2.",
        f"Speeds: first layer {p.first_layer_speed_mm_s:g} mm/s, print {p.print_speed_mm_s:g} mm/s, travel "
        f"{p.travel_speed_mm_s:g} mm/s, Z {p.z_speed_mm_s:g} mm/s; retract {p.retract_mm:g} mm at "
        f"{p.retract_speed_mm_s:g} mm/s. Relative extrusion (M83 is active), F in mm/min.",
        *toolpath_lines(toolpath),
    ]
    if feedback:
        lines.append(f"{FEEDBACK_PREFIX}{feedback}")
    lines.append("Answer with G-code only.")
    return _ascii("\n".join(lines))


def start_prompt(job: PrintJob, state: dict) -> str:
    """The prompt for the start sequence."""
    lines = ["Task: write the start sequence: heat the bed and hotend and wait, home all axes, prime the nozzle "
             "with a line at the front of the bed, away from the part.", *job_header(job), state_line(state),
             "Answer with G-code only."]
    return _ascii("\n".join(lines))


def end_prompt(job: PrintJob, state: dict, feedback: str = "") -> str:
    """The prompt for the end sequence."""
    lines = ["Task: write the end sequence: retract, lift the nozzle clear of the part, park, turn the heaters "
             "and fan off, disable the motors.", *job_header(job), state_line(state)]
    if feedback:
        lines.append(f"{FEEDBACK_PREFIX}{feedback}")
    lines.append("Answer with G-code only.")
    return _ascii("\n".join(lines))


def program_prompt(job: PrintJob) -> str:
    """The prompt for a whole program (``GcodeProgram``)."""
    lines = [f"Task: write the complete G-code program for this job"
             f"{' including start and end sequences' if job.start_end else ' (the printer is already heated and homed)'}.",
             *job_header(job)]
    zs = job.layer_zs()
    for k, z in enumerate(zs):
        lines.append(f"Layer {k + 1} at Z={z:.3f} mm, {extrusion_per_mm(job, k):.5f} mm filament per mm:")
        lines.extend(_rings(job.target(k)))
    lines.append("Answer with G-code only.")
    return _ascii("\n".join(lines))


def task_key(prompt: str) -> str:
    """A prompt without the lines that depend on how earlier steps went (the feedback and the machine
    state): the same text for one step of one job whatever happened before, e.g. on a perturbed printer."""
    return "\n".join(line for line in prompt.splitlines()
                     if not line.startswith((FEEDBACK_PREFIX, STATE_PREFIX)))


def _ascii(text: str) -> str:
    text = text.encode("ascii", "replace").decode("ascii")
    if len(text) > MAX_PROMPT_CHARS:
        text = text[: MAX_PROMPT_CHARS - 20] + "\n[... truncated]"
    return text
