"""Supervised fine-tuning on its own: ``python -m training.sft --config configs/sft-tiny.yaml``.

Trains a model on a dataset's ``sft`` table (prompt → reference G-code) with TRL's ``SFTTrainer`` (full or
LoRA), evaluating the loss on the validation split and checkpointing as configured; the closed loop
(:mod:`training.sim_loop`) runs the same trainer as its phase 1.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from sim_bridge.config import ranged
from training.model import ModelConfig


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning settings (the seed plan's keys, plus what they need)."""

    model: str = "embedded"
    """``embedded`` or a Hugging Face causal LM id or local path."""
    embedded: ModelConfig = field(default_factory=lambda: ModelConfig(max_length_tokens=2048))
    """Shape of the embedded model."""
    dataset_path: str = "data/sim-tiny"
    """Dataset folder with an ``sft`` table (``python -m training.make_dataset``)."""
    batch_size: int = ranged(4, 1, 4096)
    """Examples per step."""
    learning_rate: float = ranged(1e-3, 1e-9, 1.0)
    """Peak learning rate."""
    epochs: float = ranged(3.0, 0.01, 1000.0)
    """Passes over the training split."""
    max_steps: int = ranged(-1, -1, 10_000_000)
    """With a positive value, stop after this many steps."""
    output_dir: str = "runs/sft"
    """Checkpoints and the final model (``final/``)."""
    eval_interval: int = ranged(0, 0, 10_000_000)
    """Validation loss every this many steps (0: at the end only)."""
    checkpoint_interval: int = ranged(50, 1, 10_000_000)
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
    """Seed of the data order and the embedded model."""


def train(config: SFTConfig) -> Path:
    """Run SFT; returns the folder of the final model."""
    import torch

    from training.backend import check_backend, make_sft_trainer
    from training.data import load_table, to_sft
    from training.model import load_model_and_tokenizer

    check_backend(config.backend)
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    model, tokenizer = load_model_and_tokenizer(replace(config.embedded, name=config.model, seed=config.seed))
    train_ds = to_sft(load_table(config.dataset_path, "sft", split="train"))
    eval_ds = to_sft(load_table(config.dataset_path, "sft", split="validation"))
    out = Path(config.output_dir)
    trainer = make_sft_trainer(
        model, tokenizer, train_ds, eval_ds if len(eval_ds) else None, output_dir=str(out),
        learning_rate=config.learning_rate, batch_size=config.batch_size, epochs=config.epochs,
        max_steps=config.max_steps, lora=config.lora, lora_r=config.lora_r, seed=config.seed, logging_steps=1,
        eval_steps=config.eval_interval, save_steps=config.checkpoint_interval,
        max_length_tokens=config.embedded.max_length_tokens, backend=config.backend,
        report_to=["tensorboard"] if config.log_dir else [])
    from training.sim_loop import last_checkpoint

    trainer.train(resume_from_checkpoint=last_checkpoint(out))
    from training.model import save_model

    return save_model(trainer.model, tokenizer, out / "final")


def main(argv: list[str] | None = None) -> int:
    from training.cli import config_main

    return config_main(argv, "python -m training.sft", __doc__.split("\n")[0], SFTConfig, train)


if __name__ == "__main__":
    sys.exit(main())
