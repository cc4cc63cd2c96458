"""``layerloop/PrintSupervisorBox-v1``: the supervisor's dynamics with a ``Box`` action, for numeric policies."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.jobs import PrintJob
from envs.supervisor.env import PrintSupervisorEnv
from envs.supervisor.measure import TELEMETRY_HIGH, TELEMETRY_LOW
from envs.supervisor.tuning import FAN_PWM_MAX, HOTEND_TUNE_DELTA_C
from sim_bridge.gcode import format_number

# Box action: [-1, 1]^5 onto the live-tuning values.
BOX_FLOW_SPAN_PERCENT = 20.0
BOX_SPEED_SPAN_PERCENT = 50.0
BOX_PRESSURE_ADVANCE_MAX_S = 0.1

def box_to_tuning(action: np.ndarray, job: PrintJob, layer: int, current: dict[str, float],
                  hotend_max_c: float = math.inf) -> str:
    """The text commands a ``Box`` action stands for (see ``PrintSupervisorBox-v1``); only settings that
    change are sent.

    ``current`` holds ``flow_percent``, ``speed_percent``, ``hotend_target_c``, ``fan_pwm`` and
    ``pressure_advance_s``; ``hotend_max_c`` is the printer's ``max_temp``.

    >>> job = PrintJob()
    >>> now = dict(flow_percent=100, speed_percent=100, hotend_target_c=210, fan_pwm=255, pressure_advance_s=0.05)
    >>> box_to_tuning(np.zeros(5), job, 1, now)
    ''
    >>> box_to_tuning(np.array([-0.5, -1, 1, 0, 0]), job, 1, now).split()
    ['M221', 'S90', 'M220', 'S50', 'M104', 'S225']
    """
    a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
    flow = round(100.0 + BOX_FLOW_SPAN_PERCENT * a[0])
    speed = round(100.0 + BOX_SPEED_SPAN_PERCENT * a[1])
    temp = round(job.process.hotend_temp_c + HOTEND_TUNE_DELTA_C * a[2])
    if temp > hotend_max_c:
        temp = math.floor(hotend_max_c)
    fan = round(FAN_PWM_MAX * min(1.0, max(0.0, reference_fan(job, layer) + a[3])))
    advance = round(0.5 * BOX_PRESSURE_ADVANCE_MAX_S * (a[4] + 1.0), 3)
    lines = []
    if flow != round(current["flow_percent"]):
        lines.append(f"M221 S{flow}")
    if speed != round(current["speed_percent"]):
        lines.append(f"M220 S{speed}")
    if temp != round(current["hotend_target_c"]):
        lines.append(f"M104 S{temp}")
    if fan != round(current["fan_pwm"]):
        lines.append(f"M106 S{fan}")
    if abs(advance - current["pressure_advance_s"]) > 5e-4:
        lines.append(f"SET_PRESSURE_ADVANCE ADVANCE={format_number(advance, 3)}")
    return "".join(line + "\n" for line in lines)


def reference_fan(job: PrintJob, layer: int) -> float:
    """The part-fan duty (0–1) the reference program prints layer ``layer`` with."""
    return 0.0 if layer == 0 else job.process.fan



class PrintSupervisorBoxEnv(PrintSupervisorEnv):
    """``PrintSupervisor-v1`` with a ``Box`` action and observation, for numeric policies (SB3).

    ## Description
    The same dynamics: each action is converted to the text commands it stands for
    (:func:`box_to_tuning`; only changed settings are sent) and run exactly as in ``PrintSupervisor-v1``.
    The zero action reproduces the reference program (doing nothing).

    ## Action space
    ``spaces.Box(-1, 1, (5,))``: flow ``100 + 20·a0`` % (80–120), speed ``100 + 50·a1`` % (50–150), hotend
    target ``job + 15·a2`` °C (capped at the printer's ``max_temp``), fan ``clip(reference fan + a3, 0, 1)``
    (the reference fan is 0 on the first layer and the job's fan after), pressure advance ``0.05·(a4 + 1)``
    s (0–0.1). Every value lies inside the live-tuning windows, so nothing is refused.

    ## Observation space
    ``spaces.Box(18,)``: the ``telemetry`` of ``PrintSupervisor-v1``.

    ## Rewards, starting state, episode end, arguments
    As ``PrintSupervisor-v1``.

    ## Version history
    * v1: as ``PrintSupervisor-v1`` (the same reward code; the actions stay inside the windows).
    * v0: first version.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.observation_space = spaces.Box(TELEMETRY_LOW, TELEMETRY_HIGH, dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (5,), dtype=np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:  # type: ignore[override]
        assert self.job is not None, "call reset() first"
        assert self.sim is not None
        text = box_to_tuning(action, self.job, self.layer, self.settings(), self.sim.profile.hotend.max_temp_c)
        obs, reward, terminated, truncated, info = super().step(text)
        return obs, reward, terminated, truncated, {**info, "commands": text}

    def _observation(self) -> np.ndarray:  # type: ignore[override]
        return self.telemetry()
