"""GRPO on simulator rewards: ``python -m training.grpo --config configs/grpo-tiny.yaml``.

Reinforcement of a (usually supervised-tuned) model with TRL's ``GRPOTrainer``: each prompt of the
dataset's ``sft`` table (one layer of a job) is answered ``num_generations`` times, every answer is run on
the embedded simulator after the expert's program up to that layer, and the answers of one prompt are
compared on the layer reward. The reward is handed to TRL in its parts (geometry, extrusion, time,
penalty: :mod:`training.rewards`) with their weights, so each part is logged on its own, and the time the
reward functions take is logged per step (``reward_time_s``, ``reward_share`` of the step's wall time).

**Multi-turn mode** (``multi_turn: true``): an answer is not final at once. The simulator's feedback on it
— its scores and each failure with the line number in the answer — is appended as a user turn, and the
model writes the layer again; ``revision_turns`` times. This runs through TRL's ``rollout_func`` (the
installed TRL has it; ``environment_factory`` would need a tool-calling chat template, which G-code answers
do not use). The whole exchange is one completion for TRL, with the feedback tokens masked out of the loss
(``env_mask``); the reward is the last revision's, and the first answer's reward is logged beside it
(``first_answer_reward``, weight 0) so the gain from revising is visible. The model learns the format
from revision examples added to its supervised data (:func:`training.revisions.revision_examples`).

The closed loop (:mod:`training.sim_loop`) runs the same trainer as its phase 2, with the same settings
(its ``grpo:`` section is a :class:`GRPOSettings`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers

from agent.llm import (
    REVISE_MODES,
    LLMPolicy,
    conversation,
    format_prompt,
    needs_revision,
    sample,
    stop_token_ids,
)
from envs.jobs import PrintJob
from envs.scoring import layer_feedback
from sim_bridge.config import ConfigError, check_ranges, ranged
from training.backend import check_backend, make_grpo_trainer
from training.checkpoints import FINAL_DIR, train_and_save
from training.cli import config_main
from training.data import load_table, to_grpo
from training.guidance import make_guided_rollout
from training.model import ModelConfig, load_model_and_tokenizer
from training.rewards import LayerScorer, RewardTimer, layer_reward_functions
from training.screen import screen_rows

ANSWER_SENTINEL = "\x00answer\x00"
"""Stands in for an answer while finding where a chat template puts text around it."""


@dataclass(frozen=True)
class GRPOSettings:
    """GRPO settings (YAML keys map 1:1; see configs/grpo-tiny.yaml). In the closed loop's ``grpo:``
    section, the loop sets ``model``, ``embedded``, ``dataset_path``, ``output_dir``, ``log_dir``,
    ``backend`` and ``seed`` itself (:data:`training.loop_config.LOOP_OWNED`)."""

    model: str = "runs/sft/final"
    """The model to reinforce: a fine-tuned folder (``training.sft``'s ``final/``), ``embedded``, or a
    Hugging Face causal LM id or local path."""
    embedded: ModelConfig = field(default_factory=lambda: ModelConfig(max_length_tokens=2048))
    """Shape of the embedded model (only when ``model`` is ``embedded``)."""
    dataset_path: str = "data/sim-tiny"
    """Dataset folder with an ``sft`` table (its layer prompts and job columns are used)."""
    output_dir: str = "runs/grpo"
    """Checkpoints and the final model (``final/``, any LoRA adapter merged)."""
    learning_rate: float = ranged(3e-5, 1e-9, 1.0)
    """Peak learning rate."""
    batch_size: int = ranged(16, 1, 4096)
    """Completions per step (a multiple of ``num_generations``)."""
    num_generations: int = ranged(8, 2, 256)
    """Answers sampled per prompt (the group GRPO compares)."""
    max_steps: int = ranged(150, 0, 10_000_000)
    """Optimisation steps (0: no GRPO; the closed loop then skips its phase 2)."""
    max_completion_length: int = ranged(320, 8, 32768)
    """Tokens per answer (per turn in multi-turn mode; also the closed loop's evaluation budget)."""
    temperature: float = ranged(0.7, 0.01, 5.0)
    """Sampling temperature."""
    scale_rewards: str = ranged("group", choices=("group", "batch", "none"))
    """How a completion's advantage (its reward minus its group's mean) is scaled (TRL's ``scale_rewards``):
    divided by the group's standard deviation (``group``, GRPO's original rule), by the batch's (``batch``),
    or not at all (``none``, Dr. GRPO). Dividing by a group's spread makes a group whose answers differ by a
    thousandth of a point push as hard as one where an answer fails and another prints."""
    screen_geometry: float = ranged(0.0, 0.0, 1.0)
    """Screen the prompts first (:mod:`training.screen`; writer prompts only): the starting model answers each
    once, greedily, and the prompts whose answer is fatal, has a defect or reaches geometry below this value
    come first, the others fill the steps' prompts. 0: no screening (TRL samples every row)."""
    expert_guidance: bool = False
    """Where no answer of a group prints, the expert's reference answer replaces the group's last one
    (:mod:`training.guidance`, LUFFY's off-policy guidance; writer prompts, single-turn only), so GRPO has a
    correct answer to reinforce on the prompts the model gets wrong."""
    beta: float = ranged(0.05, 0.0, 10.0)
    """KL penalty to the reference model (the model as GRPO starts; 0 keeps no reference)."""
    ref_model_sync_steps: int = ranged(0, 0, 10_000_000)
    """Move the reference model towards the policy every this many steps (0: the reference stays the model
    as GRPO started; needs beta > 0 and full fine-tuning)."""
    ref_model_mixup_alpha: float = ranged(0.6, 0.0, 1.0)
    """Weight of the policy when the reference is synced: ``ref = alpha · policy + (1 − alpha) · ref``."""
    multi_turn: bool = False
    """Append the simulator's feedback and let the model revise its answer (see the module docstring); in
    the closed loop also revision examples in the SFT data and revisions in evaluation."""
    revision_turns: int = ranged(1, 1, 4)
    """Revisions per answer in multi-turn mode."""
    revise: str = ranged("failures", choices=REVISE_MODES)
    """Multi-turn mode: send an answer back only when the simulator reported a failure (a refused or fatal
    move, a defect), or always."""
    reward_workers: int = ranged(0, 0, 256)
    """Processes that simulate rewards in parallel (0: in the training process)."""
    randomize: bool = False
    """Sim-to-real: score each group of answers on a printer randomised within ``configs/randomization.yaml``
    (``printer`` ranges), a new one per prompt and step (False: the nominal printer). Off by default: at the
    CPU default's budget it lowered the held-out reward (docs/results.md)."""
    use_vllm: bool = False
    """Generate the groups with vLLM on the training GPU (TRL's colocate mode; a CUDA GPU and the ``vllm``
    package; not with ``multi_turn``, whose rollout generates itself). Off: transformers generates."""
    checkpoint_interval: int = ranged(25, 1, 10_000_000)
    """Save a checkpoint every this many steps."""
    log_dir: str = ""
    """TensorBoard folder (empty: none)."""
    lora: bool = False
    """Train LoRA adapters instead of all weights (merged into the final model)."""
    lora_r: int = ranged(16, 1, 512)
    """LoRA rank."""
    backend: str = ranged("trl", choices=("trl", "unsloth"))
    """``trl`` or ``unsloth`` (NVIDIA GPU and the ``gpu`` extra)."""
    seed: int = ranged(0, 0, 2**31 - 1)
    """Seed of the data order, the sampling and the randomised printers."""

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.batch_size % self.num_generations:
            raise ConfigError(f"batch_size = {self.batch_size} must be a multiple of num_generations = "
                              f"{self.num_generations}: e.g. "
                              f"{self.num_generations * max(1, self.batch_size // self.num_generations)}")
        if self.use_vllm and self.multi_turn:
            raise ConfigError("use_vllm: true with multi_turn: true — the revision rollout generates with "
                              "transformers itself; switch one of them off")
        if self.expert_guidance and (self.multi_turn or self.use_vllm):
            raise ConfigError("expert_guidance: true with multi_turn or use_vllm: true — the guided rollout samples "
                              "single answers with transformers; switch one of them off")
        if self.ref_model_sync_steps > 0 and (self.beta == 0 or self.lora):
            raise ConfigError(f"ref_model_sync_steps = {self.ref_model_sync_steps}: syncing the reference model "
                              f"needs beta > 0 (beta = {self.beta}) and full fine-tuning (lora = "
                              f"{str(self.lora).lower()}); set ref_model_sync_steps: 0 or change those")

    def model_config(self) -> ModelConfig:
        """The model to start from."""
        return replace(self.embedded, name=self.model, seed=self.seed)


# -- multi-turn ---------------------------------------------------------------------------------------------------
def feedback_bridge(tokenizer: Any, prompt: str, feedback: str) -> tuple[str, str]:
    """How the chat template continues after an answer: ``(end_of_answer, feedback_turn)``.

    ``end_of_answer`` is what the template writes right after the answer's text (its end-of-turn marker and
    any newline); ``feedback_turn`` is the feedback as a user turn and the start of the next assistant turn.
    Found by rendering the conversation with a sentinel answer, so any chat template works whose rendering
    of a conversation extends the rendering of its first turns (true of ChatML, Qwen, Llama and the
    embedded template).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("multi-turn GRPO needs a tokenizer with a chat template (the feedback is a user turn)")
    head = tokenizer.apply_chat_template(conversation(prompt, [ANSWER_SENTINEL], ["x"])[:2], tokenize=False)
    full = tokenizer.apply_chat_template(conversation(prompt, [ANSWER_SENTINEL], [feedback]), tokenize=False,
                                         add_generation_prompt=True)
    if not full.startswith(head) or ANSWER_SENTINEL not in head:
        raise ValueError("the chat template does not render a conversation as an extension of its first turns; "
                         "multi-turn GRPO cannot splice the feedback between the model's answers")
    end_of_answer = head[head.index(ANSWER_SENTINEL) + len(ANSWER_SENTINEL):]
    return end_of_answer, full[len(head):]


def make_revision_rollout(tokenizer: Any, rows: Sequence[dict[str, Any]], scorer: LayerScorer, *,
                          max_completion_length: int, temperature: float, turns: int, revise: str = "failures"
                          ) -> Callable[[list[str], Any], dict[str, Any]]:
    """A TRL ``rollout_func`` for multi-turn mode.

    ``rows`` are the GRPO dataset's rows (raw ``prompt``, ``job``, ``layer``): TRL passes the rollout only
    the rendered prompts, which are mapped back to their job and layer here. For each prompt the model
    answers (:func:`agent.llm.sample`), the simulator scores the answer (:func:`envs.scoring.layer_feedback`,
    on the printer ``scorer`` draws for it, and the scores are handed to ``scorer`` for the reward parts)
    and, when the answer needs it (:func:`agent.llm.needs_revision`), the feedback is appended as a user
    turn and the model answers again, up to ``turns`` times. Returns the prompt's token ids, the whole
    exchange as the completion, ``env_mask`` (1 on the model's tokens, 0 on the feedback's), and, for the
    reward functions, ``revision`` (the last answer) and ``first_answer``. No per-token log-probabilities
    are returned: TRL only uses them to correct for a separate generation engine (vLLM), not used here.
    """
    lookup = {format_prompt(tokenizer, r["prompt"]): (r["prompt"], r["job"], int(r["layer"])) for r in rows}
    stops = stop_token_ids(tokenizer)

    def rollout(prompts: list[str], trainer: Any) -> dict[str, Any]:
        missing = [p for p in prompts if p not in lookup]
        if missing:
            raise KeyError(f"rollout: {len(missing)} prompt(s) not in the GRPO dataset, e.g. {missing[0][:120]!r}")
        model = trainer.accelerator.unwrap_model(trainer.model)
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        contexts = [list(ids) for ids in prompt_ids]
        completion: list[list[int]] = [[] for _ in prompts]
        mask: list[list[int]] = [[] for _ in prompts]
        answers: list[list[str]] = [[] for _ in prompts]
        active = list(range(len(prompts)))
        for turn in range(turns + 1):
            new = sample(model, tokenizer, [contexts[i] for i in active], max_completion_length, temperature)
            for i, ids in zip(active, new, strict=True):
                completion[i] += ids
                mask[i] += [1] * len(ids)
                contexts[i] += ids
                answers[i].append(tokenizer.decode(ids, skip_special_tokens=True))
            if turn == turns:
                break
            still = []
            for i, ids in zip(active, new, strict=True):
                raw, job_json, layer = lookup[prompts[i]]
                # The printer the reward will use (randomised in sim-to-real training) gives the feedback.
                seed = scorer.physics_seed(job_json, layer, int(trainer.state.global_step))
                scores, feedback = layer_feedback(answers[i][-1], PrintJob.from_json(job_json), layer, seed)
                # The reward functions score the same answer on the same printer: hand them this run.
                scorer.remember(answers[i][-1], job_json, layer, seed, scores)
                if not needs_revision(revise, scores.fatal, scores.defects):
                    continue
                still.append(i)
                end_of_answer, feedback_turn = feedback_bridge(tokenizer, raw, feedback)
                ended = bool(ids) and ids[-1] in stops
                stop_text = tokenizer.decode(ids[-1:]) if ended else ""
                if stop_text and end_of_answer.startswith(stop_text):
                    end_of_answer = end_of_answer[len(stop_text):]
                env = tokenizer(end_of_answer + feedback_turn, add_special_tokens=False)["input_ids"]
                completion[i] += env
                mask[i] += [0] * len(env)
                contexts[i] += env
            active = still
            if not active:
                break
        return {"prompt_ids": prompt_ids, "completion_ids": completion, "logprobs": None, "env_mask": mask,
                "revision": [a[-1] for a in answers], "first_answer": [a[0] for a in answers]}

    return rollout


# -- the trainer --------------------------------------------------------------------------------------------------
class RewardTiming(transformers.TrainerCallback):
    """Adds ``reward_time_s`` (seconds the reward functions took in the step) and ``reward_share`` (of the
    step's wall time, generation and optimisation included) to each step's logs, and stops the reward
    worker processes when training ends. Added before any other callback, so later ones see the values."""

    def __init__(self, reward_funcs: Sequence[Any]) -> None:
        self.reward_funcs = list(reward_funcs)
        timers = [getattr(f, "timer", None) for f in self.reward_funcs]
        self.timers = list({id(t): t for t in timers if isinstance(t, RewardTimer)}.values())
        self.started = time.perf_counter()
        self.metrics: dict[str, float] = {}

    def on_step_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        for timer in self.timers:
            timer.take()
        self.started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        step_s = time.perf_counter() - self.started
        reward_s = sum(timer.take() for timer in self.timers)
        self.metrics = {"reward_time_s": reward_s, "reward_share": reward_s / step_s if step_s > 0 else 0.0}

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **_: Any) -> None:
        if logs is not None and "loss" in logs:
            logs.update(self.metrics)

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        for scorer in {id(s): s for f in self.reward_funcs if (s := getattr(f, "scorer", None))}.values():
            scorer.close()


def make_trainer(model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerBase,
                 rows: datasets.Dataset, settings: GRPOSettings, reward_funcs: Sequence[Any] | None = None,
                 report_to: Sequence[str] = ()) -> Any:
    """The GRPO trainer of layerloop for ``settings`` on the dataset ``rows``, writing to
    ``settings.output_dir``. Without ``reward_funcs``: the writer's layer reward on ``rows`` from
    :func:`training.data.to_grpo` (single- or multi-turn), all parts scored by one
    :class:`~training.rewards.LayerScorer`; with them (e.g. ``[SupervisorReward()]``): those, weight 1."""
    rollout = None
    weights: list[float] | None = None
    if reward_funcs is None:
        scorer = LayerScorer(settings.reward_workers, settings.seed if settings.randomize else None)
        funcs, weights = layer_reward_functions(scorer, settings.multi_turn)
        if settings.multi_turn:
            rollout = make_revision_rollout(tokenizer, list(rows), scorer,
                                            max_completion_length=settings.max_completion_length,
                                            temperature=settings.temperature, turns=settings.revision_turns,
                                            revise=settings.revise)
        elif settings.expert_guidance:
            rollout = make_guided_rollout(tokenizer, list(rows), scorer, num_generations=settings.num_generations,
                                          max_completion_length=settings.max_completion_length,
                                          temperature=settings.temperature)
    else:
        funcs = list(reward_funcs)
    turns = settings.revision_turns + 1 if settings.multi_turn else 1
    trainer = make_grpo_trainer(
        model, tokenizer, rows, funcs, reward_weights=weights, output_dir=settings.output_dir,
        learning_rate=settings.learning_rate, batch_size=settings.batch_size,
        num_generations=settings.num_generations, max_completion_length=settings.max_completion_length * turns,
        beta=settings.beta, max_steps=settings.max_steps, seed=settings.seed, logging_steps=1,
        save_steps=settings.checkpoint_interval, temperature=settings.temperature,
        scale_rewards=settings.scale_rewards, lora=settings.lora,
        lora_r=settings.lora_r, backend=settings.backend, rollout_func=rollout,
        ref_model_sync_steps=settings.ref_model_sync_steps, ref_model_mixup_alpha=settings.ref_model_mixup_alpha,
        use_vllm=settings.use_vllm, report_to=report_to)
    trainer.add_callback(RewardTiming(funcs))
    return trainer


SCREEN_BATCH = 8
"""Prompts the screening answers together."""


def screened_rows(model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerBase,
                  rows: datasets.Dataset, settings: GRPOSettings) -> datasets.Dataset:
    """``rows`` screened by ``model`` when ``settings.screen_geometry`` > 0 (the record in
    ``settings.output_dir``), else unchanged."""
    if settings.screen_geometry <= 0:
        return rows
    needed = settings.max_steps * settings.batch_size // settings.num_generations
    policy = LLMPolicy(model, tokenizer, max_new_tokens=settings.max_completion_length, batch_size=SCREEN_BATCH)
    found = screen_rows(policy, rows, prompts_needed=needed, geometry_below=settings.screen_geometry,
                        seed=settings.seed, folder=Path(settings.output_dir))
    return rows.select(found.kept)


def train(config: GRPOSettings) -> Path:
    """Run GRPO; returns the folder of the final model."""
    if config.max_steps == 0:
        raise ConfigError("max_steps = 0: nothing to train (0 only skips phase 2 of the closed loop); give 1 or more")
    check_backend(config.backend)
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    torch.manual_seed(config.seed)
    model, tokenizer = load_model_and_tokenizer(config.model_config())
    table = load_table(config.dataset_path, "sft", split="train")
    rows = screened_rows(model, tokenizer, to_grpo(table, reference=config.expert_guidance), config)
    trainer = make_trainer(model, tokenizer, rows, config, report_to=["tensorboard"] if config.log_dir else [])
    out = Path(config.output_dir)
    train_and_save(trainer, tokenizer, out)
    return out / FINAL_DIR


def main(argv: list[str] | None = None) -> int:
    return config_main(argv, "python -m training.grpo", __doc__.split("\n")[0], GRPOSettings, train)


if __name__ == "__main__":
    sys.exit(main())
