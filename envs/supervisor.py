"""``layerloop/PrintSupervisor-v0`` and ``layerloop/PrintSupervisorBox-v0``: tuning a print between layers.

The live-tuning windows below are the limits the safety layer enforces on commands sent to a printer
during a print; the environments refuse (and penalise) anything outside them, exactly as deployment will.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.jobs import PrintJob
from envs.rewards import DEFECT_PENALTY, FATAL_PENALTY, defect_count, extrusion_score
from envs.sampler import JobSource
from envs.slicer import SlicedJob, slice_job
from envs.wrappers import (
    RandomizationConfig,
    SupervisorPhysicsRanges,
    clog,
    load_randomization,
    replace_profile,
    scale_melt_capacity,
    uniform,
)
from safety.policy import SafetyPolicy
from safety.tuning import TuningState, validate_tuning
from sim_bridge.events import F_EXTRUDE
from sim_bridge.gcode import format_command, format_number, parse_line
from sim_bridge.options import SimOptions
from sim_bridge.profiles import PrinterProfile, load_printer
from sim_bridge.simulator import Simulator

# -- live-tuning windows (the safety layer's limits for commands sent between layers) -----------------------
_POLICY = SafetyPolicy()
# The windows are the safety layer's (safety.policy.SafetyPolicy defaults): the environments train against
# the limits deployment enforces.
FLOW_PERCENT_MIN = _POLICY.flow_percent_min
"""Lowest extrusion factor (``M221 S``), percent."""
FLOW_PERCENT_MAX = _POLICY.flow_percent_max
"""Highest extrusion factor (``M221 S``), percent."""
SPEED_PERCENT_MIN = _POLICY.speed_percent_min
"""Lowest speed factor (``M220 S``), percent."""
SPEED_PERCENT_MAX = _POLICY.speed_percent_max
"""Highest speed factor (``M220 S``), percent."""
HOTEND_TUNE_DELTA_C = _POLICY.tuning_hotend_step_c
"""``M104 S`` may move the hotend target at most this far from the job's temperature (and never above the
printer's ``max_temp``)."""
FAN_PWM_MAX = _POLICY.tuning_fan_pwm_max
"""``M106 S`` range is 0 … this."""
PRESSURE_ADVANCE_MAX_S = _POLICY.tuning_pressure_advance_max_s
"""``SET_PRESSURE_ADVANCE ADVANCE=`` range is 0 … this (seconds)."""

# -- reward ------------------------------------------------------------------------------------------------
REFUSED_PENALTY = 0.5
"""Per refused command."""
TIME_WEIGHT = 0.1
"""Per unit of layer time beyond the reference's (a layer twice as slow costs 0.1)."""
DIMENSION_TOLERANCE_MM = 1.0
"""Dimensional score ``exp(-error / tolerance)`` of a layer's outer extent against the reference's."""

# -- Box action: [-1, 1]^5 onto the live-tuning values ----------------------------------------------------
BOX_FLOW_SPAN_PERCENT = 20.0
BOX_SPEED_SPAN_PERCENT = 50.0
BOX_PRESSURE_ADVANCE_MAX_S = 0.1

RESOLUTION_MM = 0.2
"""Height-map cell of the supervisor's simulator (coarser than the writer's: the reward needs no IoU)."""
DIFFICULTIES = (2, 3, 4)
MAX_ACTION_CHARS = 2000
MAX_PROMPT_CHARS = 4000
TEXT_CHARSET = string.printable

TELEMETRY_FIELDS: tuple[tuple[str, str, float, float], ...] = (
    ("layers_done_fraction", "exact", 0.0, 1.0),
    ("layer_count", "exact", 0.0, 1000.0),
    ("hotend_error_c", "temperature", -300.0, 300.0),
    ("hotend_target_offset_c", "exact", -300.0, 300.0),
    ("bed_error_c", "temperature", -200.0, 200.0),
    ("delivered_fraction", "ratio", 0.0, 1.0),
    ("width_ratio", "ratio", 0.0, 10.0),
    ("height_ratio", "ratio", 0.0, 10.0),
    ("volume_ratio", "ratio", 0.0, 10.0),
    ("extent_error_mm", "length", 0.0, 1000.0),
    ("peak_flow_mm3_s", "flow", 0.0, 1000.0),
    ("defects", "exact", 0.0, 1000.0),
    ("fan", "exact", 0.0, 1.0),
    ("flow_factor", "exact", 0.0, 5.0),
    ("speed_factor", "exact", 0.0, 5.0),
    ("pressure_advance_s", "exact", 0.0, 5.0),
    ("refused", "exact", 0.0, 1000.0),
    ("time_ratio", "exact", 0.0, 100.0),
)
"""The telemetry vector: name, sensor kind (for :class:`envs.wrappers.SensorNoise`), low, high."""
TELEMETRY_NAMES = tuple(f[0] for f in TELEMETRY_FIELDS)
TELEMETRY_LOW = np.array([f[2] for f in TELEMETRY_FIELDS], dtype=np.float32)
TELEMETRY_HIGH = np.array([f[3] for f in TELEMETRY_FIELDS], dtype=np.float32)


# -- tuning commands ---------------------------------------------------------------------------------------
@dataclass
class Tuning:
    """A tuning action checked against the live-tuning windows."""

    accepted: list[str]
    """Accepted commands, one canonical line each, in order."""
    refused: list[str]
    """Why each refused line was refused (line, command, rule, limit, value)."""


def check_tuning(text: str, job_hotend_c: float, profile: PrinterProfile) -> Tuning:
    """Check ``text`` with the safety layer's live-tuning validator (:func:`safety.tuning.validate_tuning`):
    each command with no finding is accepted (in canonical form), each finding refuses its line. Blank and
    comment lines are ignored.

    >>> t = check_tuning("M221 S95\\n; note\\nM104 S260\\nG28", 210.0, load_printer("ender3-klipper"))
    >>> t.accepted
    ['M221 S95']
    >>> [r.split(":")[0] for r in t.refused]
    ['line 3', 'line 4']
    """
    verdict = validate_tuning(text, TuningState(hotend_temp_c=job_hotend_c), profile)
    refused_lines = {v.line for v in verdict.violations}
    accepted = []
    for number, raw in enumerate(text.splitlines(), 1):
        if number in refused_lines:
            continue
        cmd = parse_line(raw, number)
        if cmd is not None and cmd.code:
            accepted.append(format_command(cmd.code, cmd.params, args=cmd.args))
    return Tuning(accepted, [f"line {v.line}: {v.message}" for v in verdict.violations])


def box_to_tuning(action: np.ndarray, job: PrintJob, layer: int, current: dict[str, float],
                  hotend_max_c: float = math.inf) -> str:
    """The text commands a ``Box`` action stands for (see ``PrintSupervisorBox-v0``); only settings that
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


_FAN_LINE = re.compile(r"^\s*M10[67]\b[^\n]*$", re.IGNORECASE | re.MULTILINE)
_MOVE_LINE = re.compile(r"^\s*G[01]\s[^\n]*$", re.IGNORECASE | re.MULTILINE)
_XY_WORD = re.compile(r"([XYxy])\s*(-?(?:\d+\.?\d*|\.\d+))")


def override_fan(text: str, fan_pwm: int) -> str:
    """``text`` with every part-fan command replaced by ``M106 S<fan_pwm>`` (the supervisor's setting wins)."""
    return _FAN_LINE.sub(f"M106 S{fan_pwm}", text)


def shift_xy(text: str, dx_mm: float, dy_mm: float) -> str:
    """``text`` with the X and Y of every G0/G1 move offset (a layer shift; absolute XY assumed).

    >>> shift_xy("G1 X10 Y5 E0.1\\nM106 S3\\n", 1.5, -1)
    'G1 X11.5 Y4 E0.1\\nM106 S3\\n'
    """
    offset = {"X": dx_mm, "Y": dy_mm}

    def word(m: re.Match[str]) -> str:
        axis = m.group(1).upper()
        return f"{axis}{format_number(float(m.group(2)) + offset[axis], 3)}"

    def line(m: re.Match[str]) -> str:
        body, sep, comment = m.group(0).partition(";")
        return _XY_WORD.sub(word, body) + sep + comment

    return _MOVE_LINE.sub(line, text)


# -- measuring a layer -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerMeasure:
    """What the telemetry reports about one layer (from the simulator's executed moves)."""

    time_s: float = 0.0
    volume_mm3: float = 0.0
    """Material delivered on extruding moves."""
    delivered_fraction: float = 1.0
    """Delivered over commanded filament (below 1 where the flow exceeded the melt capacity)."""
    width_mm: float = 0.0
    """Mean bead width, weighted by length."""
    height_mm: float = 0.0
    """Mean bead height (delivered cross-section over width), weighted by length."""
    peak_flow_mm3_s: float = 0.0
    """Highest commanded volumetric flow."""
    bbox_mm: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    """Outer extent of the beads: x0, y0, x1, y1."""


def measure_runs(sim: Simulator, first_run: int, t0_s: float) -> LayerMeasure:
    """Measure what the runs ``sim.executed[first_run:]`` printed (one layer)."""
    area = sim.profile.filament_area_mm2 * sim.extrusion_scale
    parts = [m for m in sim.executed[first_run:] if len(m.de)]
    time_s = sim.time_s - t0_s
    if not parts:
        return LayerMeasure(time_s=time_s)
    starts = np.vstack([m.starts for m in parts])
    ends = np.vstack([m.xyz for m in parts])
    de = np.concatenate([m.de for m in parts])
    delivered = np.concatenate([m.delivered for m in parts])
    width = np.concatenate([m.width for m in parts])
    layer = np.concatenate([m.layer for m in parts])
    ext = ((np.concatenate([m.flags for m in parts]) & F_EXTRUDE) != 0) & (de > 0)
    if not ext.any():
        return LayerMeasure(time_s=time_s)
    starts, ends, de, delivered, width = starts[ext], ends[ext], de[ext], delivered[ext], width[ext]
    length = np.hypot(ends[:, 0] - starts[:, 0], ends[:, 1] - starts[:, 1])
    volume = de * delivered * area
    path = float(length.sum())
    mean_width = float((width * length).sum() / path) if path > 0 else 0.0
    laid = float((width * length).sum())
    half = 0.5 * width
    bbox = (float((np.minimum(starts[:, 0], ends[:, 0]) - half).min()),
            float((np.minimum(starts[:, 1], ends[:, 1]) - half).min()),
            float((np.maximum(starts[:, 0], ends[:, 0]) + half).max()),
            float((np.maximum(starts[:, 1], ends[:, 1]) + half).max()))
    peak = max((sim.layers[k].max_flow_mm3_s for k in np.unique(layer[ext]).tolist() if k in sim.layers),
               default=0.0)
    return LayerMeasure(time_s=time_s, volume_mm3=float(volume.sum()),
                        delivered_fraction=float((de * delivered).sum() / de.sum()), width_mm=mean_width,
                        height_mm=float(volume.sum()) / laid if laid > 0 else 0.0, peak_flow_mm3_s=float(peak),
                        bbox_mm=bbox)


def bbox_error_mm(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Largest difference between the edges of two extents."""
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def supervisor_reward(measure: LayerMeasure, reference: LayerMeasure, defects: int, refused: int,
                      fatal: bool) -> float:
    """One layer's reward: quality minus penalties (see ``PrintSupervisor-v0``'s Rewards).

    >>> ref = LayerMeasure(time_s=30.0, volume_mm3=100.0, bbox_mm=(0, 0, 10, 10))
    >>> supervisor_reward(ref, ref, 0, 0, False)
    1.0
    >>> round(supervisor_reward(LayerMeasure(60.0, 110.0, 1.0, bbox_mm=(0, 0, 10, 10)), ref, 0, 1, False), 3)
    -0.07
    """
    quality = extrusion_score(measure.volume_mm3, reference.volume_mm3) * measure.delivered_fraction
    quality *= math.exp(-bbox_error_mm(measure.bbox_mm, reference.bbox_mm) / DIMENSION_TOLERANCE_MM)
    slow = max(0.0, measure.time_s / reference.time_s - 1.0) if reference.time_s > 0 else 0.0
    return (quality - DEFECT_PENALTY * defects - REFUSED_PENALTY * refused - TIME_WEIGHT * slow
            - (FATAL_PENALTY if fatal else 0.0))


@lru_cache(maxsize=16)
def printer(name: str) -> PrinterProfile:
    """A printer profile by name or path, loaded once (profiles are immutable)."""
    return load_printer(name)


@lru_cache(maxsize=256)
def sliced(job_json: str) -> SlicedJob:
    """The reference program of a job (sliced once per job; treat as read-only)."""
    return slice_job(PrintJob.from_json(job_json))


@lru_cache(maxsize=256)
def reference_layers(job_json: str, resolution_mm: float = RESOLUTION_MM) -> tuple[LayerMeasure, ...]:
    """What the reference program measures, layer by layer, on the nominal printer (cached per job)."""
    job = PrintJob.from_json(job_json)
    program = sliced(job_json)
    sim = Simulator(printer(job.printer), job.material, SimOptions(resolution_mm=resolution_mm))
    sim.run(program.start if job.start_end else program.setup)
    out = []
    for text in program.layers:
        first, t0 = len(sim.executed), sim.time_s
        sim.run(text)
        out.append(measure_runs(sim, first, t0))
    if sim.fatal is not None:
        raise RuntimeError(f"the reference program of {job.job_id} fails: {sim.fatal.message} "
                           f"(line {sim.fatal.line})")
    return tuple(out)


# -- hidden physics ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HiddenPhysics:
    """The hidden parameters of one episode (see :class:`envs.wrappers.SupervisorPhysicsRanges`)."""

    filament_diameter_factor: float = 1.0
    melt_capacity_factor: float = 1.0
    thermistor_offset_c: float = 0.0
    bed_adhesion_gap_factor: float = 1.0
    fan_efficacy: float = 1.0
    clog_layer: int = -1
    """Layer before which a partial clog starts (-1: none)."""
    clog_flow_fraction: float = 1.0

    @staticmethod
    def draw(rng: np.random.Generator, ranges: SupervisorPhysicsRanges, layer_count: int) -> HiddenPhysics:
        """Draw every parameter (always the same number of draws, so streams stay aligned)."""
        values = {name: uniform(rng, getattr(ranges, name)) for name in (
            "filament_diameter_factor", "melt_capacity_factor", "thermistor_offset_c",
            "bed_adhesion_gap_factor", "fan_efficacy", "clog_flow_fraction")}
        clogged = rng.random() < ranges.clog_probability
        layer = int(rng.integers(1, max(layer_count, 2)))
        return HiddenPhysics(**values, clog_layer=layer if clogged and layer_count > 1 else -1)


# -- the environments --------------------------------------------------------------------------------------
class PrintSupervisorEnv(gym.Env):
    """Supervise a print between layers: read the telemetry, send tuning commands, against hidden faults.

    ## Description
    An episode is one :class:`~envs.jobs.PrintJob` printed by the reference program (:mod:`envs.slicer`)
    on one persistent simulated printer whose physics are drawn at random per episode and hidden from the
    agent (ranges in ``configs/randomization.yaml``, section ``supervisor``): the true filament diameter
    (the delivered material scales with its square), the hotend's melt capacity, the thermistor's offset
    (the melt sees the true temperature, the telemetry the reading), the bed adhesion (a first layer
    printed higher than the adhering gap does not stick), the part fan's efficacy, and, in some episodes,
    a partial clog starting before a random layer after the first, after which the hotend melts only part
    of the job's peak printing flow at the job's temperature. Each step is one layer: the env runs the
    agent's accepted tuning commands, then the reference program's next layer. An accepted ``M106``/``M107``
    replaces the reference program's fan commands from then on. Pressure advance is accepted and reported
    but the simulator does not model it (as in Klipper, it does not change print time).

    ## Action space
    ``spaces.Text(2000)`` over printable ASCII: tuning commands, one per line, or nothing. Accepted
    commands and their live-tuning windows (module constants): ``M221 S80..120`` (flow %), ``M220 S50..150``
    (speed %), ``M104 S`` within ±15 °C of the job's temperature and at most the printer's ``max_temp``,
    ``M106 S0..255``, ``M107``, ``SET_PRESSURE_ADVANCE ADVANCE=0..0.2``; at most 8 per step, no other
    parameters. Any other line (motion, homing, ``M109``, a value outside its window) is refused: not
    sent, counted and penalised. Blank and comment lines are ignored.

    ## Observation space
    ``spaces.Dict``:
    * ``prompt`` — ``spaces.Text(4000)``: the telemetry as text (numbers, warnings with line numbers,
      refused commands and why) and the allowed commands with their windows.
    * ``telemetry`` — ``spaces.Box(18,)`` (:data:`TELEMETRY_FIELDS`): layers done / layer count, layer
      count, hotend reading − target (°C), hotend target − job temperature (°C), bed reading − target
      (°C), then of the last layer: delivered / commanded flow, mean bead width / line width, mean bead
      height / layer height (the beads the simulator laid on its height map), delivered volume / the
      reference's, largest edge offset of the layer's outer extent from the reference's (mm; a layer
      shift shows here), peak commanded flow (mm³/s), defects;
      then the fan duty (0–1), flow factor, speed factor, pressure advance (s), refused commands of the
      last step, and the last layer's time / the reference's. Before the first layer the ratios read 1, the
      rest of the layer figures 0.

    ## Rewards
    Per layer (:func:`supervisor_reward`): ``quality − 1 per defect − 0.5 per refused command
    − 0.1·max(0, time / reference time − 1) − 5 if fatal``, where ``quality = extrusion · delivered ·
    dimension``: extrusion is :func:`envs.rewards.extrusion_score` of the delivered volume against the
    reference program's on the nominal printer, delivered is the delivered fraction of the commanded
    filament, and dimension is ``exp(−edge error / 1 mm)`` of the layer's outer extent against the
    reference's. Defects are the simulator's non-fatal failures of the layer (under-extrusion, a first layer
    that does not stick, unsupported or uncooled overhangs, collisions). Attainable: 1 per layer. Doing
    nothing loses to a good supervisor when the physics are off: a thicker filament over-extrudes unless
    ``M221`` compensates; a clog under-extrudes unless the speed drops or the temperature rises.

    ## Starting state
    A job from ``job``, from the ``suite`` (in order, cycling, or by ``options={"job_index": i}``), or
    sampled at ``difficulty`` (default: 2, 3 or 4 at random) from the env's seeded generator; a fresh
    printer with the episode's hidden physics, after the job's start sequence (with its prime line) or,
    for jobs without one, a silent heat-and-home. ``options={"hidden": HiddenPhysics(...)}`` fixes the
    hidden physics (tests, evaluation).

    ## Episode end
    Terminated after the last layer (the job's end sequence then runs) or on a fatal failure (a heater
    fault, a Klipper error). Truncated by the ``TimeLimit`` set at registration (200 steps).

    ## Arguments
    ``job`` (PrintJob or JSON dict), ``suite`` (held-out suite name), ``difficulty`` (2–4, default random),
    ``randomization`` (a :class:`~envs.wrappers.RandomizationConfig` or YAML path; default
    ``configs/randomization.yaml``), ``resolution_mm`` (height-map cell, default 0.2), ``render_mode``
    (``"rgb_array"``).

    ## Version history
    * v0: first version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}
    telemetry_kinds = tuple(f[1] for f in TELEMETRY_FIELDS)

    def __init__(self, job: PrintJob | dict | None = None, suite: str | None = None, difficulty: int | None = None,
                 randomization: RandomizationConfig | str | Path | None = None,
                 resolution_mm: float = RESOLUTION_MM, render_mode: str | None = None) -> None:
        if difficulty is not None and difficulty not in range(5):
            raise ValueError(f"difficulty {difficulty}: out of range, allowed 0..4")
        self.jobs = JobSource(job, suite, difficulty, DIFFICULTIES)
        self.ranges = load_randomization(randomization).supervisor
        self.resolution_mm = resolution_mm
        self.render_mode = render_mode
        self.observation_space = spaces.Dict({
            "prompt": spaces.Text(MAX_PROMPT_CHARS, min_length=0, charset=TEXT_CHARSET),
            "telemetry": spaces.Box(TELEMETRY_LOW, TELEMETRY_HIGH, dtype=np.float32),
        })
        self.action_space = spaces.Text(MAX_ACTION_CHARS, min_length=0, charset=TEXT_CHARSET)
        self.job: PrintJob | None = None
        self.sim: Simulator | None = None
        self.sliced: SlicedJob | None = None
        self.reference: tuple[LayerMeasure, ...] = ()
        self.peak_flow_mm3_s = 0.0
        """The reference program's peak flow (what a clog is measured against)."""
        self.hidden = HiddenPhysics()
        self._reset_episode_state()

    def _reset_episode_state(self) -> None:
        self.layer = 0
        self.fan_pwm: int | None = None
        self.pressure_advance_s = 0.0
        self.shift_mm = (0.0, 0.0)
        self.last: LayerMeasure | None = None
        self.last_defects = 0
        self.warnings: list[str] = []
        self.refused: list[str] = []
        self.clogged = False

    # -- episode -------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        options = options or {}
        self.job = self.jobs.next(self.np_random, options)
        self.sliced = sliced(self.job.to_json())
        self.reference = reference_layers(self.job.to_json(), self.resolution_mm)
        self.peak_flow_mm3_s = max(m.peak_flow_mm3_s for m in self.reference)
        hidden = options.get("hidden")
        if hidden is None:
            hidden = HiddenPhysics.draw(self.np_random, self.ranges, self.job.layer_count)
        self.hidden = HiddenPhysics(**hidden) if isinstance(hidden, dict) else hidden
        self.sim = self._new_simulator()
        self.sim.run(self.sliced.start if self.job.start_end else self.sliced.setup)
        self._reset_episode_state()
        return self._observation(), {"job_id": self.job.job_id, "layers": self.job.layer_count}

    def _new_simulator(self) -> Simulator:
        assert self.job is not None
        h = self.hidden
        profile = printer(self.job.printer)
        options = SimOptions(resolution_mm=self.resolution_mm,
                             first_layer_max_gap_mm=max(0.01, h.bed_adhesion_gap_factor * profile.nozzle_diameter_mm))
        sim = Simulator(profile, self.job.material, options)
        sim.extrusion_scale = h.filament_diameter_factor ** 2
        sim.hotend_offset_c = h.thermistor_offset_c
        scale_melt_capacity(sim, h.melt_capacity_factor)
        replace_profile(sim, part_fan_max_rpm_fraction=h.fan_efficacy)
        return sim

    def step(self, action: str) -> tuple[dict, float, bool, bool, dict]:
        assert self.job is not None and self.sim is not None and self.sliced is not None, "call reset() first"
        if self.layer >= self.job.layer_count or self.sim.fatal is not None:
            raise RuntimeError("episode is over; call reset()")
        sim, job, k = self.sim, self.job, self.layer
        tuning = check_tuning(str(action), job.process.hotend_temp_c, sim.profile)
        if self.hidden.clog_layer == k and not self.clogged:
            clog(sim, self.peak_flow_mm3_s, self.hidden.clog_flow_fraction, job.process.hotend_temp_c)
            self.clogged = True
        self._remember(tuning.accepted)
        first_run, first_failure, t0 = len(sim.executed), len(sim.failures), sim.time_s
        commands = "".join(line + "\n" for line in tuning.accepted)
        report = sim.run(commands + self.layer_text(k))
        measure = measure_runs(sim, first_run, t0)
        defects, fatal = defect_count(report, first_failure)
        reward = supervisor_reward(measure, self.reference[k], defects, len(tuning.refused), fatal)
        self.last, self.last_defects, self.refused = measure, defects, tuning.refused
        self.warnings = [f"line {f.line}: {f.mode}: {f.message}" for f in report.failures[first_failure:]]
        self.layer += 1
        terminated = fatal or self.layer >= job.layer_count
        if self.layer >= job.layer_count and job.start_end and not fatal:
            sim.run(self.sliced.end)
        info: dict[str, Any] = {"layer": k, "accepted": tuning.accepted, "refused": tuning.refused,
                                "defects": defects, "fatal": fatal,
                                "failures": [f.mode for f in report.failures[first_failure:]]}
        if terminated:
            info["hidden"] = asdict(self.hidden)
            info["success"] = not fatal and self.layer >= job.layer_count
        return self._observation(), float(reward), bool(terminated), False, info

    def _remember(self, accepted: list[str]) -> None:
        """Track the settings the simulator does not keep (fan override, pressure advance)."""
        for line in accepted:
            code, _, rest = line.partition(" ")
            if code == "M106":
                self.fan_pwm = round(float(rest[1:]))
            elif code == "M107":
                self.fan_pwm = 0
            elif code == "SET_PRESSURE_ADVANCE":
                self.pressure_advance_s = float(rest.split("=", 1)[1])

    def layer_text(self, layer: int) -> str:
        """The reference program's layer as it will run: the supervisor's fan setting, any layer shift."""
        assert self.sliced is not None
        text = self.sliced.layers[layer]
        if self.fan_pwm is not None:
            text = override_fan(text, self.fan_pwm)
        if self.shift_mm != (0.0, 0.0):
            text = shift_xy(text, *self.shift_mm)
        return text

    def shift_layers(self, dx_mm: float, dy_mm: float) -> None:
        """A layer shift (a fault, see :class:`envs.wrappers.RareFaults`): later layers print offset."""
        self.shift_mm = (self.shift_mm[0] + dx_mm, self.shift_mm[1] + dy_mm)

    # -- observation ---------------------------------------------------------------------------------------
    def settings(self) -> dict[str, float]:
        """The tuning settings in force: flow and speed (%), hotend target (°C), fan (PWM), pressure advance."""
        assert self.sim is not None
        st = self.sim.state
        return {"flow_percent": 100.0 * st.extrude_factor, "speed_percent": 100.0 * st.speed_factor,
                "hotend_target_c": float(st.hotend_target_c), "fan_pwm": FAN_PWM_MAX * st.fan,
                "pressure_advance_s": self.pressure_advance_s}

    def telemetry(self) -> np.ndarray:
        """The telemetry vector (:data:`TELEMETRY_FIELDS`)."""
        assert self.job is not None and self.sim is not None
        job, p = self.job, self.job.process
        state = self.sim.report().final_state
        k = self.layer - 1
        n = job.layer_count
        ratios = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
        if self.last is not None and k >= 0:
            m, ref = self.last, self.reference[k]
            nominal_h = p.first_layer_height_mm if k == 0 else p.layer_height_mm
            ratios = [m.delivered_fraction, m.width_mm / p.line_width_mm, m.height_mm / nominal_h,
                      m.volume_mm3 / ref.volume_mm3 if ref.volume_mm3 > 0 else 1.0,
                      bbox_error_mm(m.bbox_mm, ref.bbox_mm), m.peak_flow_mm3_s,
                      m.time_s / ref.time_s if ref.time_s > 0 else 1.0]
        s = self.settings()
        vec = np.array([
            self.layer / n, n, state["hotend_c"] - state["hotend_target_c"],
            state["hotend_target_c"] - p.hotend_temp_c, state["bed_c"] - state["bed_target_c"], *ratios[:6],
            self.last_defects, s["fan_pwm"] / FAN_PWM_MAX, s["flow_percent"] / 100.0, s["speed_percent"] / 100.0,
            s["pressure_advance_s"], len(self.refused), ratios[6]], dtype=np.float64)
        return np.clip(np.nan_to_num(vec), TELEMETRY_LOW, TELEMETRY_HIGH).astype(np.float32)

    def render_prompt(self, telemetry: np.ndarray) -> str:
        """The telemetry as text for a language model (printable ASCII)."""
        assert self.job is not None
        job, p = self.job, self.job.process
        t = dict(zip(TELEMETRY_NAMES, (float(v) for v in telemetry), strict=True))
        n = job.layer_count
        done = round(t["layers_done_fraction"] * n)
        target = p.hotend_temp_c + t["hotend_target_offset_c"]
        hi = min(p.hotend_temp_c + HOTEND_TUNE_DELTA_C, printer(job.printer).hotend.max_temp_c)
        lines = [
            f"You supervise a print of job {job.job_id} ({job.part.kind}, {job.material} on {job.printer}): "
            f"{done} of {n} layers printed.",
            f"Hotend {target + t['hotend_error_c']:.1f} C (target {target:.0f}, job {p.hotend_temp_c:.0f}); "
            f"bed error {t['bed_error_c']:+.1f} C.",
        ]
        if done:
            lines.append(
                f"Last layer: delivered {100 * t['delivered_fraction']:.0f}% of commanded flow, peak flow "
                f"{t['peak_flow_mm3_s']:.2f} mm3/s; bead width {t['width_ratio'] * p.line_width_mm:.3f} mm "
                f"(x{t['width_ratio']:.3f} nominal), height x{t['height_ratio']:.3f} nominal; volume "
                f"x{t['volume_ratio']:.3f} expected; outline off by {t['extent_error_mm']:.2f} mm; time "
                f"x{t['time_ratio']:.2f} expected; "
                f"{t['defects']:.0f} defects.")
        lines.append(f"Settings: flow {100 * t['flow_factor']:.0f}%, speed {100 * t['speed_factor']:.0f}%, fan "
                     f"{FAN_PWM_MAX * t['fan']:.0f}/255, pressure advance {t['pressure_advance_s']:.3f} s.")
        lines += [f"Warning: {w}" for w in self.warnings[:5]]
        lines += [f"Refused: {r}" for r in self.refused[:5]]
        lines.append(
            f"Reply with tuning commands for the next layer, one per line, or nothing: "
            f"M221 S{FLOW_PERCENT_MIN:g}-{FLOW_PERCENT_MAX:g} (flow %), M220 S{SPEED_PERCENT_MIN:g}-"
            f"{SPEED_PERCENT_MAX:g} (speed %), M104 S{p.hotend_temp_c - HOTEND_TUNE_DELTA_C:g}-{hi:g}, "
            f"M106 S0-255, SET_PRESSURE_ADVANCE ADVANCE=0-{PRESSURE_ADVANCE_MAX_S:g}.")
        text = "\n".join(lines)
        text = "".join(c if c in TEXT_CHARSET else "?" for c in text)
        return text[:MAX_PROMPT_CHARS]

    def _observation(self) -> dict:
        telemetry = self.telemetry()
        return {"prompt": self.render_prompt(telemetry), "telemetry": telemetry}

    def attainable_reward(self) -> float:
        """The return of a perfect episode (1 per layer)."""
        assert self.job is not None, "call reset() first"
        return float(self.job.layer_count)

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array" or self.sim is None:
            return None
        from sim_bridge.plots import render_rgb

        return render_rgb(self.sim, 192)


class PrintSupervisorBoxEnv(PrintSupervisorEnv):
    """``PrintSupervisor-v0`` with a ``Box`` action and observation, for numeric policies (SB3).

    ## Description
    The same dynamics: each action is converted to the text commands it stands for
    (:func:`box_to_tuning`; only changed settings are sent) and run exactly as in ``PrintSupervisor-v0``.
    The zero action reproduces the reference program (doing nothing).

    ## Action space
    ``spaces.Box(-1, 1, (5,))``: flow ``100 + 20·a0`` % (80–120), speed ``100 + 50·a1`` % (50–150), hotend
    target ``job + 15·a2`` °C (capped at the printer's ``max_temp``), fan ``clip(reference fan + a3, 0, 1)``
    (the reference fan is 0 on the first layer and the job's fan after), pressure advance ``0.05·(a4 + 1)``
    s (0–0.1). Every value lies inside the live-tuning windows, so nothing is refused.

    ## Observation space
    ``spaces.Box(18,)``: the ``telemetry`` of ``PrintSupervisor-v0``.

    ## Rewards, starting state, episode end, arguments
    As ``PrintSupervisor-v0``.

    ## Version history
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

