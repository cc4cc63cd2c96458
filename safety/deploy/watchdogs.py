"""The deployment's watchdogs: each looks at the live telemetry and says when something is wrong.

Each is a small object fed every tick (:meth:`check`), returning a reason (a sentence, for the logs and the
operator) or None. What to do about it is the deployment's configured action (``--on-fault pause|cancel|
estop``); Klippy's own shutdown needs none (the printer has already stopped).

- :class:`HeaterWatchdog`: a heater that settled at its target (inside ``watchdog_heater_deviation_c`` for
  ``watchdog_heater_deviation_s``) and then stays outside that band as long (a heater that fails, a
  thermistor that slips out of its block). Heating to a new target, and the overshoot after it, do not
  count until it settles again.
- :class:`TelemetryWatchdog`: no message from the printer for ``watchdog_telemetry_timeout_s`` (the
  websocket dropped and did not come back, Moonraker hung, the network went).
- :func:`klippy_halted`: Klippy reports ``shutdown`` or ``error`` (its message is the reason).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from safety.policy import SafetyPolicy
from sim_bridge.moonraker import HALTED_KLIPPY_STATES

HEATERS = ("extruder", "heater_bed")


@dataclass
class HeaterWatchdog:
    policy: SafetyPolicy
    _settled: dict[str, float] = field(default_factory=dict)
    """Heater → the target it settled at (inside the band for the watchdog's time); a new target starts over."""
    _inside_since: dict[str, float] = field(default_factory=dict)
    _outside_since: dict[str, float] = field(default_factory=dict)

    def check(self, status: dict[str, dict[str, Any]], now_s: float) -> str | None:
        limit, hold_s = self.policy.watchdog_heater_deviation_c, self.policy.watchdog_heater_deviation_s
        for name in HEATERS:
            heater = status.get(name, {})
            temp, target = heater.get("temperature"), heater.get("target")
            if temp is None or target is None or float(target) <= 0.0:
                for table in (self._settled, self._inside_since, self._outside_since):
                    table.pop(name, None)
                continue
            deviation = abs(float(temp) - float(target))
            if self._settled.get(name) != float(target):
                # Heating, or the overshoot after it: watched only once it has stayed in the band.
                self._outside_since.pop(name, None)
                if deviation > limit:
                    self._inside_since.pop(name, None)
                elif now_s - self._inside_since.setdefault(name, now_s) >= hold_s:
                    self._settled[name] = float(target)
                continue
            if deviation <= limit:
                self._outside_since.pop(name, None)
                continue
            since = self._outside_since.setdefault(name, now_s)
            if now_s - since >= hold_s:
                return (f"heater {name} at {float(temp):.1f} °C, {deviation:.1f} °C from its target "
                        f"{float(target):.0f} °C for {now_s - since:.0f} s (limit {limit:g} °C for {hold_s:g} s)")
        return None


@dataclass
class TelemetryWatchdog:
    policy: SafetyPolicy

    def check(self, age_s: float) -> str | None:
        if age_s > self.policy.watchdog_telemetry_timeout_s:
            return (f"no telemetry from the printer for {age_s:.1f} s (limit "
                    f"{self.policy.watchdog_telemetry_timeout_s:g} s): connection lost")
        return None


def klippy_halted(status: dict[str, dict[str, Any]]) -> str | None:
    hooks = status.get("webhooks", {})
    if hooks.get("state") in HALTED_KLIPPY_STATES:
        message = str(hooks.get("state_message", "")).strip().split("\n")[0]
        return f"Klippy {hooks.get('state')}: {message}"
    return None
