"""The held-out evaluation's metrics, on policies whose answers are known."""

from __future__ import annotations

import pytest

from agent.expert import expert_policy
from training.evaluate import eval_metrics, evaluate, gcode_validity

EPISODES = 8


def test_reference_program_is_the_upper_bound() -> None:
    result = evaluate(expert_policy("tiny-v0"), "tiny-v0", EPISODES)
    assert result.success_rate == 1.0 and result.valid_gcode_rate == 1.0
    assert result.mean_reward == pytest.approx(1.0, abs=0.01)
    assert result.safety_violations_per_1k_lines == 0.0 and result.episodes == EPISODES


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
                            "eval/mean_geometry", "safety/violations_per_1k_lines"}
