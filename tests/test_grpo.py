"""GRPO beyond one turn and beyond the writer: multi-turn revision (feedback appended, the model revises),
parallel reward simulation, ``PrintSupervisor-v1`` as a loop task, and ``python -m training.grpo``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from agent.baselines import NO_CHANGE, noop_policy
from agent.expert import expert_policy
from agent.llm import conversation, format_prompt
from envs.jobs import PrintJob
from envs.rewards import StepScores
from envs.sampler import load_suite
from envs.scoring import layer_feedback, layer_reward
from envs.slicer import slice_job
from sim_bridge.config import ConfigError
from training.grpo import GRPOSettings, feedback_bridge
from training.guidance import prints
from training.make_dataset import DatasetConfig, make_dataset
from training.model import ModelConfig, load_model_and_tokenizer
from training.revisions import PERTURBATIONS, perturb_layer, revision_examples
from training.rewards import LayerRewardPart, LayerScorer, SupervisorReward, layer_reward_functions
from training.supervise import evaluate_supervisor, restore_state, supervisor_rows
from training.writer_eval import evaluate

ROOT = Path(__file__).parent.parent
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
SMOKE_MODEL = ModelConfig(vocab_size=400, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                          intermediate_size=64, max_length_tokens=1536, corpus_jobs=4)


def _job() -> PrintJob:
    return load_suite("tiny-v0")[0]


def test_feedback_names_the_failing_line_and_scores() -> None:
    job = _job()
    good = slice_job(job).layers[0]
    scores, feedback = layer_feedback(good, job, 0)
    assert scores.geometry > 0.9
    assert feedback.startswith(f"geometry {scores.geometry:.2f}, extrusion {scores.extrusion:.2f}, time ")
    assert " line " not in feedback, "the reference layer has no failure to quote"
    bad = "G28 X\nG1 X500 Y10 F3000\n"
    scores, feedback = layer_feedback(bad, job, 0)
    assert scores.fatal
    assert "line 2:" in feedback and "out of range" in feedback.lower()


def test_perturbed_layers_score_below_the_reference() -> None:
    job = _job()
    good = slice_job(job).layers[0]
    rng = np.random.default_rng(0)
    best = layer_reward([good], [job.to_json()], [0])[0]
    for kind in PERTURBATIONS:
        wrong, done = perturb_layer(good, rng, kind)
        assert done == kind and wrong != good
        assert layer_reward([wrong], [job.to_json()], [0])[0] < best - 0.05, kind


def test_revision_examples_carry_real_feedback() -> None:
    job = _job()
    good = slice_job(job).layers[0]
    row = {"prompt": "Task: layer 1", "completion": good, "job": job.to_json(), "layer": 0, "step_kind": "layer"}
    examples = revision_examples([row, {**row, "step_kind": "start"}], seed=1, fraction=1.0, revise="always")
    assert len(examples) == 1
    turns = examples[0]["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[-1]["content"] == good and turns[1]["content"] != good
    assert "Simulator feedback" in turns[2]["content"] and "geometry" in turns[2]["content"]
    # Revising failures only: every example's wrong answer failed, and the feedback says on which line.
    failing = revision_examples([row] * 12, seed=2, fraction=1.0, revise="failures")
    assert len(failing) >= 6
    assert all(" line " in e["messages"][2]["content"] for e in failing)


def test_rollout_splice_matches_the_chat_template(tmp_path: Path) -> None:
    """The token stream of a multi-turn rollout (prompt, answer, feedback, revision) is the chat template's
    rendering of the same conversation — what the revision examples are trained on."""
    _, tokenizer = load_model_and_tokenizer(ModelConfig(**{**SMOKE_MODEL.__dict__, "cache_dir": str(tmp_path)}))
    prompt, answer, feedback, revision = "Task: layer 1", "G1 X1 E0.1", "geometry 0.10; line 1: boom", "G1 X2"
    end_of_answer, feedback_turn = feedback_bridge(tokenizer, prompt, feedback)
    spliced = format_prompt(tokenizer, prompt) + answer + end_of_answer + feedback_turn + revision
    chat = conversation(prompt, [answer], [feedback]) + [{"role": "assistant", "content": revision}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False)
    assert rendered.startswith(spliced)
    assert "boom" in feedback_turn and feedback_turn.endswith("<|im_start|>assistant\n")


def test_revision_in_evaluation_commits_the_last_answer() -> None:
    jobs = load_suite("tiny-v0")[:2]
    expert = expert_policy(jobs)
    asked: list[int] = []

    def late(prompts: list) -> list[str]:
        # A move off the bed on the first try; the reference layer once the simulator's feedback is in.
        asked.append(sum(not isinstance(p, str) for p in prompts))
        return ["G1 X900 Y10 E1 F1200" if isinstance(p, str) else expert([p])[0] for p in prompts]

    reference = evaluate(expert, jobs, episodes=2)
    assert evaluate(late, jobs, episodes=2).mean_reward < 0, "a refused move costs the fatal penalty"
    asked.clear()
    revised = evaluate(late, jobs, episodes=2, revisions=1)
    assert revised.mean_reward == pytest.approx(reference.mean_reward, abs=1e-6)
    assert sum(asked) == 2, "each failing answer was sent back once"
    # A good first answer is not sent back (revise="failures"), unless revise="always".
    calls: list[int] = []

    def counting(prompts: list) -> list[str]:
        calls.append(sum(not isinstance(p, str) for p in prompts))
        return expert(prompts)

    assert evaluate(counting, jobs, episodes=2, revisions=1).mean_reward == pytest.approx(reference.mean_reward)
    assert sum(calls) == 0
    evaluate(counting, jobs, episodes=2, revisions=1, revise="always")
    assert sum(calls) == 2


@pytest.mark.slow
def test_parallel_reward_workers_agree_with_in_process() -> None:
    job = _job()
    good = slice_job(job).layers[0]
    texts = [good, good.replace("E", "E1"), "", "G1 X500"]
    jobs, layers = [job.to_json()] * len(texts), [0] * len(texts)
    serial = [s.reward for s in LayerScorer().scores(texts, jobs, layers)]
    assert len(set(serial)) > 1, "the answers score differently, so agreement means something"
    parallel_scorer = LayerScorer(workers=2)
    try:
        parallel = [s.reward for s in parallel_scorer.scores(texts, jobs, layers)]
    finally:
        parallel_scorer.close()
    assert parallel == pytest.approx(serial)


def test_supervisor_rows_restore_their_state() -> None:
    rows = supervisor_rows(2, seed=5, difficulties=[2])
    assert rows and any(r["completion"] != NO_CHANGE for r in rows)
    for r in rows:
        assert restore_state(r["job"], r["hidden"], r["history"])._observation()["prompt"] == r["prompt"]
    cols = [[r[k] for r in rows] for k in ("job", "hidden", "history")]
    reward = SupervisorReward()
    expert = reward([r["completion"] for r in rows], *cols)
    refused = reward(["G28\nM221 S200"] * len(rows), *cols)
    assert all(e > f for e, f in zip(expert, refused, strict=True))
    # A restored state is a copy: scoring the rule's answers again gives the same rewards.
    assert reward([r["completion"] for r in rows], *cols) == expert


def test_expert_supervisor_beats_doing_nothing() -> None:
    result = evaluate_supervisor(noop_policy, 16, seed=0, difficulties=[2])
    assert result.rule_mean_reward > result.mean_reward + 0.05
    assert result.valid_gcode_rate == 1.0 and result.safety_violations_per_1k_lines == 0.0
    assert "mean_geometry" not in result.as_dict(), "the supervisor task reports no geometry"


def _smoke(tmp_path: Path, name: str, **overrides: object) -> Path:
    data = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    data.update(output_dir=str(tmp_path / "runs"), **overrides)
    data["embedded"]["cache_dir"] = str(tmp_path / "models")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, **ENV}, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_multi_turn_loop_runs(tmp_path: Path) -> None:
    done = _run(["-m", "training.sim_loop", "--config",
                 str(_smoke(tmp_path, "smoke-multiturn", dataset_path=str(tmp_path / "data")))])
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").glob("GcodeWriter-*")
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["phases"]) == {"before", "sft", "grpo"}
    examples = [json.loads(line) for line in (run_dir / "revision-examples.jsonl").read_text().splitlines()]
    assert examples and all(len(e["messages"]) == 4 for e in examples)
    grpo = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/rewards/first_answer_reward/mean" in r for r in grpo if r["phase"] == "grpo")
    timed = [r for r in grpo if r["phase"] == "grpo" and "train/reward_time_s" in r]
    assert len(timed) == 2 and all(r["train/reward_time_s"] >= 0 and 0 <= r["train/reward_share"] < 1 for r in timed)
    # The standalone trainer on the same data and model, multi-turn.
    config = {"model": str(run_dir / "sft" / "final"), "dataset_path": str(tmp_path / "data"),
              "output_dir": str(tmp_path / "grpo"), "batch_size": 4, "num_generations": 2, "max_steps": 1,
              "max_completion_length": 16, "multi_turn": True, "revise": "always", "checkpoint_interval": 1,
              "beta": 0.05, "ref_model_sync_steps": 1}
    (tmp_path / "grpo.yaml").write_text(yaml.safe_dump(config))
    done = _run(["-m", "training.grpo", "--config", str(tmp_path / "grpo.yaml")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "grpo" / "final" / "config.json").is_file()


@pytest.mark.slow
def test_supervisor_loop_runs(tmp_path: Path) -> None:
    done = _run(["-m", "training.sim_loop", "--config", str(_smoke(tmp_path, "smoke-supervisor"))])
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").glob("PrintSupervisor-*")
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["phases"]) == {"before", "sft", "grpo"}
    rows = (run_dir / "supervisor-rows.jsonl").read_text().splitlines()
    assert rows and all({"prompt", "completion", "job", "hidden", "history"} <= set(json.loads(r)) for r in rows)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/rewards/supervisor_reward/mean" in r for r in metrics)
    timed = [r for r in metrics if r["phase"] == "grpo" and "train/reward_time_s" in r]
    assert len(timed) == 2 and all(r["train/reward_time_s"] > 0 and 0 < r["train/reward_share"] < 1 for r in timed)
    assert set(report["phases"]["grpo"]) >= {"mean_reward", "rule_mean_reward"}
    assert "mean_geometry" not in report["phases"]["grpo"]


def test_multi_turn_needs_the_writer(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "configs" / "smoke-supervisor.yaml").read_text())
    data["grpo"]["multi_turn"] = True
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    done = _run(["-m", "training.sim_loop", "--config", str(path)])
    assert done.returncode == 2 and "grpo.multi_turn: true needs task GcodeWriter-v1" in done.stderr


def test_grpo_cli_reports_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_size: 6\nnum_generations: 4\n")
    done = _run(["-m", "training.grpo", "--config", str(bad)])
    assert done.returncode == 2 and "batch_size = 6 must be a multiple of num_generations = 4" in done.stderr
    missing = _run(["-m", "training.grpo", "--config", str(tmp_path / "none.yaml")])
    assert missing.returncode == 2 and "cannot read the config" in missing.stderr


def test_grpo_settings_check_the_reference_sync_when_built() -> None:
    """Syncing the reference model needs a KL term and full weights: refused when the settings are made
    (in Python too), before any model is loaded."""
    with pytest.raises(ConfigError, match=r"ref_model_sync_steps = 5: .* needs beta > 0 \(beta = 0.0\)"):
        GRPOSettings(ref_model_sync_steps=5, beta=0.0)
    with pytest.raises(ConfigError, match="full fine-tuning"):
        GRPOSettings(ref_model_sync_steps=5, lora=True)
    with pytest.raises(ConfigError, match=r"temperature = 0.0: out of range"):
        GRPOSettings(temperature=0.0)
    with pytest.raises(ConfigError, match="scale_rewards"):
        GRPOSettings(scale_rewards="std")
    assert GRPOSettings(ref_model_sync_steps=5).ref_model_sync_steps == 5


def test_sim_to_real_rewards_use_one_randomised_printer_per_group() -> None:
    from types import SimpleNamespace

    job = _job()
    good = slice_job(job).layers[0]
    cols = {"job": [job.to_json()] * 2, "layer": [0, 0]}
    nominal_scorer = LayerScorer()
    nominal = LayerRewardPart(nominal_scorer, "time")([good, good + "\n"], **cols)
    scorer = LayerScorer(randomize_seed=7)
    time_reward, geometry_reward = LayerRewardPart(scorer, "time"), LayerRewardPart(scorer, "geometry")
    assert nominal_scorer.physics_seed(job.to_json(), 0, 3) is None
    assert scorer.physics_seed(job.to_json(), 0, 3) == scorer.physics_seed(job.to_json(), 0, 3)
    assert scorer.physics_seed(job.to_json(), 0, 3) != scorer.physics_seed(job.to_json(), 0, 4)
    assert scorer.physics_seed(job.to_json(), 0, 3) != LayerScorer(randomize_seed=8).physics_seed(job.to_json(), 0, 3)
    # One step: both completions of the group meet the same printer (same answer, same score).
    step3 = time_reward([good, good + "\n"], **cols, trainer_state=SimpleNamespace(global_step=3))
    assert step3[0] == pytest.approx(step3[1])
    # Over steps the printers differ, and so does the time the same layer takes on them.
    times = {round(time_reward([good], job=cols["job"][:1], layer=[0],
                               trainer_state=SimpleNamespace(global_step=k))[0], 6) for k in range(6)}
    assert len(times) > 1
    assert geometry_reward([good], job=cols["job"][:1], layer=[0],
                           trainer_state=SimpleNamespace(global_step=1))[0] > 0.8
    # The nominal scorer was never randomised: a fresh one scores as it did.
    assert LayerRewardPart(LayerScorer(), "time")([good, good + "\n"], **cols) == nominal


def test_rewards_reuse_the_rollouts_simulation() -> None:
    """A multi-turn rollout already simulated its answers for the feedback; the reward parts take those
    scores instead of simulating the same answer on the same printer again."""
    job = _job()
    answer = "G1 X1 ; rollout answer"
    scorer = LayerScorer()
    marked = StepScores(geometry=0.123, extrusion=0.456, time=0.789)
    scorer.remember(answer, job.to_json(), 0, None, marked)
    assert scorer.scores([answer], [job.to_json()], [0])[0] is marked
    funcs, _ = layer_reward_functions(scorer)
    assert [f([answer], job=[job.to_json()], layer=[0])[0] for f in funcs[:3]] == [0.123, 0.456, 0.789]
    # What one scorer remembers is its own: a scorer of another trainer simulates the answer.
    fresh = LayerScorer().scores([answer], [job.to_json()], [0])[0]
    assert fresh is not marked and fresh.geometry != pytest.approx(0.123)


def test_reward_functions_pickle_and_score_the_same() -> None:
    """The reward objects travel to other processes: a pickled copy scores as the original, without the
    original's cache or pool."""
    import pickle

    job = _job()
    good, cols = slice_job(job).layers[0], {"job": [job.to_json()] * 2, "layer": [0, 0]}
    funcs, weights = layer_reward_functions(LayerScorer(randomize_seed=3), multi_turn=True)
    assert [f.__name__ for f in funcs] == ["geometry_reward", "extrusion_reward", "time_reward", "penalty_reward",
                                           "first_answer_reward"] and weights[-1] == 0.0
    before = [f([good, "G1 X500 E1"], **cols) for f in funcs]
    copies = pickle.loads(pickle.dumps(funcs))
    assert copies[0].scorer is copies[1].scorer, "the parts still share one scorer"
    assert copies[0].scorer is not funcs[0].scorer and not copies[0].scorer._scores
    assert [f([good, "G1 X500 E1"], **cols) for f in copies] == before
    assert before[3][0] == 0.0 and before[3][1] < 0, "the refused move is penalised, the reference is not"
    rows = supervisor_rows(1, seed=5, difficulties=[2])[:3]
    supervisor = SupervisorReward()
    args = [[r["completion"] for r in rows], *[[r[k] for r in rows] for k in ("job", "hidden", "history")]]
    assert pickle.loads(pickle.dumps(supervisor))(*args) == supervisor(*args)


def test_guidance_counts_only_answers_that_print() -> None:
    assert prints(StepScores(geometry=0.9, extrusion=0.1, time=0.1))
    assert not prints(StepScores(geometry=0.89, extrusion=1.0, time=1.0))
    assert not prints(StepScores(geometry=1.0, extrusion=1.0, time=1.0, defects=1))
    assert not prints(StepScores(geometry=1.0, extrusion=1.0, time=1.0, fatal=True))
    with pytest.raises(ConfigError, match="expert_guidance: true with multi_turn"):
        GRPOSettings(expert_guidance=True, multi_turn=True)


@pytest.mark.slow
def test_expert_guidance_puts_the_reference_into_failed_groups(tmp_path: Path) -> None:
    """An untrained model prints nothing: every group gets the expert's answer, and the group's rewards show
    it (one answer of two prints the layer, so the mean geometry is about half)."""
    make_dataset(DatasetConfig(name="guided", seed=5, jobs=4, difficulties=[0], part_kinds=["rectangle"],
                               jobs_per_shard=4, defects_per_job=0, traces=False, images=False, workers=1),
                 tmp_path / "data", progress=False)
    config = {"model": "embedded", "embedded": {**SMOKE_MODEL.__dict__, "cache_dir": str(tmp_path / "models")},
              "dataset_path": str(tmp_path / "data"), "output_dir": str(tmp_path / "grpo"), "batch_size": 4,
              "num_generations": 2, "max_steps": 2, "max_completion_length": 320, "checkpoint_interval": 1,
              "expert_guidance": True}
    (tmp_path / "grpo.yaml").write_text(yaml.safe_dump(config))
    done = _run(["-m", "training.grpo", "--config", str(tmp_path / "grpo.yaml")])
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads(max((tmp_path / "grpo").glob("checkpoint-*/trainer_state.json")).read_text())
    steps = [r for r in state["log_history"] if "guided_groups" in r]
    assert len(steps) == 2 and all(r["guided_groups"] == 1.0 for r in steps)
    assert all(0.4 <= r["rewards/geometry_reward/mean"] <= 0.6 for r in steps), steps
