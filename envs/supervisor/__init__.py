"""The print supervisor: tuning commands between the layers of a print with hidden faults.

One idea a module: the live-tuning windows and check (:mod:`~envs.supervisor.tuning`), edits of the
reference program's layers (:mod:`~envs.supervisor.edits`), what the telemetry measures and the reward
(:mod:`~envs.supervisor.measure`), the hidden physics (:mod:`~envs.supervisor.physics`), the text env
(:mod:`~envs.supervisor.env`) and the ``Box`` env (:mod:`~envs.supervisor.box_env`). The names below are
the package's public face, defined in those modules.
"""

from envs.supervisor.box_env import PrintSupervisorBoxEnv, box_to_tuning
from envs.supervisor.edits import override_fan, shift_xy
from envs.supervisor.env import PrintSupervisorEnv
from envs.supervisor.measure import TELEMETRY_FIELDS, TELEMETRY_NAMES, LayerMeasure, supervisor_reward
from envs.supervisor.physics import HiddenPhysics
from envs.supervisor.tuning import (
    FAN_PWM_MAX,
    FLOW_PERCENT_MAX,
    FLOW_PERCENT_MIN,
    HOTEND_TUNE_DELTA_C,
    PRESSURE_ADVANCE_MAX_S,
    SPEED_PERCENT_MAX,
    SPEED_PERCENT_MIN,
    Tuning,
    check_tuning,
)

__all__ = [
    "FAN_PWM_MAX", "FLOW_PERCENT_MAX", "FLOW_PERCENT_MIN", "HOTEND_TUNE_DELTA_C", "PRESSURE_ADVANCE_MAX_S",
    "SPEED_PERCENT_MAX", "SPEED_PERCENT_MIN", "TELEMETRY_FIELDS", "TELEMETRY_NAMES", "HiddenPhysics",
    "LayerMeasure", "PrintSupervisorBoxEnv", "PrintSupervisorEnv", "Tuning", "box_to_tuning", "check_tuning",
    "override_fan", "shift_xy", "supervisor_reward",
]
