"""The simulator's bound on simulated time: a program whose moves and dwells would run longer than
:data:`MAX_PRINT_TIME_S` stops with a failure where it passes it, instead of integrating the heaters for ever.

The heater timeline steps every ``thermal_dt_s`` of simulated time, so its cost is the print's duration, not
its length: one line (``G4 P1e40``, ``G1 X-1e40`` on an unhomed Marlin, ``G1 X100 F1e-300``) would
otherwise keep the simulator busy without end (found by ``benchmarks/fuzz_campaign.py``). Real firmware
would run such a program for as long as it says; no real print takes a week.
"""

from __future__ import annotations

import numpy as np

import sim_bridge.failures as fail
from sim_bridge.events import EV_DWELL, EV_HOMING, EV_MACRO
from sim_bridge.report import Failure

MAX_PRINT_TIME_S = 7 * 86400.0
"""A week: longer than any real print; at the default 0.1 s heater step, 6 million steps."""
_TIMED_EVENTS = (EV_DWELL, EV_HOMING, EV_MACRO)


def over_time_cap(durations: np.ndarray, move_lines: np.ndarray, move_layers: np.ndarray, ev_idx: np.ndarray,
                  ev_kind: np.ndarray, ev_value: np.ndarray, ev_line: list[int], start_s: float,
                  limit_s: float = MAX_PRINT_TIME_S) -> tuple[int, int, Failure] | None:
    """Where simulated time (from ``start_s``) first passes ``limit_s``: the moves and events to keep (those
    before it) and the fatal failure at its line; None when the whole program stays within it.

    >>> moves = np.array([1.0, 1e9]), np.array([3, 4]), np.array([0, 0])
    >>> keep_moves, keep_events, failure = over_time_cap(*moves, np.array([1]), np.array([EV_DWELL]),
    ...                                                  np.array([5.0]), [4], 0.0)
    >>> keep_moves, keep_events, failure.line, failure.mode
    (1, 1, 4, 'invalid_command')
    """
    timed = np.isin(ev_kind, _TIMED_EVENTS)
    total = start_s + float(durations.sum()) + float(ev_value[timed].sum())
    if not total > limit_s:  # NaN times are no longer than the limit: nothing to integrate
        return None
    now, e, n, m = start_s, 0, durations.shape[0], ev_idx.shape[0]
    for i in range(n + 1):
        while e < m and ev_idx[e] == i:
            if timed[e] and now + ev_value[e] > limit_s:
                return i, e, _failure(int(ev_line[e]), int(move_layers[i]) if i < n else -1, limit_s)
            now += ev_value[e] if timed[e] else 0.0
            e += 1
        if i < n:
            if now + durations[i] > limit_s:
                return i, e, _failure(int(move_lines[i]), int(move_layers[i]), limit_s)
            now += durations[i]
    return None


def _failure(line: int, layer: int, limit_s: float) -> Failure:
    return Failure(fail.INVALID_COMMAND, f"the print would run longer than {limit_s / 86400:.0f} days from here "
                   "(the simulator's limit on simulated time); stopped", line, layer, fatal=True)
