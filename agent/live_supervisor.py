"""Supervisors for a live deployment (:class:`safety.deploy.supervision.Supervisor`): the rule, on live
telemetry.

A real printer has no camera here, so of the supervisor environment's telemetry
(:data:`envs.supervisor.measure.TELEMETRY_NAMES`) only what the printer reports or the simulator predicts is
known: the speed and flow factors and the hotend target (Klipper's), and the share of the next layer's
filament the hotend can melt — the simulator's plan for that layer (its flow and melted share at the job's
temperature) rescaled to the hotend's *measured* temperature (:func:`sim_bridge.thermal.melt_capacity_mm3_s`).
The volume ratio, which the environment measures on the deposit, is taken as 1. With those, the rule is the
environment's expert (:func:`agent.baselines.expert_tuning`), unchanged.
"""

from __future__ import annotations

from agent.baselines import expert_tuning
from envs.supervisor.measure import TELEMETRY_NAMES
from safety.deploy.run import job_hotend_temp_c
from safety.deploy.supervision import LayerPlan, LiveTelemetry
from sim_bridge.printers import load_material, load_printer
from sim_bridge.profiles import Material, PrinterProfile
from sim_bridge.thermal import melt_capacity_mm3_s


class RuleLiveSupervisor:
    """The expert rule on live telemetry."""

    name = "rule"

    def __init__(self, profile: PrinterProfile, material: Material, job_hotend_c: float) -> None:
        self.profile = profile
        self.material = material
        self.job_hotend_c = job_hotend_c

    def telemetry(self, live: LiveTelemetry, plan: LayerPlan) -> dict[str, float]:
        planned = melt_capacity_mm3_s(self.profile, self.material, self.job_hotend_c)
        demand = plan.flow_mm3_s if plan.delivered_fraction >= 1.0 else planned / max(plan.delivered_fraction, 1e-6)
        demand *= live.speed_factor * live.extrude_factor
        capacity = melt_capacity_mm3_s(self.profile, self.material, live.hotend_temp_c)
        values = dict.fromkeys(TELEMETRY_NAMES, 0.0)
        values.update(delivered_fraction=min(1.0, capacity / demand) if demand > 0 else 1.0, volume_ratio=1.0,
                      speed_factor=live.speed_factor, flow_factor=live.extrude_factor,
                      hotend_target_offset_c=live.hotend_target_c - self.job_hotend_c,
                      layers_done_fraction=(live.layer / live.layer_count) if live.layer_count else 0.0)
        return values

    def propose(self, telemetry: LiveTelemetry, next_layer: LayerPlan) -> str:
        return expert_tuning(self.telemetry(telemetry, next_layer), self.job_hotend_c)


def load_live_supervisor(name: str, printer: str, material: str, program: bytes) -> RuleLiveSupervisor:
    """The supervisor ``name`` (``rule``) for a deployment of ``program`` on ``printer``."""
    if name != "rule":
        raise ValueError(f"supervisor {name!r}: 'rule' or 'none' (a trained live supervisor is not wired yet)")
    return RuleLiveSupervisor(load_printer(printer), load_material(material), job_hotend_temp_c(program))
