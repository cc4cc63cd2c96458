"""The supervisor's observation as text: what a language model reads between layers.

One function for both places a supervisor model reads it — ``PrintSupervisor-v1`` (simulated telemetry) and a
live deployment (:mod:`agent.live_supervisor`, the printer's telemetry) — so a model trained on the one reads
the same words on the other.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from envs.supervisor.tuning import (
    FAN_PWM_MAX,
    FLOW_PERCENT_MAX,
    FLOW_PERCENT_MIN,
    HOTEND_TUNE_DELTA_C,
    PRESSURE_ADVANCE_MAX_S,
    SPEED_PERCENT_MAX,
    SPEED_PERCENT_MIN,
)

MAX_PROMPT_CHARS = 4000
TEXT_CHARSET = string.printable


def supervisor_prompt(t: dict[str, float], *, title: str, layer_count: int, job_hotend_c: float,
                      line_width_mm: float, hotend_max_temp_c: float, warnings: Sequence[str] = (),
                      refused: Sequence[str] = ()) -> str:
    """The telemetry ``t`` (by :data:`envs.supervisor.measure.TELEMETRY_NAMES`) as printable ASCII.

    ``title`` names the print (``job ID (part, material on printer)``), ``job_hotend_c`` is the program's own
    hotend temperature (the centre of the tuning window), ``line_width_mm`` the nominal bead width.
    """
    n = layer_count
    done = round(t["layers_done_fraction"] * n)
    target = job_hotend_c + t["hotend_target_offset_c"]
    hi = min(job_hotend_c + HOTEND_TUNE_DELTA_C, hotend_max_temp_c)
    lines = [
        f"You supervise a print of {title}: {done} of {n} layers printed.",
        f"Hotend {target + t['hotend_error_c']:.1f} C (target {target:.0f}, job {job_hotend_c:.0f}); "
        f"bed error {t['bed_error_c']:+.1f} C.",
    ]
    if done:
        lines.append(
            f"Last layer: delivered {100 * t['delivered_fraction']:.0f}% of commanded flow, peak flow "
            f"{t['peak_flow_mm3_s']:.2f} mm3/s; bead width {t['width_ratio'] * line_width_mm:.3f} mm "
            f"(x{t['width_ratio']:.3f} nominal), height x{t['height_ratio']:.3f} nominal; volume "
            f"x{t['volume_ratio']:.3f} expected; outline off by {t['extent_error_mm']:.2f} mm; time "
            f"x{t['time_ratio']:.2f} expected; "
            f"{t['defects']:.0f} defects.")
    lines.append(f"Settings: flow {100 * t['flow_factor']:.0f}%, speed {100 * t['speed_factor']:.0f}%, fan "
                 f"{FAN_PWM_MAX * t['fan']:.0f}/255, pressure advance {t['pressure_advance_s']:.3f} s.")
    lines += [f"Warning: {w}" for w in list(warnings)[:5]]
    lines += [f"Refused: {r}" for r in list(refused)[:5]]
    lines.append(
        f"Reply with tuning commands for the next layer, one per line, or nothing: "
        f"M221 S{FLOW_PERCENT_MIN:g}-{FLOW_PERCENT_MAX:g} (flow %), M220 S{SPEED_PERCENT_MIN:g}-"
        f"{SPEED_PERCENT_MAX:g} (speed %), M104 S{job_hotend_c - HOTEND_TUNE_DELTA_C:g}-{hi:g}, "
        f"M106 S0-255, SET_PRESSURE_ADVANCE ADVANCE=0-{PRESSURE_ADVANCE_MAX_S:g}.")
    text = "\n".join(lines)
    text = "".join(c if c in TEXT_CHARSET else "?" for c in text)
    return text[:MAX_PROMPT_CHARS]
