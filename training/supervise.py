"""``PrintSupervisor-v1`` as a training task of the closed loop (``task: PrintSupervisor-v1``).

The model reads a print's telemetry between layers (``PrintSupervisorEnv``'s text observation) and answers
with live-tuning commands. It is trained the same way as the writer:

* **data** — episodes on randomised printers (hidden filament diameter, melt capacity, thermistor offset,
  adhesion, fan, clogs: ``configs/randomization.yaml``), supervised by :func:`expert_tuning`, a rule that
  sees only the telemetry; every step is a row: the prompt, the expert's commands, and what it takes to put
  a fresh environment back in that state (job, hidden physics, the commands sent before);
* **SFT** on those rows, then **GRPO** with :func:`supervisor_reward`: each sampled answer is sent to a
  copy of the environment in the row's state, and its reward is the environment's reward for that layer
  (quality, defects, refused commands, time);
* **evaluation** (:func:`evaluate_supervisor`) on seeded episodes the training never saw.
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from training.evaluate import EvalResult

NO_CHANGE = "; no change"
"""The expert's answer when nothing needs tuning (a comment: sent nowhere, refused by nothing)."""
EVAL_SEED_OFFSET = 1_000_003
"""Evaluation episodes are seeded apart from the training episodes."""
SUCCESS_MEAN_REWARD = 0.8
"""An evaluation episode succeeds when it completes without a fatal failure or a refused command and its
mean reward per layer reaches this."""
MELT_LIMIT_FRACTION = 0.97
"""Delivered fraction below which the expert treats the hotend as melt-limited (slows down)."""
VOLUME_TOLERANCE = 0.03
"""Relative volume error the expert leaves alone."""


def expert_tuning(telemetry: dict[str, float], job_hotend_c: float) -> str:
    """The expert supervisor's commands for the next layer, from the telemetry alone.

    A melt-limited hotend (delivered fraction below 97 %) is slowed in proportion, with 5 % margin, and
    heated 10 °C above the job's temperature; otherwise a volume error beyond 3 % is corrected with the
    flow factor. Every value is kept inside the live-tuning windows.
    """
    from envs.supervisor import FLOW_PERCENT_MAX, FLOW_PERCENT_MIN, SPEED_PERCENT_MAX, SPEED_PERCENT_MIN

    if telemetry["layers_done_fraction"] <= 0.0:
        return NO_CHANGE
    commands = []
    speed = 100.0 * telemetry["speed_factor"]
    flow = 100.0 * telemetry["flow_factor"]
    if telemetry["delivered_fraction"] < MELT_LIMIT_FRACTION:
        new_speed = float(np.clip(speed * telemetry["delivered_fraction"] * 0.95, SPEED_PERCENT_MIN, SPEED_PERCENT_MAX))
        commands.append(f"M220 S{new_speed:.0f}")
        if telemetry["hotend_target_offset_c"] < 10.0:
            commands.append(f"M104 S{job_hotend_c + 10.0:.0f}")
    elif abs(telemetry["volume_ratio"] - 1.0) > VOLUME_TOLERANCE:
        new_flow = float(np.clip(flow / telemetry["volume_ratio"], FLOW_PERCENT_MIN, FLOW_PERCENT_MAX))
        if abs(new_flow - flow) >= 1.0:
            commands.append(f"M221 S{new_flow:.0f}")
    return "\n".join(commands) if commands else NO_CHANGE


def _telemetry(env: Any) -> dict[str, float]:
    from envs.supervisor import TELEMETRY_NAMES

    return dict(zip(TELEMETRY_NAMES, (float(v) for v in env.telemetry()), strict=True))


def _env(difficulties: Sequence[int]) -> Any:
    from envs.supervisor import PrintSupervisorEnv

    return PrintSupervisorEnv(difficulty=None if len(difficulties) != 1 else difficulties[0])


def _reset(env: Any, seed: int, difficulties: Sequence[int]) -> tuple[dict, dict]:
    # With several difficulties, the episode's difficulty is drawn from its seed.
    options = {"difficulty": int(difficulties[seed % len(difficulties)])} if len(difficulties) > 1 else None
    return env.reset(seed=seed, options=options)


def supervisor_rows(episodes: int, seed: int, difficulties: Sequence[int]) -> list[dict[str, Any]]:
    """One row per layer of ``episodes`` expert-supervised episodes: ``prompt``, ``completion`` (the
    expert's commands), and ``job``, ``hidden``, ``history`` (JSON) to restore the state for rewards."""
    rows = []
    env = _env(difficulties)
    for e in range(episodes):
        obs, _ = _reset(env, seed + e, difficulties)
        job_json, hidden = env.job.to_json(), json.dumps(asdict(env.hidden))
        history: list[str] = []
        done = False
        while not done:
            action = expert_tuning(_telemetry(env), env.job.process.hotend_temp_c)
            rows.append({"prompt": obs["prompt"], "completion": action, "job": job_json, "hidden": hidden,
                         "history": json.dumps(history), "step_kind": "tuning"})
            obs, _, terminated, truncated, _ = env.step(action)
            history.append(action)
            done = terminated or truncated
    return rows


_STATES: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
_STATES_KEPT = 256


def restore(job_json: str, hidden_json: str, history_json: str) -> Any:
    """A fresh environment in the state of a dataset row (replayed once, then copied from a cache)."""
    from envs.jobs import PrintJob
    from envs.supervisor import PrintSupervisorEnv

    key = (job_json, hidden_json, history_json)
    if key not in _STATES:
        env = PrintSupervisorEnv(job=PrintJob.from_json(job_json))
        env.reset(seed=0, options={"hidden": json.loads(hidden_json)})
        for action in json.loads(history_json):
            env.step(action)
        _STATES[key] = env
        while len(_STATES) > _STATES_KEPT:
            _STATES.popitem(last=False)
    return copy.deepcopy(_STATES[key])


def supervisor_reward(completions: Sequence[Any], job: Sequence[str] | None = None,
                      hidden: Sequence[str] | None = None, history: Sequence[str] | None = None,
                      **_: Any) -> list[float | None]:
    """TRL reward: the environment's reward for sending each completion in its row's state (≤ 1)."""
    from envs.rewards import _text

    if job is None or hidden is None or history is None:
        raise ValueError("supervisor_reward needs the 'job', 'hidden' and 'history' columns in the dataset")
    out: list[float | None] = []
    for c, j, h, past in zip(completions, job, hidden, history, strict=True):
        _, reward, *_ = restore(j, h, past).step(_text(c))
        out.append(float(reward))
    return out


def evaluate_supervisor(policy: Callable[[Sequence[str]], list[str]], episodes: int, seed: int = 0,
                        difficulties: Sequence[int] = (2,), batch_size: int = 16) -> EvalResult:
    """``episodes`` seeded episodes (apart from the training seeds) supervised by ``policy``.

    ``mean_reward`` is the mean reward per layer (attainable 1); ``valid_gcode_rate`` the fraction of
    answers with no refused line; ``safety_violations_per_1k_lines`` counts refused lines (commands the
    live-tuning gate would block) and fatal failures per 1,000 answer lines; ``mean_geometry`` holds the
    expert's mean reward per layer on the same episodes, for comparison.
    """
    from training.evaluate import gcode_validity

    envs = [_env(difficulties) for _ in range(episodes)]
    obs = [_reset(env, EVAL_SEED_OFFSET + seed + i, difficulties)[0] for i, env in enumerate(envs)]
    expert = [copy.deepcopy(env) for env in envs]
    returns, layers, refused_any = [0.0] * episodes, [0] * episodes, [False] * episodes
    done, success = [False] * episodes, [False] * episodes
    answers = valid = lines = violations = 0
    while not all(done):
        active = [i for i in range(episodes) if not done[i]]
        for start in range(0, len(active), batch_size):
            chunk = active[start:start + batch_size]
            for i, text in zip(chunk, policy([obs[i]["prompt"] for i in chunk]), strict=True):
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
    expert_mean = float(np.mean([_expert_return(env) for env in expert]))
    return EvalResult(
        success_rate=sum(success) / episodes, mean_reward=float(np.mean([r / n for r, n in zip(returns, layers, strict=True)])),
        valid_gcode_rate=valid / max(answers, 1), safety_violations_per_1k_lines=1000.0 * violations / max(lines, 1),
        episodes=episodes, mean_geometry=expert_mean)


def _expert_return(env: Any) -> float:
    total, n, done = 0.0, 0, False
    while not done:
        _, reward, terminated, truncated, _ = env.step(expert_tuning(_telemetry(env), env.job.process.hotend_temp_c))
        total, n, done = total + reward, n + 1, terminated or truncated
    return total / n


def noop_policy(prompts: Sequence[str]) -> list[str]:
    """Never tunes anything (the baseline a supervisor must beat)."""
    return [NO_CHANGE for _ in prompts]
