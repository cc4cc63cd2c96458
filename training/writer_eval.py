"""Evaluate a policy (a language model, or any function from prompts to G-code) on a held-out suite.

Metrics (namespaced ``eval/`` in the logs), over ``episodes`` episodes of ``GcodeWriter-v1``:

* ``success_rate`` — episodes that completed every step without failure and with geometry ≥ 0.9;
* ``mean_reward`` — mean episode reward (attainable: 1 per step);
* ``valid_gcode_rate`` — completions whose every line reads as G-code (no reader error or warning) and
  whose every command a program may contain on any printer (the command table, as the validator reads it:
  no unknown, unchecked or forbidden command);
* ``safety_violations_per_1k_lines`` — lines that stop a real printer or that no program may send
  (Klipper errors, cold extrusion, heater faults, forbidden commands such as ``M302`` or ``SAVE_CONFIG``),
  per 1,000 generated lines (logged as ``safety/violations_per_1k_lines``);
* ``episodes``;
* ``mean_geometry`` — mean geometry score of the steps;
* ``vertex_error_mm`` — what limits geometry: for each point of a layer's planned toolpath, the distance to
  the nearest point the answer moved the nozzle to, averaged (0 when every planned point was reached);
* ``closed_loop_rate`` — layer answers whose every planned closed path was closed: the answer extruded to
  the path's start point again, within 0.05 mm.

``python -m training.evaluate`` evaluates any policies on a suite side by side with these episodes and
writes a report with confidence intervals. The policies themselves live in :mod:`agent`; the supervisor task has its own evaluation
(:func:`training.supervise.evaluate_supervisor`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.llm import revise_answers
from agent.policy import Policy
from envs.gcode_writer import GcodeWriterEnv
from envs.jobs import PrintJob
from envs.sampler import load_suite
from envs.slicer import Toolpath, cached_slice
from envs.wrappers import DomainRandomization
from sim_bridge.commands import deployable, forbidden_reason
from sim_bridge.gcode import Command, GcodeError, GcodeReader, parse_line

SAFETY_KEY = "safety_violations_per_1k_lines"
"""The one metric logged under ``safety/`` (as ``safety/violations_per_1k_lines``) instead of ``eval/``."""


@dataclass
class EvalResult:
    """The metrics of one evaluation of the writer (``GcodeWriter-v1``)."""

    success_rate: float
    mean_reward: float
    valid_gcode_rate: float
    safety_violations_per_1k_lines: float
    episodes: int
    mean_geometry: float = 0.0
    """Mean geometry score of the episodes' steps."""
    vertex_error_mm: float = 0.0
    """Mean distance from each planned toolpath point to the nearest point the answer moved to."""
    closed_loop_rate: float = 0.0
    """Layer answers that closed every closed path of the plan (extruded back to its start)."""
    per_episode: list[EpisodeRecord] = dataclasses.field(default_factory=list, repr=False, compare=False)
    """What each episode did (for confidence intervals and reports); not a logged metric."""

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in scalar_fields(self).items()}


@dataclass
class EpisodeRecord:
    """One evaluation episode of the writer."""

    job_id: str
    part_kind: str
    reward: float
    success: bool
    geometry: float
    """Mean geometry score of its steps."""
    valid: bool
    """Every answer read as G-code with known commands only."""
    lines: int
    violations: int
    print_time_s: float
    filament_mm: float
    size_error_mm: tuple[float, float]
    """|Extruded extent minus planned extent|, X and Y (mm), averaged over the layer answers; nan without
    extrusion."""
    answers: list[str]
    size_error_z_mm: float = math.nan
    """Height of the highest extruding move minus the job's top layer height (mm): positive when the part
    came out taller; nan without extrusion (records written before it existed read as nan too)."""


def scalar_fields(result: Any) -> dict[str, float]:
    """A result dataclass's number fields (lists such as ``per_episode`` left out)."""
    return {k: v for k, v in dataclasses.asdict(result).items() if isinstance(v, (int, float))}


def eval_metrics(result: Any) -> dict[str, float]:
    """An evaluation result (a dataclass of metrics) as namespaced log metrics: ``eval/<name>``, and the
    safety metric as ``safety/violations_per_1k_lines``."""
    return {("safety/violations_per_1k_lines" if k == SAFETY_KEY else f"eval/{k}"): float(v)
            for k, v in scalar_fields(result).items()}


def gcode_validity(text: str) -> tuple[bool, int, int]:
    """(valid, lines, forbidden commands) of one completion: valid when it reads as G-code and every command
    is one a program may contain on any printer (the command table's :func:`~sim_bridge.commands.deployable`,
    the same list the validator allows by default)."""
    reader = GcodeReader(text, name="completion")
    forbidden = 0
    try:
        commands = list(reader)
    except GcodeError:
        return False, max(1, text.count("\n")), 0
    for cmd in commands:
        if forbidden_reason(cmd.code) is not None:
            forbidden += 1
    lines = sum(1 for line in text.splitlines() if line.strip())
    return bool(commands) and _known_commands(commands) and not reader.warnings, lines, forbidden


CLOSED_TOLERANCE_MM = 0.05


def toolpath_match(text: str, paths: Sequence[Toolpath]) -> tuple[float, bool]:
    """``(mean vertex error in mm, every closed path closed)`` of an answer against a layer's plan: the error
    of each planned point is its distance to the nearest XY the answer moved to (travel or extrusion); a
    closed path (it ends where it starts) is closed when the answer extruded to its start point."""
    moves = xy_moves(text)
    reached = [(m[2], m[3]) for m in moves]
    extruded = [(m[2], m[3]) for m in moves if m[4]]
    planned = [(float(p.start[0]), float(p.start[1])) for p in paths]
    planned += [(float(mx), float(my)) for p in paths for mx, my, _ in p.moves]
    if not planned:
        return 0.0, True
    points = np.asarray(reached) if reached else np.full((1, 2), np.inf)
    errors = [float(np.min(np.hypot(points[:, 0] - px, points[:, 1] - py))) for px, py in planned]
    ends = np.asarray(extruded) if extruded else np.full((1, 2), np.inf)
    closed = all(float(np.min(np.hypot(ends[:, 0] - float(p.start[0]), ends[:, 1] - float(p.start[1]))))
                 <= CLOSED_TOLERANCE_MM for p in paths if p.moves and p.moves[-1][:2] == p.start)
    return float(np.mean(np.minimum(errors, 1000.0))), closed


def _known_commands(commands: list[Command]) -> bool:
    return all(not cmd.code or deployable(cmd.code) for cmd in commands)


def evaluate(policy: Policy, suite: str | Sequence[PrintJob] = "tiny-v0", episodes: int = 64,
             batch_size: int = 16, revisions: int = 0, revise: str = "failures",
             randomized: bool = False, toolpath: bool = True) -> EvalResult:
    """Run ``episodes`` episodes (cycling through the suite's jobs) with ``policy``, steps batched across
    episodes, and return the metrics.

    With ``randomized`` each episode runs on a printer perturbed within ``configs/randomization.yaml``'s
    ``printer`` ranges (:class:`envs.wrappers.DomainRandomization`, seeded by the episode index: the same
    printers for every policy) — the randomised held-out suite; the prompts are the nominal ones.
    ``toolpath`` False evaluates on ``GcodeWriter-v0``'s prompts (the outline, for models trained on v0).

    With ``revisions`` > 0 (multi-turn mode) each answer goes through :func:`agent.llm.revise_answers`
    (``revise``: ``"failures"`` or ``"always"``) and only the last answer is committed to the episode (and
    counted in the metrics). The policy then receives conversations (lists of chat turns) for the revisions.
    """
    jobs = load_suite(suite) if isinstance(suite, str) else list(suite)
    envs = [GcodeWriterEnv(job=jobs[i % len(jobs)], toolpath=toolpath) for i in range(episodes)]
    resets = [DomainRandomization(env) if randomized else env for env in envs]
    observations = [env.reset(seed=i)[0] for i, env in enumerate(resets)]
    rewards = [0.0] * episodes
    geometry: list[list[float]] = [[] for _ in range(episodes)]
    vertex_errors: list[float] = []
    closed_loops: list[bool] = []
    done = [False] * episodes
    successes = [False] * episodes
    valid_all = [True] * episodes
    ep_lines, ep_violations = [0] * episodes, [0] * episodes
    answers: list[list[str]] = [[] for _ in range(episodes)]
    size_errors: list[list[tuple[float, float]]] = [[] for _ in range(episodes)]
    completions = valid = 0
    while not all(done):
        active = [i for i in range(episodes) if not done[i]]
        for start in range(0, len(active), batch_size):
            chunk = active[start:start + batch_size]
            texts = policy([observations[i]["prompt"] for i in chunk])
            if revisions:
                texts = revise_answers(policy, [envs[i] for i in chunk], [observations[i]["prompt"] for i in chunk],
                                       texts, revisions, revise)
            for i, text in zip(chunk, texts, strict=True):
                kind, layer = envs[i].steps[envs[i].step_index]
                if kind == "layer":
                    paths = cached_slice(envs[i].job).layer_paths[layer]
                    error, closed = toolpath_match(text, paths)
                    vertex_errors.append(error)
                    closed_loops.append(closed)
                    size_errors[i].append(size_error(text, paths))
                ok, n_lines, forbidden = gcode_validity(text)
                completions += 1
                valid += ok
                valid_all[i] = valid_all[i] and ok
                ep_lines[i] += n_lines
                ep_violations[i] += forbidden
                answers[i].append(text)
                obs, reward, terminated, truncated, info = envs[i].step(text)
                observations[i] = obs
                rewards[i] += reward
                geometry[i].append(info["geometry"])
                ep_violations[i] += 1 if info["fatal"] else 0
                if terminated or truncated:
                    done[i] = True
                    successes[i] = bool(info.get("success"))
    records = []
    for i, env in enumerate(envs):
        report = env.sim.report()
        sizes = np.asarray(size_errors[i], dtype=float).reshape(-1, 2)
        records.append(EpisodeRecord(
            job_id=env.job.job_id, part_kind=env.job.part.kind, reward=rewards[i], success=successes[i],
            geometry=float(np.mean(geometry[i])), valid=valid_all[i], lines=ep_lines[i], violations=ep_violations[i],
            print_time_s=float(report.print_time_s), filament_mm=float(report.filament_mm),
            size_error_mm=(_nanmean(np.abs(sizes[:, 0])), _nanmean(np.abs(sizes[:, 1]))), answers=answers[i],
            size_error_z_mm=top_extruded_z("\n".join(answers[i])) - env.job.layer_zs()[-1]))
    lines, violations = sum(ep_lines), sum(ep_violations)
    steps = [g for gs in geometry for g in gs]
    return EvalResult(
        success_rate=sum(successes) / episodes, mean_reward=sum(rewards) / episodes,
        valid_gcode_rate=valid / max(completions, 1),
        safety_violations_per_1k_lines=1000.0 * violations / max(lines, 1), episodes=episodes,
        mean_geometry=sum(steps) / max(len(steps), 1),
        vertex_error_mm=float(np.mean(vertex_errors)) if vertex_errors else 0.0,
        closed_loop_rate=float(np.mean(closed_loops)) if closed_loops else 0.0, per_episode=records)


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def xy_moves(text: str) -> list[tuple[float, float, float, float, bool]]:
    """Each G0/G1 move of an answer that changes X or Y: ``(x0, y0, x1, y1, extruding)``, starting from 0, 0;
    a letter without a number leaves its axis where it was; unreadable lines are skipped."""
    x = y = 0.0
    out = []
    for raw in text.splitlines():
        try:
            cmd = parse_line(raw)
        except GcodeError:
            continue
        if cmd is None or cmd.code not in ("G0", "G1") or not ({"X", "Y"} & cmd.params.keys()):
            continue
        nx, ny = (v if (v := cmd.params.get(k, old)) == v else old for k, old in (("X", x), ("Y", y)))
        out.append((x, y, nx, ny, cmd.params.get("E", 0.0) > 0))
        x, y = nx, ny
    return out


def top_extruded_z(text: str) -> float:
    """The highest Z at which a G0/G1 move of ``text`` extruded while moving in X or Y (nan if none did):
    Z followed through ``G90``/``G91``, from 0; unreadable lines are skipped."""
    z, relative, top = 0.0, False, math.nan
    for raw in text.splitlines():
        try:
            cmd = parse_line(raw)
        except GcodeError:
            continue
        if cmd is None:
            continue
        if cmd.code in ("G90", "G91"):
            relative = cmd.code == "G91"
        elif cmd.code in ("G0", "G1"):
            dz = cmd.params.get("Z")
            if dz is not None and dz == dz:
                z = z + dz if relative else dz
            if cmd.params.get("E", 0.0) > 0 and {"X", "Y"} & cmd.params.keys():
                top = z if math.isnan(top) else max(top, z)
    return top


def size_error(text: str, paths: Sequence[Toolpath]) -> tuple[float, float]:
    """``(X, Y)`` extent of the answer's extruding moves minus the planned toolpath's extent (mm): how much
    larger (positive) or smaller the layer came out than planned; nan when the answer extruded nothing."""
    moves = [m for m in xy_moves(text) if m[4]]
    xs = [v for m in moves for v in (m[0], m[2])]
    ys = [v for m in moves for v in (m[1], m[3])]
    planned = [(float(p.start[0]), float(p.start[1])) for p in paths] + \
        [(float(mx), float(my)) for p in paths for mx, my, _ in p.moves]
    if not xs or not planned:
        return math.nan, math.nan
    px, py = zip(*planned, strict=True)
    return (max(xs) - min(xs)) - (max(px) - min(px)), (max(ys) - min(ys)) - (max(py) - min(py))

