"""Baselines a trained policy must beat: random text, doing nothing, the rule supervisor, an SB3 model.

Text policies follow :class:`~agent.policy.Policy` (prompts in, texts out). The rule supervisor reads the
``PrintSupervisor`` telemetry rather than its prompt text; :func:`rule_supervisor_action` applies it to an
environment. :class:`SB3Policy` acts on the numeric observations of ``PrintSupervisorBox-v1``.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from agent.policy import Prompt
from envs.supervisor import (
    FLOW_PERCENT_MAX,
    FLOW_PERCENT_MIN,
    SPEED_PERCENT_MAX,
    SPEED_PERCENT_MIN,
    TELEMETRY_NAMES,
    PrintSupervisorEnv,
    box_to_tuning,
)

NO_CHANGE = "; no change"
"""The answer that changes nothing (a comment: sent nowhere, refused by nothing)."""
RANDOM_TEXT_MAX_CHARS = 400
"""Longest answer of :class:`RandomTextPolicy`."""
RANDOM_TEXT_ALPHABET = string.ascii_uppercase + string.digits + " .-\n"
"""Characters :class:`RandomTextPolicy` draws from (what G-code is written in)."""
MELT_LIMIT_FRACTION = 0.97
"""Delivered fraction below which the rule supervisor treats the hotend as melt-limited (slows down)."""
MELT_LIMIT_SPEED_MARGIN = 0.95
"""A melt-limited print is slowed to this fraction of the speed the hotend keeps up with."""
MELT_LIMIT_HEAT_C = 10.0
"""A melt-limited hotend is heated this much above the job's temperature."""
VOLUME_TOLERANCE = 0.03
"""Relative volume error the rule supervisor leaves alone."""
FLOW_STEP_PERCENT = 1.0
"""Smallest flow change the rule supervisor sends."""


def noop_policy(prompts: Sequence[Prompt]) -> list[str]:
    """Never does anything (:data:`NO_CHANGE` for every prompt): the baseline any policy must beat."""
    return [NO_CHANGE for _ in prompts]


class RandomTextPolicy:
    """Random characters of G-code's alphabet, 0 to ``max_chars`` of them per answer, from a seeded
    generator (the same seed gives the same answers)."""

    def __init__(self, seed: int = 0, max_chars: int = RANDOM_TEXT_MAX_CHARS) -> None:
        self.rng = random.Random(seed)
        self.max_chars = max_chars

    def __call__(self, prompts: Sequence[Prompt]) -> list[str]:
        return ["".join(self.rng.choice(RANDOM_TEXT_ALPHABET) for _ in range(self.rng.randint(0, self.max_chars)))
                for _ in prompts]


def zero_action(space: gym.spaces.Box) -> np.ndarray:
    """Doing nothing in a ``Box`` action space (``PrintSupervisorBox-v1``: the reference program)."""
    return np.zeros(space.shape, dtype=space.dtype)


# -- the rule supervisor -----------------------------------------------------------------------------------------
def expert_tuning(telemetry: dict[str, float], job_hotend_c: float) -> str:
    """The rule supervisor's commands for the next layer, from the telemetry alone.

    A melt-limited hotend (delivered fraction below 97 %) is slowed in proportion, with 5 % margin, and
    heated 10 °C above the job's temperature; otherwise a volume error beyond 3 % is corrected with the
    flow factor. Every value is kept inside the live-tuning windows.
    """
    if telemetry["layers_done_fraction"] <= 0.0:
        return NO_CHANGE
    commands = []
    speed = 100.0 * telemetry["speed_factor"]
    flow = 100.0 * telemetry["flow_factor"]
    if telemetry["delivered_fraction"] < MELT_LIMIT_FRACTION:
        new_speed = float(np.clip(speed * telemetry["delivered_fraction"] * MELT_LIMIT_SPEED_MARGIN,
                                  SPEED_PERCENT_MIN, SPEED_PERCENT_MAX))
        commands.append(f"M220 S{new_speed:.0f}")
        if telemetry["hotend_target_offset_c"] < MELT_LIMIT_HEAT_C:
            commands.append(f"M104 S{job_hotend_c + MELT_LIMIT_HEAT_C:.0f}")
    elif abs(telemetry["volume_ratio"] - 1.0) > VOLUME_TOLERANCE:
        new_flow = float(np.clip(flow / telemetry["volume_ratio"], FLOW_PERCENT_MIN, FLOW_PERCENT_MAX))
        if abs(new_flow - flow) >= FLOW_STEP_PERCENT:
            commands.append(f"M221 S{new_flow:.0f}")
    return "\n".join(commands) if commands else NO_CHANGE


def telemetry_of(env: PrintSupervisorEnv) -> dict[str, float]:
    """A supervisor environment's telemetry by name."""
    return dict(zip(TELEMETRY_NAMES, (float(v) for v in env.telemetry()), strict=True))


def rule_supervisor_action(env: PrintSupervisorEnv) -> str:
    """The rule supervisor's answer in ``env``'s current state."""
    assert env.job is not None, "call reset() first"
    return expert_tuning(telemetry_of(env), env.job.process.hotend_temp_c)


# -- Stable-Baselines3 -------------------------------------------------------------------------------------------
class _Predictor(Protocol):
    def predict(self, observation: Any, deterministic: bool = ...) -> tuple[Any, Any]: ...


class SB3Policy:
    """A trained Stable-Baselines3 model (e.g. PPO on ``PrintSupervisorBox-v1``) as an observation → action
    policy, deterministic; ``normalize`` is applied to the observation first (``VecNormalize.normalize_obs``
    of the training run, when it normalised observations)."""

    def __init__(self, model: _Predictor, normalize: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.model = model
        self.normalize = normalize

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        obs = self.normalize(observation) if self.normalize is not None else observation
        return np.asarray(self.model.predict(obs, deterministic=True)[0])


def sb3_tuning(policy: SB3Policy, env: PrintSupervisorEnv) -> str:
    """The text commands ``policy`` (acting on ``PrintSupervisorBox-v1``'s telemetry) sends in ``env``'s state."""
    assert env.job is not None and env.sim is not None, "call reset() first"
    action = policy(env.telemetry())
    return box_to_tuning(action, env.job, env.layer, env.settings(), env.sim.profile.hotend.max_temp_c) or NO_CHANGE


# -- training a PPO baseline ------------------------------------------------------------------------------------
PPO_MODEL_FILE = "ppo.zip"
PPO_NORMALIZE_FILE = "vecnormalize.pkl"


def train_ppo(steps: int, out: str, seed: int = 0, difficulty: int = 2) -> str:
    """PPO (Stable-Baselines3) on ``PrintSupervisorBox-v1`` for ``steps`` environment steps, observations
    normalised; saves the model and the normalisation into folder ``out`` and returns it."""
    from pathlib import Path

    import stable_baselines3 as sb3
    import torch
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    import envs  # noqa: F401  (registers the environments)

    torch.set_num_threads(1)
    venv = VecNormalize(DummyVecEnv([lambda: gym.make("layerloop/PrintSupervisorBox-v1", difficulty=difficulty)]),
                        norm_obs=True, norm_reward=False)
    model = sb3.PPO("MlpPolicy", venv, n_steps=256, batch_size=64, learning_rate=1e-3, gamma=0.9, seed=seed,
                    policy_kwargs={"log_std_init": -1.0, "net_arch": [64, 64]}, device="cpu")
    model.learn(total_timesteps=steps, progress_bar=False)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / PPO_MODEL_FILE)
    venv.save(str(folder / PPO_NORMALIZE_FILE))
    return str(folder)


def load_ppo(folder: str) -> SB3Policy:
    """A PPO baseline saved by :func:`train_ppo`, as an :class:`SB3Policy`."""
    from pathlib import Path

    import stable_baselines3 as sb3
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    import envs  # noqa: F401

    path = Path(folder)
    if not (path / PPO_MODEL_FILE).is_file():
        raise FileNotFoundError(f"{path}: no {PPO_MODEL_FILE} (train one with python -m agent.baselines ppo)")
    venv = VecNormalize.load(str(path / PPO_NORMALIZE_FILE),
                             DummyVecEnv([lambda: gym.make("layerloop/PrintSupervisorBox-v1")]))
    venv.training = False
    return SB3Policy(sb3.PPO.load(path / PPO_MODEL_FILE, device="cpu"), normalize=venv.normalize_obs)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m agent.baselines", description="Train a supervisor baseline.")
    sub = parser.add_subparsers(dest="command", required=True)
    ppo = sub.add_parser("ppo", help="PPO on PrintSupervisorBox-v1")
    ppo.add_argument("--steps", type=int, default=20_000, help="environment steps (default 20,000)")
    ppo.add_argument("--out", default="runs/ppo", help="folder for the model (default runs/ppo)")
    ppo.add_argument("--seed", type=int, default=0)
    ppo.add_argument("--difficulty", type=int, default=2, choices=range(5))
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps {args.steps}: must be at least 1")
    print(f"ppo: {args.steps:,} steps on PrintSupervisorBox-v1 (difficulty {args.difficulty})", flush=True)
    print(f"ppo: saved {train_ppo(args.steps, args.out, args.seed, args.difficulty)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
