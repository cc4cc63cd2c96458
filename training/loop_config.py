"""The closed loop's config (``python -m training.sim_loop --config FILE``; YAML keys map 1:1).

The loop-wide settings sit at the top; the two training phases have their own sections, ``sft:`` and
``grpo:``, which are :class:`training.sft.SFTConfig` and :class:`training.grpo.GRPOSettings` — the same
classes (same keys, same ranges, same defaults) as the standalone trainers'. What a section would say about
the model, the data, the output folders, the backend and the seed the loop sets itself (:data:`LOOP_OWNED`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sim_bridge.config import ConfigError, apply_overrides, check_ranges, from_dict, ranged, read_yaml_mapping
from training.grpo import GRPOSettings
from training.model import ModelConfig
from training.sft import SFTConfig

TASKS = ("GcodeWriter-v1", "PrintSupervisor-v1")
"""The environments the loop trains a model for."""
LOOP_OWNED = {
    "sft": ("model", "embedded", "dataset_path", "output_dir", "log_dir", "backend", "seed", "eval_interval"),
    "grpo": ("model", "embedded", "dataset_path", "output_dir", "log_dir", "backend", "seed"),
}
"""Keys of the ``sft:`` and ``grpo:`` sections the loop fills in (from its top-level keys and the run
directory); a section leaves them out."""
MOVED_KEYS = {
    "batch_size": "sft.batch_size", "learning_rate": "sft.learning_rate", "epochs": "sft.epochs",
    "sft_max_steps": "sft.max_steps", "grpo_steps": "grpo.max_steps", "grpo_learning_rate": "grpo.learning_rate",
    "grpo_batch_size": "grpo.batch_size", "num_generations": "grpo.num_generations",
    "max_completion_length": "grpo.max_completion_length", "beta": "grpo.beta",
    "ref_model_sync_steps": "grpo.ref_model_sync_steps", "ref_model_mixup_alpha": "grpo.ref_model_mixup_alpha",
    "temperature": "grpo.temperature", "multi_turn": "grpo.multi_turn", "revision_turns": "grpo.revision_turns",
    "revise": "grpo.revise", "reward_workers": "grpo.reward_workers", "grpo_randomize": "grpo.randomize",
    "lora": "sft.lora and grpo.lora", "lora_r": "sft.lora_r and grpo.lora_r",
    "checkpoint_interval": "sft.checkpoint_interval and grpo.checkpoint_interval",
}
"""Flat keys of loop configs before the ``sft:``/``grpo:`` sections, and where each went."""


GRPO_SEED_OFFSET = 1_000_003
"""Added to ``seed`` for phase 2's jobs (``grpo_jobs``): a job stream no seed's supervised dataset uses."""
GRPO_DATA_DIR = "data-grpo"
"""Phase 2's dataset folder in the run directory."""


@dataclass(frozen=True)
class SimLoopConfig:
    """The main job's settings (YAML keys map 1:1; see configs/tiny-cpu.yaml)."""

    model: str = "embedded"
    """``embedded`` (built locally) or any Hugging Face causal LM id or local path."""
    embedded: ModelConfig = field(default_factory=lambda: ModelConfig(max_length_tokens=2048, num_layers=4))
    """Shape of the embedded model (ignored for other models, except ``max_length_tokens``). Four layers: the
    copy of the toolpath's numbers forms there within the CPU budget, not in two (docs/results.md)."""
    task: str = ranged("GcodeWriter-v1", choices=TASKS)
    """Environment the model learns: ``GcodeWriter-v1`` (one layer of G-code per turn) or
    ``PrintSupervisor-v1`` (live-tuning commands between layers; see :mod:`training.supervise`)."""
    backend: str = ranged("trl", choices=("trl", "unsloth"))
    """``trl`` (any device) or ``unsloth`` (NVIDIA GPU and the ``gpu`` extra), for every phase."""
    seed: int = ranged(0, 0, 2**31 - 1)
    """Seed of data order, sampling and initial weights, for every phase."""
    cpu_threads: int = ranged(2, 1, 256)
    """Torch threads on a machine without a GPU (at most its cores). More than one only with
    ``OMP_WAIT_POLICY=PASSIVE`` in the environment (``make run`` sets it): busy-waiting threads on shared cores
    can make a run many times slower."""
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(max_steps=3000, learning_rate=3e-3, warmup_steps=100))
    """Phase 1 (and the settings phase 3 does not set itself: batch size 1, its own learning rate and
    epochs): supervised fine-tuning; without ``model``, ``embedded``, ``dataset_path``, ``output_dir``,
    ``log_dir``, ``backend``, ``seed``, ``eval_interval``."""
    grpo: GRPOSettings = field(default_factory=lambda: GRPOSettings(max_steps=40, learning_rate=1e-4))
    """Phase 2: GRPO (``max_steps: 0`` skips it); ``multi_turn`` and ``revise`` also shape the SFT data and
    the evaluations; ``max_completion_length`` is also the evaluations' budget. Without ``model``,
    ``embedded``, ``dataset_path``, ``output_dir``, ``log_dir``, ``backend``, ``seed``."""
    revision_fraction: float = ranged(0.5, 0.0, 1.0)
    """Multi-turn mode (``grpo.multi_turn``): fraction of the SFT layer rows that also get a revision example."""
    supervisor_episodes: int = ranged(48, 1, 1_000_000)
    """``PrintSupervisor-v1``: rule-supervised training episodes (one SFT/GRPO row per layer)."""
    supervisor_difficulties: list[int] = ranged([2], 2, 4)
    """``PrintSupervisor-v1``: difficulties of the training and evaluation jobs."""
    dataset_path: str = ""
    """Supervised dataset folder; made there (or in the run directory when empty) if missing."""
    train_jobs: int = ranged(1024, 1, 10_000_000)
    """Jobs in the supervised dataset when it has to be made."""
    grpo_jobs: int = ranged(512, 0, 10_000_000)
    """Jobs of phase 2's own dataset (``GRPO_DATA_DIR`` in the run directory): fresh jobs of the same kinds,
    from a seed stream apart from the supervised dataset's (``seed`` + :data:`GRPO_SEED_OFFSET`), so GRPO
    samples prompts SFT did not fit (on its own training prompts the SFT model's groups all score about
    1.0 and GRPO has nothing to learn from). 0 reuses the supervised dataset's training rows."""
    train_difficulties: list[int] = ranged([0], 0, 4)
    """Difficulties of the training jobs."""
    part_kinds: list[str] = field(default_factory=lambda: ["rectangle", "polygon"])
    """Part kinds of the training jobs (empty: all)."""
    max_polygon_sides: int = ranged(6, 0, 64)
    """Longest polygon of the training jobs (0: any)."""
    workers: int = ranged(0, 0, 256)
    """Processes for dataset generation (0: one per core)."""
    eval_suite: str = "tiny-v0"
    """Held-out suite (envs/suites/NAME.json) for evaluation."""
    eval_episodes: int = ranged(64, 1, 100_000)
    """Episodes per phase evaluation (the suite is cycled)."""
    eval_randomized: bool = False
    """Also evaluate each phase on the randomised held-out suite: the same jobs, each episode on a printer
    perturbed within ``configs/randomization.yaml`` (seeded by episode; report section ``randomized``)."""
    eval_interval: int = ranged(0, 0, 10_000_000)
    """Evaluate every this many training steps on ``eval_episodes_during`` episodes (0: only at phase ends)."""
    eval_episodes_during: int = ranged(8, 1, 100_000)
    """Episodes of the evaluations during training."""
    output_dir: str = "runs"
    """Where run directories are made."""
    log_dir: str = ""
    """TensorBoard folder (empty: the run directory's ``tensorboard/``)."""
    real_world_dataset: str = ""
    """A ``real_world`` dataset for phase 3 (empty: no phase 3)."""
    real_world_learning_rate: float = ranged(2e-5, 1e-9, 1.0)
    """Phase 3 learning rate (conservative)."""
    real_world_epochs: float = ranged(1.0, 0.01, 100.0)
    """Phase 3 epochs."""

    def __post_init__(self) -> None:
        check_ranges(self)
        for section, owned in LOOP_OWNED.items():
            given = getattr(self, section)
            default = type(given)()
            for key in owned:
                if getattr(given, key) != getattr(default, key):
                    raise ConfigError(_owned_message(section, key))
        if self.grpo.multi_turn and self.task != "GcodeWriter-v1":
            raise ConfigError(f"grpo.multi_turn: true needs task GcodeWriter-v1 (task is {self.task!r}): only a "
                              "written layer has simulator feedback to revise against")

    @property
    def supervising(self) -> bool:
        return self.task == "PrintSupervisor-v1"

    def model_config(self) -> ModelConfig:
        """The model the loop starts from."""
        return replace(self.embedded, name=self.model, seed=self.seed)

    def sft_phase(self, output_dir: Path, **changes: Any) -> SFTConfig:
        """Phase 1's (or, with ``changes``, phase 3's) complete SFT config: the section plus what the loop
        sets."""
        return replace(self.sft, embedded=self.embedded, output_dir=str(output_dir), backend=self.backend,
                       seed=self.seed, **changes)

    def grpo_phase(self, output_dir: Path) -> GRPOSettings:
        """Phase 2's complete GRPO settings: the section plus what the loop sets."""
        return replace(self.grpo, embedded=self.embedded, output_dir=str(output_dir), backend=self.backend,
                       seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        """The config as YAML keys (the sections without the keys the loop sets), as ``config.yaml`` of a
        run directory holds it."""
        data = dataclasses.asdict(self)
        for section, owned in LOOP_OWNED.items():
            data[section] = {k: v for k, v in data[section].items() if k not in owned}
        return data


def _owned_message(section: str, key: str) -> str:
    where = {"model": "model (top level; each phase continues from the last)", "embedded": "embedded (top level)",
             "backend": "backend (top level)", "seed": "seed (top level)", "dataset_path": "dataset_path (top level)",
             "log_dir": "log_dir (top level)", "output_dir": "output_dir (top level; each phase writes RUN_DIR/PHASE)",
             "eval_interval": "eval_interval (top level: held-out evaluations during training)"}[key]
    return f"{section}.{key}: the loop sets it; use {where}"


def load_config(path: str | Path | None, overrides: Sequence[str] = (), seed: int | None = None) -> SimLoopConfig:
    """The config from a YAML file (or the defaults) with command-line overrides (``--set KEY=VALUE``,
    ``--seed N``: :func:`sim_bridge.config.apply_overrides`), validated; a key of the flat layout before the
    ``sft:``/``grpo:`` sections fails naming its new place."""
    data = read_yaml_mapping(path) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    if overrides or seed is not None:
        data = apply_overrides(data, overrides, seed)
        source += " with --set/--seed"
    moved = [f"{key} moved to {MOVED_KEYS[key]}" for key in data if key in MOVED_KEYS]
    if moved:
        raise ConfigError(f"{source}: " + "; ".join(moved) + " (the loop config has sft: and grpo: sections)")
    for section in ("sft", "grpo"):
        given = data.get(section)
        if not isinstance(given, dict):
            continue
        for key in given:
            if key in LOOP_OWNED[section]:
                raise ConfigError(f"{source}: {_owned_message(section, key)}")
    return from_dict(SimLoopConfig, data, source)
