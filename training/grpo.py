"""GRPO on simulator rewards: ``python -m training.grpo --config configs/grpo-tiny.yaml``.

Reinforcement of a (usually supervised-tuned) model with TRL's ``GRPOTrainer``: each prompt of the
dataset's ``sft`` table (one layer of a job) is answered ``num_generations`` times, every answer is run on
the embedded simulator after the expert's program up to that layer, and the answers of one prompt are
compared on :func:`envs.rewards.layer_reward`. The reward is handed to TRL in its parts (geometry,
extrusion, time, penalty) with their weights, so each part is logged on its own.

**Multi-turn mode** (``multi_turn: true``): an answer is not final at once. The simulator's feedback on it
— its scores and each failure with the line number in the answer — is appended as a user turn, and the
model writes the layer again; ``revision_turns`` times. This runs through TRL's ``rollout_func`` (the
installed TRL has it; ``environment_factory`` would need a tool-calling chat template, which G-code answers
do not use). The whole exchange is one completion for TRL, with the feedback tokens masked out of the loss
(``env_mask``); the reward is the last revision's, and the first answer's reward is logged beside it
(``first_answer_reward``, weight 0) so the gain from revising is visible. The model learns the format
from revision examples added to its supervised data (:func:`revision_examples`): a perturbed layer, the
simulator's feedback on it, and the reference layer as the answer.

The closed loop (:mod:`training.sim_loop`) runs the same trainer as its phase 2.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sim_bridge.config import ConfigError, ranged
from training.model import ModelConfig

REVISION_REQUEST = ("Simulator feedback on your G-code for this layer: {feedback}.\n"
                    "Write the layer again, corrected. Answer with G-code only.")
"""The user turn that carries the simulator's feedback and asks for a revision."""
ANSWER_SENTINEL = "\x00answer\x00"
"""Stands in for an answer while finding where a chat template puts text around it."""


@dataclass(frozen=True)
class GRPOSettings:
    """GRPO settings (YAML keys map 1:1; see configs/grpo-tiny.yaml)."""

    model: str = "runs/sft/final"
    """The model to reinforce: a fine-tuned folder (``training.sft``'s ``final/``), ``embedded``, or a
    Hugging Face causal LM id or local path."""
    embedded: ModelConfig = field(default_factory=lambda: ModelConfig(max_length_tokens=2048))
    """Shape of the embedded model (only when ``model`` is ``embedded``)."""
    dataset_path: str = "data/sim-tiny"
    """Dataset folder with an ``sft`` table (its layer prompts and job columns are used)."""
    output_dir: str = "runs/grpo"
    """Checkpoints and the final model (``final/``)."""
    learning_rate: float = ranged(3e-5, 1e-9, 1.0)
    """Peak learning rate."""
    batch_size: int = ranged(16, 1, 4096)
    """Completions per step (a multiple of ``num_generations``)."""
    num_generations: int = ranged(8, 2, 256)
    """Answers sampled per prompt (the group GRPO compares)."""
    max_steps: int = ranged(100, 1, 10_000_000)
    """Optimisation steps."""
    max_completion_length: int = ranged(320, 8, 32768)
    """Tokens per answer (per turn in multi-turn mode)."""
    temperature: float = ranged(0.7, 0.01, 5.0)
    """Sampling temperature."""
    beta: float = ranged(0.05, 0.0, 10.0)
    """KL penalty to the reference model (the model as GRPO starts; 0 keeps no reference)."""
    ref_model_sync_steps: int = ranged(0, 0, 10_000_000)
    """Move the reference model towards the policy every this many steps (0: the reference stays the model
    as GRPO started; needs beta > 0 and full fine-tuning)."""
    ref_model_mixup_alpha: float = ranged(0.6, 0.0, 1.0)
    """Weight of the policy when the reference is synced: ``ref = alpha · policy + (1 − alpha) · ref``."""
    multi_turn: bool = False
    """Append the simulator's feedback and let the model revise its answer (see the module docstring)."""
    revision_turns: int = ranged(1, 1, 4)
    """Revisions per answer in multi-turn mode."""
    revise: str = ranged("failures", choices=("failures", "always"))
    """Multi-turn mode: send an answer back only when the simulator reported a failure (a refused or fatal
    move, a defect), or always."""
    reward_workers: int = ranged(0, 0, 256)
    """Processes that simulate rewards in parallel (0: in the training process)."""
    randomize: bool = False
    """Sim-to-real: score each group of answers on a printer randomised within ``configs/randomization.yaml``
    (``printer`` ranges), a new one per prompt and step (False: the nominal printer)."""
    checkpoint_interval: int = ranged(25, 1, 10_000_000)
    """Save a checkpoint every this many steps."""
    log_dir: str = ""
    """TensorBoard folder (empty: none)."""
    lora: bool = False
    """Train LoRA adapters instead of all weights."""
    lora_r: int = ranged(16, 1, 512)
    """LoRA rank."""
    backend: str = ranged("trl", choices=("trl", "unsloth"))
    """``trl`` or ``unsloth`` (NVIDIA GPU and the ``gpu`` extra)."""
    seed: int = ranged(0, 0, 2**31 - 1)
    """Seed of the data order and the sampling."""

    def __post_init__(self) -> None:
        if self.batch_size % self.num_generations:
            raise ConfigError(f"batch_size = {self.batch_size} must be a multiple of num_generations = "
                              f"{self.num_generations}: e.g. "
                              f"{self.num_generations * max(1, self.batch_size // self.num_generations)}")


# -- rewards ----------------------------------------------------------------------------------------------------
def reward_functions(multi_turn: bool) -> tuple[list[Callable[..., list[float | None]]], list[float]]:
    """The reward functions and weights for TRL: the parts of ``layer_reward`` (scored on the last revision
    in multi-turn mode) and, in multi-turn mode, the first answer's reward with weight 0 (logged only)."""
    from envs.rewards import LAYER_REWARD_PARTS, LAYER_REWARD_WEIGHTS, layer_reward

    if not multi_turn:
        return list(LAYER_REWARD_PARTS), list(LAYER_REWARD_WEIGHTS)

    def first_answer_reward(completions: Sequence[Any], job: Sequence[str] | None = None,
                            layer: Sequence[int] | None = None, first_answer: Sequence[str] | None = None,
                            trainer_state: Any = None, **_: Any) -> list[float | None]:
        """:func:`envs.rewards.layer_reward` of the answer before any revision."""
        return layer_reward(first_answer if first_answer is not None else completions, job, layer, trainer_state)

    return [*LAYER_REWARD_PARTS, first_answer_reward], [*LAYER_REWARD_WEIGHTS, 0.0]


# -- multi-turn -------------------------------------------------------------------------------------------------
def revision_request(feedback: str) -> str:
    """The user turn asking for a revision after ``feedback``."""
    return REVISION_REQUEST.format(feedback=feedback.rstrip(". "))


def conversation(prompt: str, answers: Sequence[str], feedbacks: Sequence[str]) -> list[dict[str, str]]:
    """The chat of a multi-turn episode: the task, then each answer followed by the feedback on it."""
    turns = [{"role": "user", "content": prompt}]
    for answer, feedback in zip(answers, feedbacks, strict=True):
        turns += [{"role": "assistant", "content": answer}, {"role": "user", "content": revision_request(feedback)}]
    return turns


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


def needs_revision(revise: str, fatal: bool, defects: int) -> bool:
    """Whether an answer is sent back for revision: always, or (``"failures"``) only when the simulator
    reported a failure for it — a refused or fatal move, or a defect."""
    return revise == "always" or bool(fatal or defects)


def make_revision_rollout(tokenizer: Any, rows: Sequence[dict[str, Any]], *, max_completion_length: int,
                          temperature: float, turns: int, revise: str = "failures"
                          ) -> Callable[[list[str], Any], dict[str, Any]]:
    """A TRL ``rollout_func`` for multi-turn mode.

    ``rows`` are the GRPO dataset's rows (raw ``prompt``, ``job``, ``layer``): TRL passes the rollout only
    the rendered prompts, which are mapped back to their job and layer here. For each prompt the model
    answers, the simulator scores the answer (:func:`envs.scoring.layer_feedback`) and, when the answer
    needs it (:func:`needs_revision`), the feedback is appended as a user turn and the model answers again,
    up to ``turns`` times. Returns the prompt's token ids, the whole exchange as the completion,
    ``env_mask`` (1 on the model's tokens, 0 on the feedback's), and, for the reward functions,
    ``revision`` (the last answer) and ``first_answer``. No per-token log-probabilities are returned: TRL
    only uses them to correct for a separate generation engine (vLLM), not used here.
    """
    from training.model import format_prompt

    lookup = {format_prompt(tokenizer, r["prompt"]): (r["prompt"], r["job"], int(r["layer"])) for r in rows}

    def rollout(prompts: list[str], trainer: Any) -> dict[str, Any]:
        from envs.jobs import PrintJob
        from envs.rewards import physics_seed, remember_scores
        from envs.scoring import layer_feedback

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
                seed = physics_seed(job_json, layer, int(trainer.state.global_step))
                scores, feedback = layer_feedback(answers[i][-1], PrintJob.from_json(job_json), layer, seed)
                # The reward functions score the same answer on the same printer: hand them this run.
                remember_scores(answers[i][-1], job_json, layer, seed, scores)
                if not needs_revision(revise, scores.fatal, scores.defects):
                    continue
                still.append(i)
                end_of_answer, feedback_turn = feedback_bridge(tokenizer, raw, feedback)
                ended = bool(ids) and ids[-1] in _stop_ids(tokenizer)
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


def _stop_ids(tokenizer: Any) -> list[int]:
    from training.model import stop_token_ids

    return stop_token_ids(tokenizer)


def sample(model: Any, tokenizer: Any, contexts: Sequence[Sequence[int]], max_new_tokens: int,
           temperature: float) -> list[list[int]]:
    """One sampled continuation of each token context, up to and including its stop token."""
    import torch

    stops = _stop_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    width = max(len(c) for c in contexts)
    ids = torch.tensor([[pad] * (width - len(c)) + list(c) for c in contexts], device=model.device)
    attention = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=model.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                 do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                                 eos_token_id=stops, pad_token_id=pad)
    finally:
        model.train(was_training)
    result = []
    for row in out[:, width:].tolist():
        cut = next((k + 1 for k, t in enumerate(row) if t in stops), len(row))
        result.append(row[:cut])
    return result


# -- revision examples for SFT ----------------------------------------------------------------------------------
_E_WORD = re.compile(r"(?<=\sE)(-?\d+(?:\.\d*)?)")
_X_WORD = re.compile(r"(?<=\sX)(-?\d+(?:\.\d*)?)")


PERTURBATIONS = ("under_extrusion", "over_extrusion", "shifted", "truncated", "digit", "extrusion_spike")


def perturb_layer(text: str, rng: np.random.Generator, kind: str | None = None) -> tuple[str, str]:
    """A plausible wrong version of a layer's G-code and the name of what was done to it: extrusion scaled
    down or up, the outline shifted in X, the second half of the moves dropped, one digit of one coordinate
    doubled (the slip a small model makes: ``X1557.2`` for ``X157.2``), or one move extruding 10–20 times
    its share."""
    kind = kind or str(rng.choice(PERTURBATIONS))
    lines = text.splitlines()
    if kind == "truncated":
        return "\n".join(lines[: max(1, len(lines) // 2)]) + "\n", kind
    if kind == "shifted":
        dx = float(rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 3.0))
        return _X_WORD.sub(lambda m: f"{float(m.group(1)) + dx:.3f}", text), kind
    if kind in ("digit", "extrusion_spike"):
        pattern = re.compile(r"(?<=\s[XY])\d+" if kind == "digit" else r"(?<=\sE)\d+(?:\.\d*)?")
        candidates = [i for i, line in enumerate(lines) if line.startswith("G1") and pattern.search(line)]
        if not candidates:
            return perturb_layer(text, rng, "truncated")
        i = int(rng.choice(candidates))
        m = pattern.search(lines[i])
        assert m is not None
        if kind == "digit":
            k = int(rng.integers(0, len(m.group(0))))
            new = m.group(0)[: k + 1] + m.group(0)[k:]
        else:
            new = f"{float(m.group(0)) * rng.uniform(10.0, 20.0):.5f}"
        lines[i] = lines[i][: m.start()] + new + lines[i][m.end():]
        return "\n".join(lines) + "\n", kind
    factor = rng.uniform(0.4, 0.7) if kind == "under_extrusion" else rng.uniform(1.4, 1.9)
    return _E_WORD.sub(lambda m: f"{float(m.group(1)) * factor:.5f}", text), kind


def revision_examples(rows: Sequence[dict[str, Any]], seed: int, fraction: float, revise: str = "failures"
                      ) -> list[dict[str, Any]]:
    """Supervised revision examples (``messages``) from ``fraction`` of the layer rows of an ``sft`` table:
    the task, a perturbed answer (:func:`perturb_layer`), the simulator's real feedback on it, and the
    reference layer as the revision. With ``revise="failures"`` only perturbations the simulator reports a
    failure for are used (a few draws per row), as only those are sent back in that mode."""
    from envs.jobs import PrintJob
    from envs.scoring import layer_feedback

    rng = np.random.default_rng(seed)
    out = []
    for row in rows:
        if row["step_kind"] != "layer" or rng.random() >= fraction:
            continue
        job = PrintJob.from_json(row["job"])
        for _ in range(4):
            wrong, _ = perturb_layer(row["completion"], rng)
            scores, feedback = layer_feedback(wrong, job, int(row["layer"]))
            if needs_revision(revise, scores.fatal, scores.defects):
                out.append({"messages": [*conversation(row["prompt"], [wrong], [feedback]),
                                         {"role": "assistant", "content": row["completion"]}]})
                break
    return out


# -- the trainer ------------------------------------------------------------------------------------------------
def make_trainer(model: Any, tokenizer: Any, rows: Any, *, output_dir: Path, learning_rate: float,
                 batch_size: int, num_generations: int, max_completion_length: int, beta: float, max_steps: int,
                 seed: int, save_steps: int, temperature: float, lora: bool, lora_r: int, backend: str,
                 multi_turn: bool, revision_turns: int, revise: str = "failures", reward_workers: int = 0,
                 randomize: bool = False,
                 ref_model_sync_steps: int = 0, ref_model_mixup_alpha: float = 0.6,
                 report_to: Sequence[str] = ()) -> Any:
    """The GRPO trainer of layerloop on the dataset ``rows`` (a ``datasets.Dataset`` from
    :func:`training.data.to_grpo`), single- or multi-turn."""
    from envs.rewards import set_reward_randomization, set_reward_workers
    from training.backend import make_grpo_trainer

    set_reward_workers(reward_workers)
    set_reward_randomization(seed if randomize else None)
    funcs, weights = reward_functions(multi_turn)
    rollout = None
    if multi_turn:
        rollout = make_revision_rollout(tokenizer, list(rows), max_completion_length=max_completion_length,
                                        temperature=temperature, turns=revision_turns, revise=revise)
    return make_grpo_trainer(
        model, tokenizer, rows, funcs, reward_weights=weights, output_dir=str(output_dir),
        learning_rate=learning_rate, batch_size=batch_size, num_generations=num_generations,
        max_completion_length=max_completion_length * (revision_turns + 1 if multi_turn else 1), beta=beta,
        max_steps=max_steps, seed=seed, logging_steps=1, save_steps=save_steps, temperature=temperature,
        lora=lora, lora_r=lora_r, backend=backend, rollout_func=rollout, ref_model_sync_steps=ref_model_sync_steps,
        ref_model_mixup_alpha=ref_model_mixup_alpha, report_to=report_to)


def train(config: GRPOSettings) -> Path:
    """Run GRPO; returns the folder of the final model."""
    import torch

    from training.backend import check_backend
    from training.data import load_table, to_grpo
    from training.model import load_model_and_tokenizer, save_model
    from training.sim_loop import last_checkpoint

    check_backend(config.backend)
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    torch.manual_seed(config.seed)
    model, tokenizer = load_model_and_tokenizer(replace(config.embedded, name=config.model, seed=config.seed))
    rows = to_grpo(load_table(config.dataset_path, "sft", split="train"))
    out = Path(config.output_dir)
    trainer = make_trainer(
        model, tokenizer, rows, output_dir=out, learning_rate=config.learning_rate, batch_size=config.batch_size,
        num_generations=config.num_generations, max_completion_length=config.max_completion_length,
        beta=config.beta, max_steps=config.max_steps, seed=config.seed, save_steps=config.checkpoint_interval,
        temperature=config.temperature, lora=config.lora, lora_r=config.lora_r, backend=config.backend,
        multi_turn=config.multi_turn, revision_turns=config.revision_turns, revise=config.revise,
        reward_workers=config.reward_workers, randomize=config.randomize, ref_model_sync_steps=config.ref_model_sync_steps,
        ref_model_mixup_alpha=config.ref_model_mixup_alpha,
        report_to=["tensorboard"] if config.log_dir else [])
    trainer.train(resume_from_checkpoint=last_checkpoint(out))
    tuned = trainer.model.merge_and_unload() if config.lora and hasattr(trainer.model, "merge_and_unload") \
        else trainer.model
    return save_model(tuned, tokenizer, out / "final")


def main(argv: list[str] | None = None) -> int:
    from training.cli import config_main

    return config_main(argv, "python -m training.grpo", __doc__.split("\n")[0], GRPOSettings, train)


if __name__ == "__main__":
    sys.exit(main())
