"""Supervised fine-tuning on its own: ``python -m training.sft --config configs/sft-tiny.yaml``.

Trains a model on a dataset's ``sft`` table (prompt → reference G-code) with TRL's ``SFTTrainer`` (full or
LoRA), evaluating the loss on the validation split and checkpointing as configured, and saves ``final/``
with any LoRA adapter merged. The closed loop (:mod:`training.sim_loop`) runs the same trainer as its
phase 1, with the same settings (its ``sft:`` section is an :class:`SFTConfig`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers

from sim_bridge.config import check_ranges, ranged
from training.backend import check_backend, make_sft_trainer
from training.checkpoints import FINAL_DIR, train_and_save
from training.cli import config_main
from training.data import load_table, to_sft
from training.model import ModelConfig, load_model_and_tokenizer


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning settings (YAML keys map 1:1; see configs/sft-tiny.yaml). In the closed
    loop's ``sft:`` section, the loop sets ``model``, ``embedded``, ``dataset_path``, ``output_dir``,
    ``log_dir``, ``backend``, ``seed`` and ``eval_interval`` itself (:data:`training.loop_config.LOOP_OWNED`)."""

    model: str = "embedded"
    """``embedded`` or a Hugging Face causal LM id or local path."""
    embedded: ModelConfig = field(default_factory=lambda: ModelConfig(max_length_tokens=2048))
    """Shape of the embedded model (and, for any model, ``max_length_tokens``: the longest training row)."""
    dataset_path: str = "data/sim-tiny"
    """Dataset folder with an ``sft`` table (``python -m training.make_dataset``)."""
    batch_size: int = ranged(4, 1, 4096)
    """Examples per step."""
    learning_rate: float = ranged(2e-3, 1e-9, 1.0)
    """Peak learning rate (reached after ``warmup_steps``, then decayed linearly to 0)."""
    warmup_steps: int = ranged(0, 0, 10_000_000)
    """Steps over which the learning rate rises linearly from 0 to its peak."""
    epochs: float = ranged(16.0, 0.01, 1000.0)
    """Passes over the training split."""
    max_steps: int = ranged(-1, -1, 10_000_000)
    """With a positive value, stop after this many steps (overrides ``epochs``)."""
    output_dir: str = "runs/sft"
    """Checkpoints and the final model (``final/``, any LoRA adapter merged)."""
    eval_interval: int = ranged(0, 0, 10_000_000)
    """Validation loss every this many steps (0: none)."""
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
    """Seed of the data order and the embedded model."""

    def __post_init__(self) -> None:
        check_ranges(self)

    def model_config(self) -> ModelConfig:
        """The model to start from."""
        return replace(self.embedded, name=self.model, seed=self.seed)


def make_trainer(model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerBase,
                 train_rows: datasets.Dataset, config: SFTConfig, eval_rows: datasets.Dataset | None = None,
                 report_to: Sequence[str] = ()) -> Any:
    """TRL's ``SFTTrainer`` for ``config`` on ``train_rows`` (prompt/completion or ``messages`` rows),
    writing checkpoints to ``config.output_dir``."""
    return make_sft_trainer(
        model, tokenizer, train_rows, eval_rows if eval_rows is not None and len(eval_rows) else None,
        output_dir=config.output_dir, learning_rate=config.learning_rate, batch_size=config.batch_size,
        warmup_steps=config.warmup_steps, epochs=config.epochs, max_steps=config.max_steps, lora=config.lora, lora_r=config.lora_r, seed=config.seed,
        logging_steps=1, eval_steps=config.eval_interval, save_steps=config.checkpoint_interval,
        max_length_tokens=config.embedded.max_length_tokens, backend=config.backend, report_to=report_to)


def train(config: SFTConfig) -> Path:
    """Run SFT; returns the folder of the final model."""
    check_backend(config.backend)
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    model, tokenizer = load_model_and_tokenizer(config.model_config())
    trainer = make_trainer(model, tokenizer, to_sft(load_table(config.dataset_path, "sft", split="train")), config,
                           to_sft(load_table(config.dataset_path, "sft", split="validation")),
                           report_to=["tensorboard"] if config.log_dir else [])
    out = Path(config.output_dir)
    train_and_save(trainer, tokenizer, out)
    return out / FINAL_DIR


def main(argv: list[str] | None = None) -> int:
    return config_main(argv, "python -m training.sft", __doc__.split("\n")[0], SFTConfig, train)


if __name__ == "__main__":
    sys.exit(main())
