"""What a reviewer sees of a program: the simulation made for review at submission (per-layer toolpaths,
thinned temperature traces), and the program page's parts rendered from it on the server — a layer's
toolpath as SVG, the numbered listing, the diff against the expert's program and the temperature plot. No
script and nothing external."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from markupsafe import Markup

from sim_bridge.backends import simulate
from sim_bridge.events import F_EXTRUDE, F_KINEMATIC
from sim_bridge.options import SimOptions
from sim_bridge.profiles import PrinterProfile
from sim_bridge.report import EMBEDDED
from sim_bridge.simulator import Simulator

PREVIEW_MAX_POINTS_PER_LAYER = 20000
"""Points kept per layer in the stored toolpath preview; denser layers are thinned evenly (the full program
is still in the listing)."""
TRACE_MAX_POINTS = 400
"""Samples kept of each temperature trace for the report's plot."""
TRACE_INTERVAL_S = 1.0
"""Sampling interval of the simulated temperature traces."""
SVG_SIZE_PX = 560
MARGIN_MM = 5.0
"""Space around the extruded area in the preview; travel beyond it is cut off."""
LISTING_PAGE_LINES = 5000
"""Lines per page of the listing; a program this short is listed on its own page."""
DIFF_MAX_INPUT_LINES = 60000
"""Longer programs are not diffed in the page (difflib is quadratic at worst); the CLI can diff them."""
DIFF_MAX_OUTPUT_LINES = 4000
EOL_RE = re.compile(r"\r{0,2}\n|\r")
"""Line endings as :mod:`sim_bridge.gcode` counts them, so listing numbers match findings' line numbers."""


# -- the simulation for review ---------------------------------------------------------------------------
def _thin(n: int, keep: int) -> np.ndarray:
    """Indices of at most ``keep`` of ``n`` items, evenly spread, first and last kept."""
    if n <= keep:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, keep).round().astype(np.int64))


def _polylines(starts: np.ndarray, ends: np.ndarray) -> list[list[float]]:
    """Chain segments into polylines (a new one wherever a segment does not start where the last ended);
    each polyline is flat ``[x0, y0, x1, y1, …]`` rounded to 0.01 mm."""
    lines: list[list[float]] = []
    current: list[float] = []
    last: tuple[float, float] | None = None
    for (sx, sy), (ex, ey) in zip(starts.round(2).tolist(), ends.round(2).tolist(), strict=True):
        if last != (sx, sy):
            if len(current) >= 4:
                lines.append(current)
            current = [sx, sy]
        current += [ex, ey]
        last = (ex, ey)
    if len(current) >= 4:
        lines.append(current)
    return lines


def _toolpaths(sim: Simulator) -> dict[str, Any]:
    """Per-layer extrusion and travel polylines (XY, machine coordinates) of the moves that ran, for the
    layers that extrude."""
    if not sim.executed:
        return {"layers": [], "bbox_mm": None, "thinned": False}
    starts = np.concatenate([m.starts[:, :2] for m in sim.executed])
    ends = np.concatenate([m.xyz[:, :2] for m in sim.executed])
    z = np.concatenate([m.xyz[:, 2] for m in sim.executed])
    flags = np.concatenate([m.flags for m in sim.executed])
    layer = np.concatenate([m.layer for m in sim.executed])
    line = np.concatenate([m.line for m in sim.executed])
    extruding = (flags & F_EXTRUDE) != 0
    moving = ((flags & F_KINEMATIC) != 0) & (np.abs(ends - starts).sum(axis=1) > 0)
    # Layers with extrusion only: the homing and travel before the first layer would be a layer of its own.
    shown = np.unique(layer[moving & extruding]) if (moving & extruding).any() else np.unique(layer[moving])
    layers, thinned = [], False
    for index in shown.tolist():
        sel = np.flatnonzero((layer == index) & moving)
        keep = _thin(len(sel), PREVIEW_MAX_POINTS_PER_LAYER)
        thinned |= len(keep) < len(sel)
        sel = sel[keep]
        ext, trav = sel[extruding[sel]], sel[~extruding[sel]]
        z_mm = float(np.median(z[ext])) if len(ext) else float(np.median(z[sel]))
        layers.append({
            "index": int(index), "z_mm": round(z_mm, 3),
            "first_line": int(line[sel].min()), "last_line": int(line[sel].max()),
            "extrude": _polylines(starts[ext], ends[ext]), "travel": _polylines(starts[trav], ends[trav]),
        })
    # Framed on the part: travel to the home corner or a park position would shrink it to a speck.
    framed = moving & extruding if (moving & extruding).any() else moving
    pts = np.concatenate([starts[framed], ends[framed]]) if framed.any() else np.zeros((1, 2))
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return {"layers": layers, "bbox_mm": [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])],
            "thinned": bool(thinned)}


def _thin_traces(traces: dict[str, list[float]] | None) -> dict[str, list[float]]:
    if not traces or not traces.get("t_s"):
        return {}
    keep = _thin(len(traces["t_s"]), TRACE_MAX_POINTS).tolist()
    return {k: [round(float(traces[k][i]), 2) for i in keep]
            for k in ("t_s", "hotend_c", "hotend_target_c", "bed_c", "bed_target_c")}


def simulate_for_review(gcode: bytes, printer: PrinterProfile | str, name: str = "", backend: str = EMBEDDED
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run a program on the embedded simulator (and on ``backend`` when it is another); return (report
    without traces, preview).

    The preview holds per-layer toolpaths (``layers``: index, z, line range, ``extrude`` and ``travel``
    polylines, always the embedded simulator's) and thinned temperature ``traces``; the report gains
    ``temperatures``: peak readings and targets (°C). The report's ``backend`` and ``sources`` say which
    backend produced each figure; the page shows it beside each one.
    """
    options = SimOptions(traces=True, trace_interval_s=TRACE_INTERVAL_S)
    sim = Simulator(printer, options=options)
    result = sim.run(gcode, name=name or None)
    if backend != EMBEDDED:
        result = simulate(gcode, printer, backend=backend, options=options)
    report = result.to_dict()
    traces = report.pop("traces") or {}
    report["temperatures"] = {
        key: (max(traces[key]) if traces.get(key) else None)
        for key in ("hotend_c", "hotend_target_c", "bed_c", "bed_target_c")
    }
    if report["sources"]:
        report["sources"]["temperatures"] = report["sources"].get("traces", EMBEDDED)
    preview = _toolpaths(sim)
    preview["traces"] = _thin_traces(traces)
    return report, preview


# -- the page's parts -------------------------------------------------------------------------------------
def gcode_lines(gcode: bytes) -> list[str]:
    """A program's lines, numbered as the simulator and validator number them (line 1 is index 0)."""
    lines = EOL_RE.split(gcode.decode("utf-8", errors="replace"))
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _points(flat: list[float]) -> str:
    return " ".join(f"{flat[i]:g},{flat[i + 1]:g}" for i in range(0, len(flat), 2))


def layer_svg(preview: dict[str, Any], position: int) -> Markup:
    """The toolpath of the preview's ``position``-th layer as inline SVG (mm units, Y up), the layer below
    drawn faintly; extrusion solid, travel dashed."""
    layers = preview.get("layers") or []
    bbox = preview.get("bbox_mm")
    if not layers or not bbox:
        return Markup('<p class="muted">No moves ran: nothing to preview.</p>')
    x0, y0, x1, y1 = bbox
    x0, y0, x1, y1 = x0 - MARGIN_MM, y0 - MARGIN_MM, x1 + MARGIN_MM, y1 + MARGIN_MM
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    stroke = max(w, h) / 400
    layer = layers[position]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="toolpath" class="toolpath" width="{SVG_SIZE_PX}" '
        f'height="{SVG_SIZE_PX}" viewBox="{x0:g} {-y1:g} {w:g} {h:g}" '
        f'data-layer="{layer["index"]}" role="img" aria-label="toolpath of layer {layer["index"]}">',
        f'<g transform="scale(1,-1)" fill="none" stroke-linecap="round" stroke-width="{stroke:g}">',
    ]
    if position > 0:
        for flat in layers[position - 1]["extrude"]:
            parts.append(f'<polyline class="below" stroke="#d0d0d0" points="{_points(flat)}"/>')
    for flat in layer["travel"]:
        parts.append(f'<polyline class="travel" stroke="#7a9cc6" stroke-dasharray="{3 * stroke:g}" '
                     f'stroke-width="{stroke / 2:g}" points="{_points(flat)}"/>')
    for flat in layer["extrude"]:
        parts.append(f'<polyline class="extrude" stroke="#c2410c" points="{_points(flat)}"/>')
    parts.append("</g></svg>")
    return Markup("".join(parts))


def temperature_svg(traces: dict[str, list[float]], width_px: int = 560, height_px: int = 180) -> Markup:
    """Hotend and bed temperature (and targets) over time as a small inline SVG plot."""
    t = traces.get("t_s") or []
    if len(t) < 2:
        return Markup('<p class="muted">No temperature trace.</p>')
    series = [("hotend_c", "#c2410c", ""), ("hotend_target_c", "#c2410c", "4"),
              ("bed_c", "#1d4ed8", ""), ("bed_target_c", "#1d4ed8", "4")]
    top = max(max(traces[k]) for k, _, _ in series) or 1.0
    t_end = t[-1] or 1.0
    pad = 28

    def xy(ti: float, v: float) -> str:
        return f"{pad + (width_px - pad - 4) * ti / t_end:.1f},{height_px - pad - (height_px - pad - 6) * v / top:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="temps" width="{width_px}" height="{height_px}" '
             f'role="img" aria-label="temperatures over time">',
             f'<line x1="{pad}" y1="{height_px - pad}" x2="{width_px}" y2="{height_px - pad}" stroke="#888"/>',
             f'<text x="2" y="12" font-size="10">{top:.0f} °C</text>',
             f'<text x="{width_px - 80}" y="{height_px - 8}" font-size="10">{t_end:.0f} s</text>']
    for key, colour, dash in series:
        pts = " ".join(xy(ti, v) for ti, v in zip(t, traces[key], strict=True))
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<polyline fill="none" stroke="{colour}"{dashes} points="{pts}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass(frozen=True)
class DiffLine:
    """One line of a unified diff, with the program's line number where it has one."""

    kind: str
    """``add``, ``del``, ``ctx`` or ``hunk``."""
    text: str
    line: int | None


@dataclass(frozen=True)
class Diff:
    """The diff of the program against the expert's, or why there is none."""

    lines: list[DiffLine]
    note: str = ""


_HUNK_RE = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")


def expert_diff(program: list[str], expert: list[str] | None) -> Diff:
    """Unified diff from the expert's program to this one (``+`` lines are this program's)."""
    if expert is None:
        return Diff([], "No expert program was submitted with this one.")
    if max(len(program), len(expert)) > DIFF_MAX_INPUT_LINES:
        return Diff([], f"Programs over {DIFF_MAX_INPUT_LINES} lines are not diffed here.")
    out: list[DiffLine] = []
    new_line = 0
    for text in difflib.unified_diff(expert, program, "expert", "program", n=2, lineterm=""):
        if text.startswith(("---", "+++")):
            continue
        if len(out) >= DIFF_MAX_OUTPUT_LINES:
            return Diff(out, f"Diff cut at {DIFF_MAX_OUTPUT_LINES} lines.")
        hunk = _HUNK_RE.match(text)
        if hunk:
            new_line = int(hunk.group(1))
            out.append(DiffLine("hunk", text, None))
        elif text.startswith("+"):
            out.append(DiffLine("add", text[1:], new_line))
            new_line += 1
        elif text.startswith("-"):
            out.append(DiffLine("del", text[1:], None))
        else:
            out.append(DiffLine("ctx", text[1:], new_line))
            new_line += 1
    return Diff(out, "" if out else "Identical to the expert's program.")


def listing_page_of(line: int) -> int:
    """The listing page (0-based) that holds a 1-based line number."""
    return max(0, (line - 1) // LISTING_PAGE_LINES)


def line_href(program_id: int, line: int, total_lines: int) -> str:
    """Link to a line of the numbered listing: on the program page for short programs, else its page."""
    if total_lines <= LISTING_PAGE_LINES:
        return f"#L{line}"
    return f"/program/{program_id}/source?page={listing_page_of(line)}#L{line}"

