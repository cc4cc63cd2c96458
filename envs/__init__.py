"""Gymnasium environments whose actions are G-code and whose rewards come from simulated prints.

Importing the package registers the environments (ids carry versions; a reward change bumps them):

* ``layerloop/GcodeWriter-v1`` — a language model writes a job's G-code, one layer per step, from the
  planner's toolpath (``-v0``: from the outline alone);
* ``layerloop/GcodeProgram-v0`` — the whole program of a small job in one step;
* ``layerloop/PrintSupervisor-v1`` — tuning commands between layers of a print with hidden faults (text);
* ``layerloop/PrintSupervisorBox-v1`` — the same dynamics with a ``Box`` action for numeric policies.
"""

from gymnasium.envs.registration import register, registry

_ENVS: dict[str, tuple[str, int, dict]] = {
    "layerloop/GcodeWriter-v1": ("envs.gcode_writer:GcodeWriterEnv", 64, {"toolpath": True}),
    "layerloop/GcodeWriter-v0": ("envs.gcode_writer:GcodeWriterEnv", 64, {"toolpath": False}),
    "layerloop/GcodeProgram-v0": ("envs.gcode_writer:GcodeProgramEnv", 1, {}),
    "layerloop/PrintSupervisor-v1": ("envs.supervisor.env:PrintSupervisorEnv", 200, {}),
    "layerloop/PrintSupervisorBox-v1": ("envs.supervisor.box_env:PrintSupervisorBoxEnv", 200, {}),
}
for _env_id, (_entry_point, _max_steps, _kwargs) in _ENVS.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point=_entry_point, max_episode_steps=_max_steps, kwargs=_kwargs)
