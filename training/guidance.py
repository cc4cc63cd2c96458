"""Expert guidance in GRPO's groups (``grpo.expert_guidance``): the reference answer joins a group that failed.

GRPO can only reinforce a correct answer that it samples: where every answer of a group fails, the group
teaches little. (On the CPU default this is rare — 0-5 % of groups, 10-21 % on screened prompts; most
groups hold an answer that prints, docs/results.md, item 10 — so guidance is off there.) With guidance the rollout
samples the group as TRL would, scores every answer in the simulator (the reward's own scorer, so nothing is
simulated twice), and where no answer of a group prints — each one fatal, with a defect, or below the
success bar's geometry (:data:`envs.gcode_writer.SUCCESS_GEOMETRY`) — the group's last answer is replaced by
the expert's reference answer for that prompt (the ``reference`` column: the SFT table's completion). That
answer then carries the group's best advantage and the failed samples the negative ones: an off-policy
demonstration inside the on-policy objective, as in LUFFY (Yan et al., 2025, "Learning to Reason under
Off-Policy Guidance"). Groups where the model already prints are left alone, so the demonstrations go only
where the model needs them. ``guided_groups`` logs the share of each step's groups that were given one.

The rewards are unchanged: the reference is scored like any answer, and held-out evaluation never sees it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from agent.llm import format_prompt, sample, stop_token_ids
from envs.gcode_writer import SUCCESS_GEOMETRY
from envs.rewards import StepScores
from training.backend import log_step_metric
from training.data import REFERENCE_COLUMN
from training.rewards import LayerScorer


def prints(scores: StepScores) -> bool:
    """Whether a layer answer meets the success rule for its layer: no fatal step, no defect, geometry at the bar."""
    return not scores.fatal and scores.defects == 0 and scores.geometry >= SUCCESS_GEOMETRY


def make_guided_rollout(tokenizer: Any, rows: Sequence[dict[str, Any]], scorer: LayerScorer, *,
                        num_generations: int, max_completion_length: int, temperature: float
                        ) -> Callable[[list[str], Any], dict[str, Any]]:
    """A TRL ``rollout_func`` that samples each group and puts the reference answer into groups that failed.

    ``rows`` are the GRPO rows (raw ``prompt``, ``job``, ``layer``, ``reference``); TRL hands the rollout
    the rendered prompts of a batch, each group's ``num_generations`` copies one after another (the order its
    advantages are computed in). A reference longer than ``max_completion_length`` tokens is not used (TRL
    would cut it); such groups stay as sampled.
    """
    missing = [k for k in ("prompt", "job", "layer", REFERENCE_COLUMN) if rows and k not in rows[0]]
    if missing:
        raise ValueError(f"expert guidance needs the GRPO rows' columns {missing} (training.data.to_grpo with "
                         f"reference=True)")
    stops = stop_token_ids(tokenizer)
    lookup: dict[str, tuple[str, int, list[int]]] = {}
    for r in rows:
        reference = tokenizer(r[REFERENCE_COLUMN], add_special_tokens=False)["input_ids"] + stops[:1]
        lookup[format_prompt(tokenizer, r["prompt"])] = (r["job"], int(r["layer"]), reference)

    def rollout(prompts: list[str], trainer: Any) -> dict[str, Any]:
        if len(prompts) % num_generations:
            raise ValueError(f"rollout: {len(prompts)} prompts is not a whole number of groups of {num_generations}")
        unknown = [p for p in prompts if p not in lookup]
        if unknown:
            raise KeyError(f"rollout: {len(unknown)} prompt(s) not in the GRPO dataset, e.g. {unknown[0][:120]!r}")
        model = trainer.accelerator.unwrap_model(trainer.model)
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        completions = sample(model, tokenizer, prompt_ids, max_completion_length, temperature)
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in completions]
        jobs = [lookup[p][0] for p in prompts]
        layers = [lookup[p][1] for p in prompts]
        step = int(trainer.state.global_step)
        with scorer.timer.timing():
            scores = scorer.scores(texts, jobs, layers, step)
        guided = 0
        for start in range(0, len(prompts), num_generations):
            group = range(start, start + num_generations)
            reference = lookup[prompts[start]][2]
            if any(prints(scores[i]) for i in group) or len(reference) > max_completion_length:
                continue
            completions[group[-1]] = list(reference)
            guided += 1
        groups = len(prompts) // num_generations
        log_step_metric(trainer, "guided_groups", guided / groups)
        return {"prompt_ids": prompt_ids, "completion_ids": completions, "logprobs": None}

    return rollout
