"""Checkpoints and final models of the trainers (``training.sft``, ``training.grpo``, the closed loop).

A phase's folder holds the trainer's ``checkpoint-N`` folders and, once it finished, ``final/``: the model
with any LoRA adapter merged into its weights (so every ``final/`` loads as a plain model, the next phase
included) and its tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import transformers

from training.model import save_model

FINAL_DIR = "final"
"""Sub-folder of a phase's folder holding its final model."""


def last_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint: a kill can leave a half-written one, which has no trainer state yet
    (the trainer writes it last) and is skipped."""
    complete = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    complete.sort(key=lambda p: int(p.name.split("-")[-1]))
    return str(complete[-1]) if complete else None


def merged(model: Any) -> transformers.PreTrainedModel:
    """``model`` with its LoRA adapter merged into the weights (a model without one, unchanged)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def train_and_save(trainer: transformers.Trainer, tokenizer: transformers.PreTrainedTokenizerBase, folder: Path,
                   save: bool = True) -> transformers.PreTrainedModel:
    """Train (resuming from ``folder``'s last complete checkpoint), merge any LoRA adapter and, with
    ``save``, write the model to ``folder/final``; returns the merged model. Under several processes only
    the main one saves (``save``), but every process merges, so all continue with the same model."""
    trainer.train(resume_from_checkpoint=last_checkpoint(folder))
    tuned = merged(trainer.model)
    if save:
        save_model(tuned, tokenizer, folder / FINAL_DIR)
    return tuned
