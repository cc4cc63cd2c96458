"""Command line: ``python -m envs rollout --env ID --policy expert|random|noop [--suite heldout] --episodes N``.

The expert is the environment's reference program; the supervisor's text environment has none, and its
expert is the rule supervisor.

Runs whole episodes and prints the mean reward, the mean normalised score (reward over the attainable
reward), the success rate and the failure modes; ``--json`` writes them with every episode, ``--render DIR``
writes each step's frame as PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the environments)
from agent.baselines import RandomTextPolicy, noop_policy, rule_supervisor_action, zero_action
from envs.supervisor.env import PrintSupervisorEnv
from sim_bridge.config import ConfigError

SUITES = {"heldout": "heldout-v0"}
POLICIES = ("expert", "random", "noop")


def _policy(name: str, env: gym.Env, seed: int) -> Callable[[Any], Any]:
    """An observation → action function: the env's reference program, or a baseline of :mod:`agent.baselines`
    (text actions get text baselines; a ``Box`` gets its zero or a sample of its space)."""
    base = env.unwrapped
    text = isinstance(env.action_space, gym.spaces.Text)
    if name == "expert":
        if hasattr(base, "expert_action"):
            return lambda obs: base.expert_action()
        if text and isinstance(base, PrintSupervisorEnv):
            # The supervisor's environments have no reference program: their expert is the rule supervisor.
            return lambda obs: rule_supervisor_action(base)
        raise ValueError(f"policy 'expert': {env.spec.id if env.spec else type(base).__name__} has no expert; "
                         "choose random or noop")
    if name == "noop":
        return (lambda obs: noop_policy([obs["prompt"]])[0]) if text else (lambda obs: zero_action(env.action_space))
    if name == "random":
        if text:
            random_text = RandomTextPolicy(seed)
            return lambda obs: random_text([obs["prompt"]])[0]
        return lambda obs: env.action_space.sample()
    raise ValueError(f"policy {name!r}: choose {', '.join(POLICIES)}")


def rollout(env_id: str, policy: str, episodes: int, suite: str | None = None, seed: int = 0,
            render_dir: Path | None = None, **env_kwargs: Any) -> dict[str, Any]:
    """Run ``episodes`` episodes; the summary that the CLI prints and writes."""
    if suite:
        env_kwargs["suite"] = SUITES.get(suite, suite)
    env = gym.make(env_id, render_mode="rgb_array" if render_dir else None, **env_kwargs)
    env.action_space.seed(seed)
    act = _policy(policy, env, seed)
    results = []
    failure_modes: Counter[str] = Counter()
    for episode in range(episodes):
        obs, info = env.reset(seed=seed + episode)
        total, steps, done, last_info = 0.0, 0, False, {}
        while not done:
            obs, reward, terminated, truncated, last_info = env.step(act(obs))
            total += reward
            steps += 1
            done = terminated or truncated
            if render_dir is not None:
                from matplotlib import pyplot as plt

                render_dir.mkdir(parents=True, exist_ok=True)
                plt.imsave(render_dir / f"episode{episode:03d}_step{steps:03d}.png", env.render())
        base = env.unwrapped
        attainable = base.attainable_reward() if hasattr(base, "attainable_reward") else float(steps)
        modes = last_info.get("failures", [])
        failure_modes.update(modes)
        results.append({"episode": episode, "job_id": info.get("job_id"), "reward": total, "steps": steps,
                        "normalized_score": total / attainable if attainable else 0.0,
                        "success": bool(last_info.get("success", False)), "failure_modes": modes})
    env.close()
    return {
        "env": env_id, "policy": policy, "suite": suite, "seed": seed, "episodes": results,
        "mean_reward": float(np.mean([r["reward"] for r in results])) if results else 0.0,
        "mean_normalized_score": float(np.mean([r["normalized_score"] for r in results])) if results else 0.0,
        "success_rate": float(np.mean([r["success"] for r in results])) if results else 0.0,
        "failure_modes": dict(failure_modes),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envs", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    roll = sub.add_parser("rollout", help="run whole episodes with a built-in policy")
    roll.add_argument("--env", default="layerloop/GcodeWriter-v1", help="registered environment id")
    roll.add_argument("--policy", choices=POLICIES, default="expert")
    roll.add_argument("--suite", help="held-out suite (heldout = envs/suites/heldout-v0.json)")
    roll.add_argument("--difficulty", type=int, help="sampled jobs of this difficulty (0-4) when no suite")
    roll.add_argument("--episodes", type=int, default=5)
    roll.add_argument("--seed", type=int, default=0)
    roll.add_argument("--json", type=Path, help="write the summary and every episode here")
    roll.add_argument("--render", type=Path, help="write each step's frame as PNG into this folder")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes {args.episodes}: must be at least 1")
    kwargs: dict[str, Any] = {}
    if args.difficulty is not None:
        kwargs["difficulty"] = args.difficulty
    try:
        summary = rollout(args.env, args.policy, args.episodes, args.suite, args.seed, args.render, **kwargs)
    except (gym.error.Error, FileNotFoundError, ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{summary['env']} / {summary['policy']}: {len(summary['episodes'])} episodes, mean reward "
          f"{summary['mean_reward']:.3f}, mean normalised score {summary['mean_normalized_score']:.3f}, "
          f"success rate {summary['success_rate']:.2f}, failure modes {summary['failure_modes'] or 'none'}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
