"""Heaters on the print's timeline: first-order thermal models under PID control, waits and verify_heater.

Each heater is one lumped mass: ``C dT/dt = P·u − (k + k_fan·fan)(T − T_ambient)``, integrated exactly over
each step with the duty ``u`` held constant. ``u`` comes from a PID controller in Klipper's form (gains in
Klipper's units, i.e. divided by 255; integral clamped to the duty limit, no wind-up while saturated; the
derivative smoothed over one second). M109/M190 waits end as the firmware ends them: Klipper when the
temperature is within 1 °C of target and changing by less than 0.1 °C/s, Marlin when it has reached
target − 1 °C. Thermal-runaway detection follows the rules of Klipper's ``verify_heater`` (checked once a
second): a heater that does not gain ``heating_gain_c`` within ``check_gain_time_s`` while approaching its
target, or whose accumulated shortfall exceeds ``max_error_c_s``, faults.

The whole timeline — moves, dwells, homing, waits, target and fan changes — runs in one compiled pass.
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np

from sim_bridge.events import EV_DWELL, EV_HOMING, EV_WAIT_BED, EV_WAIT_HOTEND, EV_WAIT_HOTEND_BOTH
from sim_bridge.kernels import kernel
from sim_bridge.profiles import HeaterProfile, Material, PrinterProfile

PID_PARAM_BASE = 255.0
SETTLE_DELTA_C = 1.0
SETTLE_SLOPE_C_S = 0.1
DERIV_SMOOTH_S = 1.0
VERIFY_PERIOD_S = 1.0

# Heater parameter vector layout.
H_POWER, H_CAP, H_LOSS, H_FAN_LOSS, H_MAX_POWER, H_KP, H_KI, H_KD = 0, 1, 2, 3, 4, 5, 6, 7
H_GAIN_TIME, H_GAIN, H_HYST, H_MAX_ERR, H_MIN, H_MAX = 8, 9, 10, 11, 12, 13

# Heater state vector layout.
S_TEMP, S_TARGET, S_INTEG, S_PREV_TEMP, S_DERIV, S_DUTY = 0, 1, 2, 3, 4, 5
S_ERROR, S_APPROACHING, S_STARTING, S_GOAL_TEMP, S_GOAL_TIME, S_LAST_TARGET, S_NEXT_CHECK = 6, 7, 8, 9, 10, 11, 12
STATE_SIZE = 13

FAULT_NONE, FAULT_HOTEND, FAULT_BED, FAULT_TIMEOUT_HOTEND, FAULT_TIMEOUT_BED = 0, 1, 2, 3, 4


def heater_params(h: HeaterProfile) -> np.ndarray:
    """The parameter vector the compiled code reads."""
    return np.array([h.power_w, h.heat_capacity_j_per_k, h.loss_w_per_k, h.fan_loss_w_per_k, h.max_power,
                     h.pid_kp / PID_PARAM_BASE, h.pid_ki / PID_PARAM_BASE, h.pid_kd / PID_PARAM_BASE,
                     h.check_gain_time_s, h.heating_gain_c, h.hysteresis_c, h.max_error_c_s, h.min_temp_c,
                     h.max_temp_c])


def heater_state(temp_c: float) -> np.ndarray:
    """A cold, idle heater at ``temp_c``."""
    s = np.zeros(STATE_SIZE)
    s[S_TEMP] = temp_c
    s[S_PREV_TEMP] = temp_c
    return s



@overload
def melt_capacity_mm3_s(profile: PrinterProfile, material: Material, hotend_temp_c: float) -> float: ...
@overload
def melt_capacity_mm3_s(profile: PrinterProfile, material: Material, hotend_temp_c: np.ndarray) -> np.ndarray: ...
def melt_capacity_mm3_s(profile: PrinterProfile, material: Material,
                        hotend_temp_c: float | np.ndarray) -> float | np.ndarray:
    """Largest volumetric flow the hotend melts at a (true) nozzle temperature: the profile's
    ``max_volumetric_flow_mm3_s`` at ``melt_reference_temp_c``, changing by ``melt_flow_per_c_mm3_s`` per
    kelvin, never below a tenth of it, 0 below ``min_extrude_temp_c``; times the material's
    ``melt_flow_factor``. Works on one temperature or an array of them.
    """
    temp = np.asarray(hotend_temp_c, dtype=np.float64)
    base = profile.max_volumetric_flow_mm3_s
    capacity = np.where(temp < profile.min_extrude_temp_c, 0.0, np.maximum(
        0.1 * base, base + profile.melt_flow_per_c_mm3_s * (temp - profile.melt_reference_temp_c)))
    capacity = capacity * material.melt_flow_factor
    return float(capacity) if capacity.ndim == 0 else capacity


@kernel(bounded=True)
def _pid_step(p: np.ndarray, s: np.ndarray, dt: float) -> None:
    target = s[S_TARGET]
    temp = s[S_TEMP]
    diff = temp - s[S_PREV_TEMP]
    if dt >= DERIV_SMOOTH_S:
        deriv = diff / dt
    else:
        deriv = (s[S_DERIV] * (DERIV_SMOOTH_S - dt) + diff) / DERIV_SMOOTH_S
    s[S_DERIV] = deriv
    s[S_PREV_TEMP] = temp
    if target <= 0.0:
        s[S_DUTY] = 0.0
        s[S_INTEG] = 0.0
        return
    err = target - temp
    integ = s[S_INTEG] + err * dt
    integ_max = p[H_MAX_POWER] / p[H_KI] if p[H_KI] > 0.0 else 0.0
    integ = max(0.0, min(integ_max, integ))
    co = p[H_KP] * err + p[H_KI] * integ - p[H_KD] * deriv
    bounded = max(0.0, min(p[H_MAX_POWER], co))
    s[S_DUTY] = bounded
    if co == bounded:
        s[S_INTEG] = integ


@kernel(bounded=True)
def temperature_after(p: np.ndarray, temp_c: float, duty: float, dt_s: float, ambient_c: float,
                      fan: float) -> float:
    """The heater's temperature ``dt_s`` later with ``duty`` held (the one thermal physics: the embedded
    simulator's timeline and the virtual MCU's heaters both step through it)."""
    k = p[H_LOSS] + p[H_FAN_LOSS] * fan
    t_inf = ambient_c + p[H_POWER] * duty / k
    return t_inf + (temp_c - t_inf) * math.exp(-k * dt_s / p[H_CAP])


@kernel(bounded=True)
def _physics_step(p: np.ndarray, s: np.ndarray, dt: float, ambient: float, fan: float) -> None:
    s[S_TEMP] = temperature_after(p, s[S_TEMP], s[S_DUTY], dt, ambient, fan)


@kernel(bounded=True)
def _verify(p: np.ndarray, s: np.ndarray, now: float) -> bool:
    """Klipper-style verify_heater check; True when the heater has faulted."""
    if now < s[S_NEXT_CHECK]:
        return False
    s[S_NEXT_CHECK] = now + VERIFY_PERIOD_S
    temp = s[S_TEMP]
    target = s[S_TARGET]
    hyst = p[H_HYST]
    if temp >= target - hyst or target <= 0.0:
        s[S_APPROACHING] = 0.0
        s[S_STARTING] = 0.0
        if temp <= target + hyst:
            s[S_ERROR] = 0.0
        s[S_LAST_TARGET] = target
        return False
    s[S_ERROR] += (target - hyst) - temp
    faulted = False
    if s[S_APPROACHING] == 0.0:
        if target != s[S_LAST_TARGET]:
            s[S_APPROACHING] = 1.0
            s[S_STARTING] = 1.0
            s[S_GOAL_TEMP] = temp + p[H_GAIN]
            s[S_GOAL_TIME] = now + p[H_GAIN_TIME]
        elif s[S_ERROR] >= p[H_MAX_ERR]:
            faulted = True
    elif temp >= s[S_GOAL_TEMP]:
        s[S_STARTING] = 0.0
        s[S_ERROR] = 0.0
        s[S_GOAL_TEMP] = temp + p[H_GAIN]
        s[S_GOAL_TIME] = now + p[H_GAIN_TIME]
    elif now >= s[S_GOAL_TIME]:
        s[S_APPROACHING] = 0.0
    elif s[S_STARTING] != 0.0:
        s[S_GOAL_TEMP] = min(s[S_GOAL_TEMP], temp + p[H_GAIN])
    s[S_LAST_TARGET] = target
    return faulted


@kernel(bounded=True)
def _advance(hp: np.ndarray, hs: np.ndarray, bp: np.ndarray, bs: np.ndarray, now: float, duration: float,
             dt: float, ambient: float, fan: float, trace: np.ndarray, tn: np.ndarray, interval: float,
             move_idx: int, fault: np.ndarray) -> float:
    """Integrate both heaters over ``duration`` from ``now``; returns the new time."""
    end = now + duration
    while now < end - 1e-12:
        step = min(dt, end - now)
        _pid_step(hp, hs, step)
        _pid_step(bp, bs, step)
        _physics_step(hp, hs, step, ambient, fan)
        _physics_step(bp, bs, step, 0.0 + ambient, 0.0)
        now += step
        if fault[0] == FAULT_NONE:
            if _verify(hp, hs, now):
                fault[0] = FAULT_HOTEND
                fault[1] = now
                fault[2] = move_idx
            elif _verify(bp, bs, now):
                fault[0] = FAULT_BED
                fault[1] = now
                fault[2] = move_idx
        _record(trace, tn, interval, now, hs, bs, fan, move_idx)
    return now


@kernel(bounded=True)
def _record(trace: np.ndarray, tn: np.ndarray, interval: float, now: float, hs: np.ndarray, bs: np.ndarray,
            fan: float, move_idx: int) -> None:
    k = int(tn[0])
    if interval <= 0.0 or k >= trace.shape[0]:
        return
    if now + 1e-9 >= tn[1]:
        trace[k, 0] = now
        trace[k, 1] = hs[S_TEMP]
        trace[k, 2] = hs[S_TARGET]
        trace[k, 3] = bs[S_TEMP]
        trace[k, 4] = bs[S_TARGET]
        trace[k, 5] = fan
        trace[k, 6] = move_idx
        tn[0] = k + 1
        tn[1] = tn[1] + interval
        while tn[1] <= now:
            tn[1] += interval


def _timeline_work(durations: np.ndarray, de: np.ndarray, ev_idx: np.ndarray, ev_kind: np.ndarray,
                   ev_value: np.ndarray, hp: np.ndarray, hs: np.ndarray, bp: np.ndarray, bs: np.ndarray,
                   now: float, fan: float, ambient: float, dt: float, marlin_waits: bool, batch_mode: bool,
                   wait_limit: float, *rest: object) -> float:
    # The heaters step every dt of simulated time: a long dwell or travel is long work however few its moves.
    waits = np.count_nonzero((ev_kind == EV_WAIT_HOTEND) | (ev_kind == EV_WAIT_BED) | (ev_kind == EV_WAIT_HOTEND_BOTH))
    dwell_s = float(np.abs(ev_value[ev_kind == EV_DWELL]).sum())
    homing_s = 60.0 * np.count_nonzero(ev_kind == EV_HOMING)
    simulated_s = float(durations.sum()) + dwell_s + homing_s + waits * min(wait_limit, 900.0)
    return durations.shape[0] + ev_idx.shape[0] + simulated_s / max(dt, 1e-9)


@kernel(work=_timeline_work)
def run_timeline(durations: np.ndarray, de: np.ndarray, ev_idx: np.ndarray, ev_kind: np.ndarray,
                 ev_value: np.ndarray, hp: np.ndarray, hs: np.ndarray, bp: np.ndarray, bs: np.ndarray,
                 now: float, fan: float, ambient: float, dt: float, marlin_waits: bool, batch_mode: bool,
                 wait_limit: float, trace: np.ndarray, tn: np.ndarray, interval: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Run moves and events in order.

    Returns per-move start time and hotend temperature, the fan duty per move, time buckets
    ``[motion, dwell, heating, homing]``, a fault record ``[kind, time, index, event]``, the end time and
    the final fan duty. ``hs``/``bs`` (heater states) and ``tn`` (trace cursor) are updated in place.
    """
    n = durations.shape[0]
    m = ev_idx.shape[0]
    start_t = np.zeros(n)
    hot_t = np.zeros(n)
    fan_at = np.zeros(n)
    buckets = np.zeros(4)
    fault = np.zeros(4)
    fault[3] = -1.0
    e = 0
    for i in range(n + 1):
        while e < m and ev_idx[e] == i:
            kind = ev_kind[e]
            value = ev_value[e]
            if kind == 0:
                hs[S_TARGET] = value
            elif kind == 1:
                bs[S_TARGET] = value
            elif kind == 2 or kind == 3 or kind == 8:
                if not batch_mode:
                    s = hs if kind != 3 else bs
                    waited = 0.0
                    while True:
                        temp = s[S_TEMP]
                        if kind == 8:
                            done = abs(temp - value) <= SETTLE_DELTA_C
                        elif marlin_waits:
                            done = temp >= value - SETTLE_DELTA_C
                        elif s[S_TARGET] == value:
                            done = abs(value - temp) <= SETTLE_DELTA_C and abs(s[S_DERIV]) <= SETTLE_SLOPE_C_S
                        else:
                            done = temp >= value
                        if done:
                            break
                        if waited >= wait_limit or fault[0] != FAULT_NONE:
                            if fault[0] == FAULT_NONE:
                                fault[0] = FAULT_TIMEOUT_BED if kind == 3 else FAULT_TIMEOUT_HOTEND
                                fault[1] = now
                                fault[2] = i
                                fault[3] = e
                            break
                        now = _advance(hp, hs, bp, bs, now, dt, dt, ambient, fan, trace, tn, interval, i, fault)
                        waited += dt
                        buckets[2] += dt
                    if fault[0] != FAULT_NONE:
                        if fault[3] < 0.0:
                            fault[3] = e
                        return start_t, hot_t, fan_at, buckets, fault, now, fan
            elif kind == 4 or kind == 5 or kind == 7:
                now = _advance(hp, hs, bp, bs, now, value, dt, ambient, fan, trace, tn, interval, i, fault)
                if kind == 5:
                    buckets[3] += value
                else:
                    buckets[1] += value
            elif kind == 6:
                fan = value
            e += 1
        if fault[0] != FAULT_NONE:
            return start_t, hot_t, fan_at, buckets, fault, now, fan
        if i == n:
            break
        start_t[i] = now
        hot_t[i] = hs[S_TEMP]
        fan_at[i] = fan
        now = _advance(hp, hs, bp, bs, now, durations[i], dt, ambient, fan, trace, tn, interval, i, fault)
        buckets[0] += durations[i]
    return start_t, hot_t, fan_at, buckets, fault, now, fan
