"""The G-code writing environments: conformance, determinism, the expert, random and bad actions, rewards."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401
from envs.__main__ import main as envs_main
from envs.__main__ import rollout
from envs.jobs import PartSpec, PrintJob, ProcessSettings
from envs.sampler import load_suite, sample_job
from envs.scoring import layer_reward, program_reward, score_layer, state_before_layer
from envs.slicer import cached_slice, slice_job

SMALL = PrintJob(job_id="test-small", part=PartSpec("rectangle", [16.0, 12.0], 0.4, [110.0, 110.0]),
                 process=ProcessSettings(perimeters=2, infill_density=0.2, solid_layers=1))


@pytest.mark.parametrize("env_id", ["layerloop/GcodeWriter-v1", "layerloop/GcodeProgram-v0"])
def test_check_env(env_id: str) -> None:
    env = gym.make(env_id, job=SMALL.to_dict())
    check_env(env.unwrapped, skip_render_check=True)


def test_same_seed_same_episode() -> None:
    def episode(seed: int) -> list[float]:
        env = gym.make("layerloop/GcodeWriter-v1", difficulty=2)
        obs, info = env.reset(seed=seed)
        rewards = [info["job_id"], obs["prompt"]]
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(env.unwrapped.expert_action())
            rewards.append(round(reward, 9))
            done = terminated or truncated
        return rewards

    assert episode(7) == episode(7)
    assert episode(7) != episode(8)


def test_expert_scores_at_least_095_on_the_heldout_suite() -> None:
    summary = rollout("layerloop/GcodeWriter-v1", "expert", len(load_suite("heldout-v0")), suite="heldout")
    scores = [e["normalized_score"] for e in summary["episodes"]]
    assert min(scores) >= 0.95, scores
    assert summary["success_rate"] == 1.0
    assert not summary["failure_modes"]


def test_random_and_noop_score_near_zero() -> None:
    for policy in ("random", "noop"):
        summary = rollout("layerloop/GcodeWriter-v1", policy, 4, suite="heldout")
        assert summary["mean_normalized_score"] < 0.1, (policy, summary["mean_normalized_score"])
        assert summary["success_rate"] == 0.0


@pytest.mark.parametrize("difficulty", [0, 2, 4])
def test_v1_prompts_list_the_toolpath_the_reference_prints(difficulty: int) -> None:
    """Every travel and extruding move of the reference layer is in v1's prompt, in order, to the digit; v0's
    prompt has the outline only. The reward is the same for both."""
    v1 = gym.make("layerloop/GcodeWriter-v1", difficulty=difficulty)
    v0 = gym.make("layerloop/GcodeWriter-v0", difficulty=difficulty)
    obs1, _ = v1.reset(seed=difficulty)
    obs0, _ = v0.reset(seed=difficulty)
    if obs1["prompt"].startswith("Task: write the start sequence"):
        obs1, *_ = v1.step(v1.unwrapped.expert_action())
        obs0, *_ = v0.step(v0.unwrapped.expert_action())
    assert "Toolpath" not in obs0["prompt"] and "Toolpath" in obs1["prompt"]
    listed = obs1["prompt"].split("Toolpath", 1)[1]
    expert = v1.unwrapped.expert_action()
    moves = [line.split() for line in expert.splitlines() if line.startswith(("G0 X", "G1 X"))]
    points = re.findall(r"(?:travel|extrude) X([-\d.]+) Y([-\d.]+)(?: E([\d.]+))?", listed.split("Machine:")[0])
    written = [(w[1][1:], w[2][1:], w[3][1:] if w[0] == "G1" else "") for w in moves]
    assert points == written and len(points) >= 4
    _, r1, *_ = v1.step(expert)
    _, r0, *_ = v0.step(v0.unwrapped.expert_action())
    assert r1 == pytest.approx(r0) and r1 > 0.95


def test_short_outputs_do_not_pay() -> None:
    """One valid line, or an empty layer, scores low: the geometry must be printed."""
    env = gym.make("layerloop/GcodeWriter-v1", job=SMALL.to_dict())
    env.reset(seed=0)
    expert = env.unwrapped.expert_action()
    first_lines = "\n".join(expert.splitlines()[:6]) + "\n"
    _, reward_short, *_ = env.step(first_lines)
    env.reset(seed=0)
    _, reward_expert, *_ = env.step(expert)
    assert reward_expert > 0.95
    assert reward_short < 0.4 * reward_expert


@pytest.mark.parametrize(("action", "mode"), [
    ("G1 X400 Y10 F3000\n", "move_out_of_range"),
    ("M104 S0\nG4 P90000\nG1 Z0.2 F600\nG1 X120 E1 F1200\n", "cold_extrusion"),
    ("G1 Z0.2 F600\nG1 X110 Y110 F3000\nG1 X130 E40 F1200\n", "extrusion_too_large"),
    ("M104 S400\n", "temperature_out_of_range"),
])
def test_bad_actions_give_their_failure_modes(action: str, mode: str | None) -> None:
    env = gym.make("layerloop/GcodeWriter-v1", job=SMALL.to_dict())
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(action)
    assert reward < 0.0
    if mode is not None:
        assert mode in info["failures"]
        assert terminated and info["fatal"]


def test_render_and_vector_envs() -> None:
    env = gym.make("layerloop/GcodeWriter-v1", job=SMALL.to_dict(), render_mode="rgb_array")
    env.reset(seed=0)
    env.step(env.unwrapped.expert_action())
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8
    assert frame.max() > 100, "the printed layer is visible"
    vec = gym.make_vec("layerloop/GcodeProgram-v0", num_envs=2, vectorization_mode="async",
                       vector_kwargs={"context": "spawn"}, job=SMALL.to_dict())
    obs, _ = vec.reset(seed=1)
    assert len(obs["prompt"]) == 2
    _, rewards, terminated, _, _ = vec.step(["", ""])
    assert terminated.all() and (rewards <= 0.2).all()
    vec.close()


def test_trl_reward_functions_match_the_env() -> None:
    sliced = slice_job(SMALL)
    good = "".join(sliced.layers)
    rewards = program_reward([good, "", [{"role": "assistant", "content": good}]], job=[SMALL.to_json()] * 3)
    assert rewards[0] > 0.95 and rewards[2] == pytest.approx(rewards[0])
    assert rewards[1] <= 0.0
    layer = layer_reward([sliced.layers[1], "G1 X1\n"], job=[SMALL.to_json()] * 2, layer=[1, 1])
    assert layer[0] > 0.95 and layer[1] < 0.3
    with pytest.raises(ValueError, match="needs the 'job' column"):
        program_reward([good])


def test_sampler_is_seeded_and_avoids_heldout_ids() -> None:
    a = [sample_job(np.random.default_rng(3), d).to_json() for d in range(5)]
    b = [sample_job(np.random.default_rng(3), d).to_json() for d in range(5)]
    assert a == b
    with pytest.raises(ValueError, match="held-out"):
        sample_job(np.random.default_rng(0), 0, job_id="heldout-v0-d0-00")
    for difficulty in range(5):
        job = sample_job(np.random.default_rng(difficulty), difficulty)
        assert job.difficulty == difficulty and job.start_end == (difficulty == 4)


def test_rollout_cli_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert envs_main(["rollout", "--env", "layerloop/GcodeProgram-v0", "--policy", "expert", "--suite",
                      "heldout", "--episodes", "2", "--json", str(out), "--render", str(tmp_path / "frames")]) == 0
    data = json.loads(out.read_text())
    for key in ("episodes", "mean_reward", "mean_normalized_score", "success_rate", "failure_modes"):
        assert key in data
    assert data["mean_normalized_score"] > 0.9
    assert len(list((tmp_path / "frames").glob("*.png"))) == 2
    assert envs_main(["rollout", "--env", "layerloop/NoSuch-v0", "--episodes", "1"]) == 2


# (sample_job seed, difficulty, layer, answer, physics seed) -> geometry, extrusion, time, defects, fatal, as the
# reward path scored them before it kept slices and reference states (a fresh slice and a fresh replay of the
# expert's layers for every answer).
UNCACHED_SCORES = [
    ((1, 0, 0, "expert", None), (1.0, 1.0, 1.0, 0, False)),
    ((1, 0, 0, "expert", 7), (0.9995451306233226, 0.8999056222731605, 1.0, 0, False)),
    ((1, 0, 0, "half", None), (0.028990341606901886, 0.00640181061760905, 1.0, 0, False)),
    ((1, 0, 0, "half", 7), (0.028596121480448197, 0.005761025367514399, 1.0, 0, False)),
    ((2, 1, 0, "half", None), (0.04855964426113295, 0.00011407332101881336, 1.0, 0, False)),
    ((4, 3, 3, "expert", 7), (0.9983183276415192, 0.8999056222731605, 1.0, 0, False)),
    ((4, 3, 3, "half", None), (0.9983183276415192, 0.21019731745635983, 1.0, 0, False)),
    ((4, 3, 3, "half", 7), (0.9983183276415192, 0.18915774776571456, 1.0, 0, False)),
    ((5, 4, 2, "expert", None), (0.9999243770559988, 1.0, 1.0, 0, False)),
    ((5, 4, 2, "half", 7), (0.9999243770559988, 0.00010810134939591438, 1.0, 0, False)),
]


@pytest.mark.parametrize(("case", "expected"), UNCACHED_SCORES)
def test_layer_scores_are_those_of_the_uncached_reward_path(case: tuple, expected: tuple) -> None:
    seed, difficulty, layer, answer, physics_seed = case
    job = sample_job(np.random.default_rng(seed), difficulty)
    lines = cached_slice(job).layers[layer].splitlines(keepends=True)
    text = "".join(lines if answer == "expert" else lines[:len(lines) // 2])
    for _ in range(2):  # the second time from the kept state
        s = score_layer(text, job, layer, physics_seed)
        assert (s.geometry, s.extrusion, s.time) == pytest.approx(expected[:3], rel=1e-9, abs=1e-12)
        assert (s.defects, s.fatal) == expected[3:]


def test_kept_reference_states_are_copied_not_shared() -> None:
    job = sample_job(np.random.default_rng(4), 3)
    first = state_before_layer(job, 2, physics_seed=5)
    before = (first.time_s, len(first.executed), float(first.heightmap.heights.sum()), first.profile)
    first.run(cached_slice(job).layers[2])
    first.run("M104 S0\n")
    second = state_before_layer(job, 2, physics_seed=5)
    assert (second.time_s, len(second.executed), float(second.heightmap.heights.sum()), second.profile) == before
    assert second.state.hotend_target_c == job.process.hotend_temp_c
    nominal = state_before_layer(job, 2)
    assert nominal.profile != second.profile, "the physics seed randomises the printer"
    assert cached_slice(job) is cached_slice(sample_job(np.random.default_rng(4), 3))



def test_the_supervisors_expert_is_the_rule_supervisor_and_a_box_has_none() -> None:
    summary = rollout("layerloop/PrintSupervisor-v1", "expert", episodes=1)
    assert len(summary["episodes"]) == 1 and summary["mean_reward"] > 0
    assert envs_main(["rollout", "--env", "layerloop/PrintSupervisorBox-v1", "--policy", "expert",
                      "--episodes", "1"]) == 2
