"""The held-out evaluation's metrics, on policies whose answers are known."""

from __future__ import annotations

import re

import pytest

from agent.expert import expert_policy
from envs.sampler import load_suite
from envs.slicer import cached_slice
from training.writer_eval import eval_metrics, evaluate, gcode_validity, toolpath_match

EPISODES = 8


def test_reference_program_is_the_upper_bound() -> None:
    result = evaluate(expert_policy("tiny-v0"), "tiny-v0", EPISODES)
    assert result.success_rate == 1.0 and result.valid_gcode_rate == 1.0
    assert result.mean_reward == pytest.approx(1.0, abs=0.01)
    assert result.safety_violations_per_1k_lines == 0.0 and result.episodes == EPISODES
    assert result.vertex_error_mm == 0.0 and result.closed_loop_rate == 1.0


def test_the_randomised_suite_runs_the_same_jobs_on_perturbed_printers() -> None:
    nominal = evaluate(expert_policy("tiny-v0"), "tiny-v0", EPISODES)
    randomized = evaluate(expert_policy("tiny-v0"), "tiny-v0", EPISODES, randomized=True)
    again = evaluate(expert_policy("tiny-v0"), "tiny-v0", EPISODES, randomized=True)
    assert randomized == again  # the printers are seeded by episode: every policy meets the same ones
    assert randomized.success_rate == 1.0 and randomized.vertex_error_mm == 0.0
    assert randomized.mean_reward < nominal.mean_reward - 0.01  # the reference was planned for the nominal one


def test_a_fixed_program_is_answered_whatever_the_feedback() -> None:
    # Multi-layer jobs: on a perturbed printer the feedback and machine state in later prompts differ from
    # the nominal ones; the expert must still answer every step (it once answered only the first).
    jobs = [j for j in load_suite("heldout-v0") if j.layer_count >= 3][:2]
    randomized = evaluate(expert_policy(jobs), jobs, 2, randomized=True)
    assert randomized.valid_gcode_rate == 1.0 and randomized.success_rate == 1.0
    assert all(all(answer for answer in r.answers) for r in randomized.per_episode)


def test_vertex_error_and_closed_loops_measure_the_answer_against_the_plan() -> None:
    job = load_suite("tiny-v0")[0]
    paths = cached_slice(job).layer_paths[0]
    reference = cached_slice(job).layers[0]
    assert toolpath_match(reference, paths) == (0.0, True)
    # Every Y one millimetre off: each planned point is 1 mm from the nearest point reached.
    shifted = re.sub(r"Y([\d.]+)", lambda m: f"Y{float(m.group(1)) + 1:.3f}", reference)
    error, closed = toolpath_match(shifted, paths)
    assert error == pytest.approx(1.0, abs=1e-6) and not closed
    # The loop left open: the last move dropped.
    lines = reference.splitlines()
    last_move = max(i for i, line in enumerate(lines) if line.startswith("G1 X"))
    error, closed = toolpath_match("\n".join(lines[:last_move] + lines[last_move + 1:]), paths)
    assert error == 0.0 and not closed  # the start was reached by the travel, but not extruded to
    assert toolpath_match("", paths)[1] is False


def test_empty_and_unsafe_answers() -> None:
    empty = evaluate(lambda prompts: ["" for _ in prompts], "tiny-v0", EPISODES)
    assert empty.mean_reward == 0.0 and empty.valid_gcode_rate == 0.0 and empty.success_rate == 0.0
    unsafe = evaluate(lambda prompts: ["M302 P1\nG1 X500 Y10 F3000\n" for _ in prompts], "tiny-v0", EPISODES)
    # Each answer holds a forbidden command and a move the printer refuses: 2 violations in 2 lines.
    assert unsafe.safety_violations_per_1k_lines == pytest.approx(1000.0)
    assert unsafe.mean_reward == pytest.approx(-5.0)


def test_validity_of_single_completions() -> None:
    assert gcode_validity("G1 X10 Y10 F3000\nM104 S200\n") == (True, 2, 0)
    assert gcode_validity("FROBNICATE X=1\n")[0] is False
    assert gcode_validity("G1 X1\x00\n")[0] is False
    assert gcode_validity("SAVE_CONFIG\n")[2] == 1


def test_metrics_carry_their_own_names() -> None:
    result = evaluate(lambda prompts: ["M302 P1\n" for _ in prompts], "tiny-v0", 2)
    metrics = eval_metrics(result)
    assert metrics["safety/violations_per_1k_lines"] == pytest.approx(1000.0)
    assert set(metrics) == {"eval/success_rate", "eval/mean_reward", "eval/valid_gcode_rate", "eval/episodes",
                            "eval/mean_geometry", "eval/vertex_error_mm", "eval/closed_loop_rate",
                            "safety/violations_per_1k_lines"}
