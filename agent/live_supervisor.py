"""Supervisors for a live deployment (:class:`safety.deploy.supervision.Supervisor`): the rule, or a trained
``PrintSupervisor-v1`` model, on live telemetry.

A real printer has no camera here, so of the supervisor environment's telemetry
(:data:`envs.supervisor.measure.TELEMETRY_NAMES`) only what the printer reports or the simulator predicts is
known: the speed and flow factors, fan and hotend target and temperature (Klipper's), and the share of the next
layer's filament the hotend can melt — the simulator's plan for that layer (its flow and melted share at the
job's temperature) rescaled to the hotend's *measured* temperature
(:func:`sim_bridge.thermal.melt_capacity_mm3_s`). What the environment measures on the deposit (bead width and
height, volume, outline, time against the reference) is taken at its nominal value, and defects as none.

With that telemetry the rule is the environment's expert (:func:`agent.baselines.expert_tuning`), unchanged, and
a model reads the very prompt it was trained on (:func:`envs.supervisor.prompt.supervisor_prompt`), titled with
the program's SHA-256 instead of a job id, with the commands the deployment's gate refused on earlier layers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from agent.baselines import expert_tuning
from agent.llm import generate, load_pretrained
from envs.supervisor.measure import TELEMETRY_NAMES
from envs.supervisor.prompt import supervisor_prompt
from safety.deploy.run import job_hotend_temp_c
from safety.deploy.supervision import LayerPlan, LiveTelemetry
from sim_bridge.printers import load_material, load_printer
from sim_bridge.profiles import Material, PrinterProfile
from sim_bridge.thermal import melt_capacity_mm3_s

LINE_WIDTH_PER_NOZZLE = 1.125
"""Nominal bead width over nozzle diameter (the jobs' 0.45 mm on a 0.4 mm nozzle): a G-code file does not say."""
MAX_NEW_TOKENS = 64
"""A model's answer for one layer: a few tuning commands (bounds the time a layer change waits for it)."""


def live_telemetry_values(live: LiveTelemetry, plan: LayerPlan, profile: PrinterProfile, material: Material,
                          job_hotend_c: float) -> dict[str, float]:
    """The environment's telemetry (by name) as far as a live printer and the simulator's plan know it."""
    planned = melt_capacity_mm3_s(profile, material, job_hotend_c)
    demand = plan.flow_mm3_s if plan.delivered_fraction >= 1.0 else planned / max(plan.delivered_fraction, 1e-6)
    demand *= live.speed_factor * live.extrude_factor
    capacity = melt_capacity_mm3_s(profile, material, live.hotend_temp_c)
    values = dict.fromkeys(TELEMETRY_NAMES, 0.0)
    values.update(
        layers_done_fraction=(live.layer / live.layer_count) if live.layer_count else 0.0,
        layer_count=float(live.layer_count), hotend_error_c=live.hotend_temp_c - live.hotend_target_c,
        hotend_target_offset_c=live.hotend_target_c - job_hotend_c, bed_error_c=live.bed_temp_c - live.bed_target_c,
        delivered_fraction=min(1.0, capacity / demand) if demand > 0 else 1.0, width_ratio=1.0, height_ratio=1.0,
        volume_ratio=1.0, peak_flow_mm3_s=min(demand, capacity), fan=live.fan, flow_factor=live.extrude_factor,
        speed_factor=live.speed_factor, time_ratio=1.0)
    return values


class RuleLiveSupervisor:
    """The expert rule on live telemetry."""

    name = "rule"

    def __init__(self, profile: PrinterProfile, material: Material, job_hotend_c: float) -> None:
        self.profile = profile
        self.material = material
        self.job_hotend_c = job_hotend_c

    def telemetry(self, live: LiveTelemetry, plan: LayerPlan) -> dict[str, float]:
        return live_telemetry_values(live, plan, self.profile, self.material, self.job_hotend_c)

    def propose(self, telemetry: LiveTelemetry, next_layer: LayerPlan) -> str:
        return expert_tuning(self.telemetry(telemetry, next_layer), self.job_hotend_c)

    def refused(self, command: str, reasons: list[str]) -> None:
        """The rule reads no feedback: its commands are inside the windows by construction."""


class ModelLiveSupervisor(RuleLiveSupervisor):
    """A trained ``PrintSupervisor-v1`` model (a checkpoint folder or Hugging Face id), greedy, on live telemetry.

    Its answer is only a proposal: the deployment sends it through :class:`safety.gate.LiveTuning` line by line.
    """

    def __init__(self, source: str, profile: PrinterProfile, material: Material, material_name: str,
                 printer_name: str, job_hotend_c: float, program: bytes, device: str = "cpu") -> None:
        super().__init__(profile, material, job_hotend_c)
        self.name = f"model:{source}"
        self.model, self.tokenizer = load_pretrained(source, device)
        self.title = f"job {hashlib.sha256(program).hexdigest()[:12]} (deployed program, {material_name} on {printer_name})"
        self.last_refused: list[str] = []
        """Why the gate refused lines of the last answer, shown to the model as the environment shows them."""

    def prompt(self, live: LiveTelemetry, plan: LayerPlan) -> str:
        values = self.telemetry(live, plan)
        values["refused"] = float(len(self.last_refused))
        return supervisor_prompt(values, title=self.title, layer_count=live.layer_count,
                                 job_hotend_c=self.job_hotend_c,
                                 line_width_mm=LINE_WIDTH_PER_NOZZLE * self.profile.nozzle_diameter_mm,
                                 hotend_max_temp_c=self.profile.hotend.max_temp_c, refused=self.last_refused)

    def propose(self, telemetry: LiveTelemetry, next_layer: LayerPlan) -> str:
        prompt = self.prompt(telemetry, next_layer)
        self.last_refused = []
        return generate(self.model, self.tokenizer, [prompt], MAX_NEW_TOKENS)[0]

    def refused(self, command: str, reasons: list[str]) -> None:
        self.last_refused += [f"{command}: {reason}" for reason in reasons or ["refused"]]


def load_live_supervisor(name: str, printer: str, material: str, program: bytes) -> RuleLiveSupervisor:
    """The supervisor ``name`` for a deployment of ``program`` on ``printer``: ``rule``, or a trained model — a
    checkpoint folder (``config.json`` inside, e.g. a run's ``supervisor/final``) or a Hugging Face id."""
    profile, mat, job_c = load_printer(printer), load_material(material), job_hotend_temp_c(program)
    if name == "rule":
        return RuleLiveSupervisor(profile, mat, job_c)
    path = Path(name)
    if path.exists() and not (path / "config.json").is_file():
        raise ValueError(f"supervisor {name!r}: a folder with no config.json — give 'rule', 'none', a trained "
                         "model's folder (e.g. runs/<run>/supervisor/final) or a Hugging Face model id")
    return ModelLiveSupervisor(name, profile, mat, material, printer, job_c, program)
