"""The printer-side dead-man switch: Klipper pauses the print when the deployment stops re-arming it.

A deployment that dies (killed, its machine off, its network gone) cannot pause a printer; the printer must
do it itself. Two ``[delayed_gcode]`` sections (:data:`DEADMAN_CFG`) go into the printer's printer.cfg
(``python -m safety.deploy deadman-cfg`` prints them). While a deployment watches, it re-arms
``layerloop_deadman`` every :data:`REARM_FRACTION` of :data:`DEADMAN_S` with ``UPDATE_DELAYED_GCODE``; if it
stops, the section runs: a printing printer pauses (Klipper's ``PAUSE``: motion stops, heaters stay on so
the print can be resumed) and ``layerloop_deadman_cancel`` is armed, which cancels a print still paused
:data:`CANCEL_AFTER_S` later and turns the heaters off. A deployment ends by disarming it (duration 0).

A deployment refuses the ``first-layer`` and ``full`` stages on a printer without both sections: nothing
would stop such a printer if the deployment died.

Klipper runs one G-code command at a time: while the print waits in ``M109``/``M190``, homes or dwells, the
re-arm waits behind it, and so would the section's ``PAUSE``. A switch armed for 10 s would fire during every
heat-up and pause the print as soon as it ended. So each re-arm covers the slowest blocking command among
the next :data:`LOOKAHEAD_LINES` lines from where Klipper is reading the file (:func:`blocking_seconds`:
heat-ups timed by the embedded thermal model from ambient, homing by the embedded homing model, dwells as
written, each × :data:`BLOCKING_MARGIN`), plus :data:`DEADMAN_S`. During the layers that is 10 s.
"""

from __future__ import annotations

from sim_bridge.gcode import parse_line
from sim_bridge.profiles import PrinterProfile
from sim_bridge.simulator import simulate

DEADMAN_ID = "layerloop_deadman"
CANCEL_ID = "layerloop_deadman_cancel"
DEADMAN_S = 10.0
"""How long the printer goes on alone after the deployment's last re-arm."""
REARM_FRACTION = 0.3
"""The deployment re-arms after this fraction of :data:`DEADMAN_S` (three chances before it fires)."""
CANCEL_AFTER_S = 600.0
"""How long a dead-man pause waits for a person before the print is cancelled and the heaters go off."""
DEADMAN_CFG = f"""\
# layerloop deployment dead-man switch (docs/safety.md): pauses a print whose deployment stopped watching
[delayed_gcode {DEADMAN_ID}]
gcode:
  {{% if printer.print_stats.state == "printing" %}}
    PAUSE
    UPDATE_DELAYED_GCODE ID={CANCEL_ID} DURATION={CANCEL_AFTER_S:g}
  {{% endif %}}

[delayed_gcode {CANCEL_ID}]
gcode:
  {{% if printer.print_stats.state == "paused" %}}
    CANCEL_PRINT
    TURN_OFF_HEATERS
  {{% endif %}}
"""
"""The printer.cfg sections of the switch."""
REQUIRED_SECTIONS = (f"delayed_gcode {DEADMAN_ID}", f"delayed_gcode {CANCEL_ID}")
"""The printer.cfg sections of the switch, as Klipper's ``configfile.settings`` names them."""


LOOKAHEAD_LINES = 200
"""How far past Klipper's read position the re-arm looks for blocking commands (Klipper reads a few seconds
of moves ahead of what it runs)."""
LOOKBEHIND_LINES = 5
"""Lines before the read position that may still be running."""
BLOCKING_MARGIN = 1.5
"""Safety factor on the simulated duration of a blocking command."""


def blocking_seconds(program: bytes, profile: PrinterProfile) -> list[float]:
    """Per line of ``program`` (index 0 = line 1): how long Klipper may be blocked in that line's command."""
    cache: dict[str, float] = {}

    def simulated(script: str, bucket: str) -> float:
        if script not in cache:
            cache[script] = simulate(script, printer=profile).time_breakdown_s[bucket]
        return cache[script]

    out = []
    for raw in program.splitlines():
        command = parse_line(raw.decode("utf-8", "replace"))
        seconds = 0.0
        if command is not None:
            target = command.params.get("S", command.params.get("R", 0.0))
            if command.code == "M109" and target > 0:
                seconds = simulated(f"M104 S{target:g}\nM109 S{target:g}\n", "heating")
            elif command.code == "M190" and target > 0:
                seconds = simulated(f"M140 S{target:g}\nM190 S{target:g}\n", "heating")
            elif command.code == "G28":
                seconds = simulated("G28\n", "homing")
            elif command.code == "G4":
                seconds = command.params.get("P", 0.0) / 1000.0 + command.params.get("S", 0.0)
        out.append(seconds * BLOCKING_MARGIN)
    return out


def arm_duration_s(blocking: list[float], line: int) -> float:
    """The re-arm's duration with Klipper reading ``line`` (1-based): :data:`DEADMAN_S` plus the slowest
    blocking command in the next :data:`LOOKAHEAD_LINES` lines."""
    # The command Klipper is blocked in is just behind its read position.
    start = max(line - 1 - LOOKBEHIND_LINES, 0)
    window = blocking[start:max(line - 1, 0) + LOOKAHEAD_LINES]
    return DEADMAN_S + (max(window) if window else 0.0)


def arm(duration_s: float = DEADMAN_S) -> str:
    """The G-code that (re-)arms the switch to fire ``duration_s`` from now (0 disarms it)."""
    return f"UPDATE_DELAYED_GCODE ID={DEADMAN_ID} DURATION={duration_s:g}"


def disarm() -> str:
    """The G-code that disarms the switch and any pending cancel (the deployment ends watching)."""
    return f"{arm(0)}\nUPDATE_DELAYED_GCODE ID={CANCEL_ID} DURATION=0"
