"""``PrintSupervisor-v1`` as a training task of the closed loop (``task: PrintSupervisor-v1``).

The model reads a print's telemetry between layers (``PrintSupervisorEnv``'s text observation) and answers
with live-tuning commands. It is trained the same way as the writer:

* **data** — episodes on randomised printers (hidden filament diameter, melt capacity, thermistor offset,
  adhesion, fan, clogs: ``configs/randomization.yaml``), supervised by the rule supervisor
  (:func:`agent.baselines.expert_tuning`), which sees only the telemetry; every step is a row: the prompt,
  the rule's commands, and what it takes to put a fresh environment back in that state (job, hidden
  physics, the commands sent before: :func:`restore_state`);
* **SFT** on those rows, then **GRPO** with :class:`training.rewards.SupervisorReward`: each sampled answer
  is sent to a copy of the environment in the row's state, and its reward is the environment's reward for
  that layer (quality, defects, refused commands, time);
* **evaluation** (:func:`evaluate_supervisor`) on seeded episodes the training never saw.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from agent.baselines import rule_supervisor_action
from agent.policy import Policy
from envs.jobs import PrintJob
from envs.supervisor import PrintSupervisorEnv
from training.writer_eval import gcode_validity

EVAL_SEED_OFFSET = 1_000_003
"""Evaluation episodes are seeded apart from the training episodes."""
SUCCESS_MEAN_REWARD = 0.8
"""An evaluation episode succeeds when it completes without a fatal failure or a refused command and its
mean reward per layer reaches this."""


@dataclass
class SupervisorEvalResult:
    """The metrics of one evaluation of a supervisor (``PrintSupervisor-v1``)."""

    success_rate: float
    """Episodes completed without a fatal failure or a refused command, with mean reward per layer ≥ 0.8."""
    mean_reward: float
    """Mean reward per layer (attainable 1)."""
    valid_gcode_rate: float
    """Answers with no refused line (saying nothing is valid)."""
    safety_violations_per_1k_lines: float
    """Refused lines (what the live-tuning gate would block) and fatal failures per 1,000 answer lines."""
    episodes: int
    rule_mean_reward: float
    """The rule supervisor's mean reward per layer on the same episodes: the bar to reach."""

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in dataclasses.asdict(self).items()}


def _env(difficulties: Sequence[int]) -> PrintSupervisorEnv:
    return PrintSupervisorEnv(difficulty=None if len(difficulties) != 1 else difficulties[0])


def _reset(env: PrintSupervisorEnv, seed: int, difficulties: Sequence[int]) -> tuple[dict, dict]:
    # With several difficulties, the episode's difficulty is drawn from its seed.
    options = {"difficulty": int(difficulties[seed % len(difficulties)])} if len(difficulties) > 1 else None
    return env.reset(seed=seed, options=options)


def supervisor_rows(episodes: int, seed: int, difficulties: Sequence[int]) -> list[dict[str, Any]]:
    """One row per layer of ``episodes`` rule-supervised episodes: ``prompt``, ``completion`` (the rule's
    commands), and ``job``, ``hidden``, ``history`` (JSON) to restore the state for rewards."""
    rows = []
    env = _env(difficulties)
    for e in range(episodes):
        obs, _ = _reset(env, seed + e, difficulties)
        job_json, hidden = env.job.to_json(), json.dumps(asdict(env.hidden))
        history: list[str] = []
        done = False
        while not done:
            action = rule_supervisor_action(env)
            rows.append({"prompt": obs["prompt"], "completion": action, "job": job_json, "hidden": hidden,
                         "history": json.dumps(history), "step_kind": "tuning"})
            obs, _, terminated, truncated, _ = env.step(action)
            history.append(action)
            done = terminated or truncated
    return rows


def restore_state(job_json: str, hidden_json: str, history_json: str) -> PrintSupervisorEnv:
    """A fresh environment in the state of a dataset row: the job, its hidden physics, the commands sent
    before replayed."""
    env = PrintSupervisorEnv(job=PrintJob.from_json(job_json))
    env.reset(seed=0, options={"hidden": json.loads(hidden_json)})
    for action in json.loads(history_json):
        env.step(action)
    return env


def evaluate_supervisor(policy: Policy | None, episodes: int, seed: int = 0, difficulties: Sequence[int] = (2,),
                        batch_size: int = 16, env_policy: Callable[[PrintSupervisorEnv], str] | None = None
                        ) -> SupervisorEvalResult:
    """``episodes`` seeded episodes (apart from the training seeds) supervised by ``policy``, and the rule
    supervisor's mean reward on the same episodes (see :class:`SupervisorEvalResult`).

    ``env_policy`` replaces ``policy`` for supervisors that read the environment rather than the prompt (the
    rule, an SB3 model through :func:`agent.baselines.sb3_tuning`): it answers for one environment."""
    if (policy is None) == (env_policy is None):
        raise ValueError("give exactly one of policy and env_policy")
    envs = [_env(difficulties) for _ in range(episodes)]
    obs = [_reset(env, EVAL_SEED_OFFSET + seed + i, difficulties)[0] for i, env in enumerate(envs)]
    rule = [copy.deepcopy(env) for env in envs]
    returns, layers, refused_any = [0.0] * episodes, [0] * episodes, [False] * episodes
    done, success = [False] * episodes, [False] * episodes
    answers = valid = lines = violations = 0
    while not all(done):
        active = [i for i in range(episodes) if not done[i]]
        for start in range(0, len(active), batch_size):
            chunk = active[start:start + batch_size]
            texts = [env_policy(envs[i]) for i in chunk] if env_policy is not None else \
                policy([obs[i]["prompt"] for i in chunk])  # type: ignore[misc]
            for i, text in zip(chunk, texts, strict=True):
                obs[i], reward, terminated, truncated, info = envs[i].step(text)
                # Saying nothing (blank or comment lines only) is a valid answer for a supervisor.
                silent = all(not line.split(";")[0].strip() for line in text.splitlines())
                ok, n_lines, forbidden = (True, 0, 0) if silent else gcode_validity(text)
                answers += 1
                valid += ok and not info["refused"]
                lines += n_lines
                violations += forbidden + len(info["refused"]) + (1 if info["fatal"] else 0)
                returns[i] += reward
                layers[i] += 1
                refused_any[i] |= bool(info["refused"])
                if terminated or truncated:
                    done[i] = True
                    success[i] = (bool(info.get("success")) and not refused_any[i]
                                  and returns[i] / layers[i] >= SUCCESS_MEAN_REWARD)
    return SupervisorEvalResult(
        success_rate=sum(success) / episodes,
        mean_reward=float(np.mean([r / n for r, n in zip(returns, layers, strict=True)])),
        valid_gcode_rate=valid / max(answers, 1), safety_violations_per_1k_lines=1000.0 * violations / max(lines, 1),
        episodes=episodes, rule_mean_reward=float(np.mean([_rule_return(env) for env in rule])))


def _rule_return(env: PrintSupervisorEnv) -> float:
    """The rule supervisor's mean reward per layer over the rest of ``env``'s episode."""
    total, n, done = 0.0, 0, False
    while not done:
        _, reward, terminated, truncated, _ = env.step(rule_supervisor_action(env))
        total, n, done = total + reward, n + 1, terminated or truncated
    return total / n
