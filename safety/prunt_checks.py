"""The validator's checks for a ``firmware: prunt`` printer: Prunt's dialect (:mod:`sim_bridge.prunt_dialect`).

A line Prunt refuses is blocked with Prunt's own words, and the finding says that Prunt stops the file there
(it skips the rest and still reports the file finished) or, for ``M141``/``M191``, that its G-code task dies.
What Prunt accepts but reads otherwise (``M205 S`` is snap, ``X1e1`` is ``X1 E1``, ``M204`` is ignored) is a
warning. ``M205`` sets Prunt's path limits: each is checked against the profile, and a limit of 0 (Marlin's
``M205 S0`` is snap 0) stalls Prunt's planner, so the print would hang there.
"""

from __future__ import annotations

from collections.abc import Callable

from safety.findings import FindingList
from safety.heater_checks import num
from sim_bridge import failures as fail
from sim_bridge.gcode import Command
from sim_bridge.profiles import PrinterProfile
from sim_bridge.prunt_dialect import M205_LIMITS, PruntError, PruntLimits, check_line

LIMIT = "a line Prunt's parser accepts"
"""The ``limit`` of a finding for a line Prunt refuses."""


def refusal_rule(error: PruntError) -> str:
    """The validator rule of a line Prunt refuses: an unknown G or M code is ``unknown_command``."""
    if error.message.startswith("Unknown "):
        return fail.UNKNOWN_COMMAND
    return fail.classify_prunt_error(error.kind, error.message) or fail.INVALID_COMMAND


def refusal_message(error: PruntError) -> str:
    """A finding's sentence: Prunt's message and what happens to the rest of the program."""
    if error.fatal:
        then = "Prunt's G-code task dies: nothing runs until Prunt is restarted"
    else:
        then = "Prunt stops here and skips the rest of the file, yet reports the file finished"
        if error.move_ran:
            then += " (this line's move still runs)"
    return f"Prunt refuses the line ({error.message.rstrip('.')}); {then}"


class PruntChecks:
    """Mixin of the validator's checker: Prunt's dialect, line by line, and its ``M205`` limits."""

    profile: PrinterProfile
    prunt: PruntLimits | None
    line: int
    warnings: FindingList
    add: Callable[[str, str, str, str], None]
    _limit: Callable[[str, float | None, float, str, str], None]

    def prunt_line(self, raw: str) -> bool:
        """Check one raw line as Prunt reads it; True when it runs (its commands are then checked too)."""
        notes: list[str] = []
        error = check_line(raw, self.prunt, notes, positions=False)
        for note in notes:
            self.warnings.add(self.line, raw, fail.REINTERPRETED, "read as written", "read otherwise", note)
        if error is None:
            return True
        self.add(refusal_rule(error), LIMIT, error.summary, refusal_message(error))
        return error.move_ran

    def _prunt_m205(self, cmd: Command) -> None:
        prof = self.profile
        caps = {"A": (prof.max_accel_mm_s2, "mm/s^2"), "J": (prof.prunt.jerk_mm_s3, "mm/s^3"),
                "S": (prof.prunt.snap_mm_s4, "mm/s^4"), "C": (prof.prunt.crackle_mm_s5, "mm/s^5")}
        letter = next((a for a in M205_LIMITS if a in cmd.params), None)
        if letter not in caps:
            return
        cap, unit = caps[letter]
        value = cmd.get(letter)
        if value is not None and value <= 0.0:
            self.add(fail.ACCELERATION, f"M205 {letter} > 0 {unit}", f"{num(value)} {unit}",
                     f"M205 {letter}{num(value)}: a {M205_LIMITS[letter]} limit of 0 stalls Prunt's planner: "
                     "the next move never runs and the print hangs there")
            return
        self._limit(f"M205 {letter}", value, cap, unit, fail.ACCELERATION)
