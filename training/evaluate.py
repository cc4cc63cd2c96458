"""Evaluate a policy (a language model, or any function from prompts to G-code) on a held-out suite.

Metrics (namespaced ``eval/`` in the logs), over ``episodes`` episodes of ``GcodeWriter-v0``:

* ``success_rate`` — episodes that completed every step without failure and with geometry ≥ 0.9;
* ``mean_reward`` — mean episode reward (attainable: 1 per step);
* ``valid_gcode_rate`` — completions whose every line reads as G-code (no reader error or warning) and
  whose every command a program may contain on any printer (the command table, as the validator reads it:
  no unknown, unchecked or forbidden command);
* ``safety_violations_per_1k_lines`` — lines that stop a real printer or that no program may send
  (Klipper errors, cold extrusion, heater faults, forbidden commands such as ``M302`` or ``SAVE_CONFIG``),
  per 1,000 generated lines;
* ``episodes``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from envs.gcode_writer import GcodeWriterEnv
from envs.jobs import PrintJob
from envs.sampler import load_suite
from sim_bridge.commands import deployable, forbidden_reason
from sim_bridge.gcode import Command, GcodeError, GcodeReader

Policy = Callable[[Sequence[Any]], list[str]]
"""A batch of prompts in, one G-code completion per prompt out (a prompt is a task text or, for revisions,
a conversation: a list of ``{"role", "content"}`` turns ending with the user's)."""


@dataclass
class EvalResult:
    """The metrics of one evaluation."""

    success_rate: float
    mean_reward: float
    valid_gcode_rate: float
    safety_violations_per_1k_lines: float
    episodes: int
    mean_geometry: float = 0.0

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in self.__dict__.items()}


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
    known = _known_commands(commands)
    return bool(commands) and known and not reader.warnings, lines, forbidden


def _known_commands(commands: list[Command]) -> bool:
    return all(not cmd.code or deployable(cmd.code) for cmd in commands)


def evaluate(policy: Policy, suite: str | Sequence[PrintJob] = "tiny-v0", episodes: int = 64,
             batch_size: int = 16, revisions: int = 0, revise: str = "failures") -> EvalResult:
    """Run ``episodes`` episodes (cycling through the suite's jobs) with ``policy``, steps batched across
    episodes, and return the metrics.

    With ``revisions`` > 0 (multi-turn mode) each answer is first tried on a copy of the episode's printer;
    when it needs revising (``revise``: ``"failures"`` — the trial reported a failure — or ``"always"``),
    the simulator's feedback is appended to the conversation and the policy answers again, up to that many
    times, and only the last answer is committed to the episode (and counted in the metrics). The policy then
    receives conversations (lists of chat turns) for the revisions.
    """
    jobs = load_suite(suite) if isinstance(suite, str) else list(suite)
    envs = [GcodeWriterEnv(job=jobs[i % len(jobs)]) for i in range(episodes)]
    observations = [env.reset(seed=i)[0] for i, env in enumerate(envs)]
    rewards = [0.0] * episodes
    geometry: list[float] = []
    done = [False] * episodes
    successes = [False] * episodes
    completions = valid = lines = violations = 0
    while not all(done):
        active = [i for i in range(episodes) if not done[i]]
        for start in range(0, len(active), batch_size):
            chunk = active[start:start + batch_size]
            texts = policy([observations[i]["prompt"] for i in chunk])
            if revisions:
                texts = revise_answers(policy, [envs[i] for i in chunk], [observations[i]["prompt"] for i in chunk],
                                       texts, revisions, revise)
            for i, text in zip(chunk, texts, strict=True):
                ok, n_lines, forbidden = gcode_validity(text)
                completions += 1
                valid += ok
                lines += n_lines
                violations += forbidden
                obs, reward, terminated, truncated, info = envs[i].step(text)
                observations[i] = obs
                rewards[i] += reward
                geometry.append(info["geometry"])
                violations += 1 if info["fatal"] else 0
                if terminated or truncated:
                    done[i] = True
                    successes[i] = bool(info.get("success"))
    return EvalResult(
        success_rate=sum(successes) / episodes, mean_reward=sum(rewards) / episodes,
        valid_gcode_rate=valid / max(completions, 1),
        safety_violations_per_1k_lines=1000.0 * violations / max(lines, 1), episodes=episodes,
        mean_geometry=sum(geometry) / max(len(geometry), 1))


def revise_answers(policy: Policy, envs: list[GcodeWriterEnv], prompts: list[str], texts: list[str],
                   revisions: int, revise: str = "failures") -> list[str]:
    """The answers after up to ``revisions`` rounds of feedback: each answer is tried on a copy of its
    episode and, when it needs it (:func:`training.grpo.needs_revision`), sent back with the simulator's
    feedback in the conversation. The episodes themselves are not advanced."""
    from training.grpo import conversation, needs_revision

    answers = [[t] for t in texts]
    feedbacks: list[list[str]] = [[] for _ in texts]
    for _ in range(revisions):
        pending = []
        for i, env in enumerate(envs):
            trial = copy.deepcopy(env)
            _, _, _, _, info = trial.step(answers[i][-1])
            if needs_revision(revise, info["fatal"], info["defects"]):
                feedbacks[i].append(trial.feedback)
                pending.append(i)
        if not pending:
            break
        chats = [conversation(prompts[i], answers[i], feedbacks[i]) for i in pending]
        for i, text in zip(pending, policy(chats), strict=True):
            answers[i].append(text)
    return [a[-1] for a in answers]


def expert_policy(suite: str | Sequence[PrintJob] = "tiny-v0") -> Policy:
    """The reference program as a policy (an upper bound for the metrics), matched by prompt."""
    from envs.scoring import episode_steps
    from envs.slicer import slice_job

    jobs = load_suite(suite) if isinstance(suite, str) else list(suite)
    answers: dict[str, str] = {}
    for job in jobs:
        env = GcodeWriterEnv(job=job)
        obs, _ = env.reset(seed=0)
        sliced = slice_job(job)
        for kind, k in episode_steps(job):
            text = sliced.start if kind == "start" else sliced.end if kind == "end" else sliced.layers[k]
            answers[obs["prompt"]] = text
            obs, *_ = env.step(text)
    # A revision request is answered with the same reference layer as its task.
    return lambda prompts: [answers.get(p if isinstance(p, str) else p[0]["content"], "") for p in prompts]
