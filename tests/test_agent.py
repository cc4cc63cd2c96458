"""The policies of ``agent/``: the protocol, the baselines, the revise rule (no model needed)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from agent.baselines import (
    NO_CHANGE,
    RandomTextPolicy,
    SB3Policy,
    expert_tuning,
    noop_policy,
    rule_supervisor_action,
    zero_action,
)
from agent.expert import expert_policy
from agent.llm import conversation, needs_revision, revision_request
from agent.policy import Policy
from envs.sampler import load_suite
from envs.supervisor import PrintSupervisorEnv

CALM = {"layers_done_fraction": 0.5, "speed_factor": 1.0, "flow_factor": 1.0, "delivered_fraction": 1.0,
        "hotend_target_offset_c": 0.0, "volume_ratio": 1.0}


def test_baselines_are_policies() -> None:
    policies: list[Policy] = [noop_policy, RandomTextPolicy(seed=1), expert_policy(load_suite("tiny-v0")[:1])]
    for policy in policies:
        answers = policy(["a", "b", "c"])
        assert isinstance(answers, list) and len(answers) == 3
    assert noop_policy(["x", "y"]) == [NO_CHANGE, NO_CHANGE]


def test_random_text_is_seeded_and_bounded() -> None:
    first = RandomTextPolicy(seed=3, max_chars=50)(["p"] * 20)
    assert first == RandomTextPolicy(seed=3, max_chars=50)(["p"] * 20)
    assert first != RandomTextPolicy(seed=4, max_chars=50)(["p"] * 20)
    assert all(len(t) <= 50 for t in first) and len(set(first)) > 1


def test_rule_supervisor_acts_on_telemetry_only_when_needed() -> None:
    assert expert_tuning(CALM, 210.0) == NO_CHANGE
    assert expert_tuning({**CALM, "layers_done_fraction": 0.0, "volume_ratio": 0.5}, 210.0) == NO_CHANGE
    # Melt-limited: slowed in proportion with 5 % margin and heated 10 °C.
    assert expert_tuning({**CALM, "delivered_fraction": 0.8}, 210.0) == "M220 S76\nM104 S220"
    # Over-extruding by 10 %: the flow is brought back.
    assert expert_tuning({**CALM, "volume_ratio": 1.1}, 210.0) == "M221 S91"
    env = PrintSupervisorEnv(difficulty=2)
    env.reset(seed=0)
    assert rule_supervisor_action(env) == NO_CHANGE, "nothing is measured before the first layer"


def test_sb3_policy_and_zero_action() -> None:
    # A fake model to pin the adapter's arithmetic; tests/test_supervisor.py runs it on a real trained PPO.
    class FakeModel:
        def predict(self, observation: np.ndarray, deterministic: bool = False) -> tuple[np.ndarray, None]:
            assert deterministic
            return observation[:2] * 2.0, None

    obs = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    assert SB3Policy(FakeModel())(obs).tolist() == [2.0, 4.0]
    assert SB3Policy(FakeModel(), normalize=lambda o: o - 1.0)(obs).tolist() == [0.0, 2.0]
    space = gym.spaces.Box(-1.0, 1.0, (5,), dtype=np.float32)
    assert zero_action(space).shape == (5,) and not zero_action(space).any()


def test_revise_rule_and_turns() -> None:
    assert needs_revision("always", False, 0) and not needs_revision("failures", False, 0)
    assert needs_revision("failures", True, 0) and needs_revision("failures", False, 2)
    with pytest.raises(ValueError, match="revise = 'sometimes'"):
        needs_revision("sometimes", True, 0)
    turns = conversation("Task", ["G1 X1"], ["geometry 0.10."])
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[2]["content"] == revision_request("geometry 0.10.")
    assert "layer: geometry 0.10.\nWrite" in turns[2]["content"], "one full stop, however the feedback ends"


def test_a_prompt_longer_than_the_context_gets_no_answer_and_a_note(tiny_model_config: object) -> None:
    from agent.llm import LLMPolicy, generate
    from training.model import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_model_config)  # type: ignore[arg-type]
    policy = LLMPolicy(model, tok, max_new_tokens=8)
    assert policy.context_tokens == model.config.max_position_embeddings
    short, long = "G28 X0", "G1 X10.5 Y20.25 E0.5\n" * (policy.context_tokens // 4)
    answers = policy([short, long])
    assert answers[1] == "" and answers[0] == generate(model, tok, [short], 8)[0]
    (note,) = policy.notes
    assert note.startswith(f"1 of 2 prompts were longer than the model's context of {policy.context_tokens:,}")
    assert policy([short]) == answers[:1] and len(policy.over_context) == 1
