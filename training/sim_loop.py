"""The closed loop: ``python -m training.sim_loop [--config configs/tiny-cpu.yaml] [--resume RUN_DIR]``.

A language model learns to write G-code: imitation on the reference program, then reinforcement on
simulated outcomes, evaluated on a held-out suite before and after every phase.

1. **Phase 1, simulation-first** — build or load the model; make the supervised dataset if it is missing
   (``training.make_dataset``); evaluate ("before"); SFT; evaluate ("sft").
2. **Phase 2, sim-to-real** — GRPO with the environment's reward function (``envs.rewards.layer_reward``);
   evaluate ("grpo").
3. **Phase 3, real-world refinement** — only when ``real_world_dataset`` is set: SFT on human-approved real
   programs only, at a conservative learning rate; evaluate ("real_world").

Everything lands in a run directory (``runs/TASK-SEED-TIME``): ``config.yaml``, ``state.json`` (finished
phases), ``metrics.jsonl`` (``train/``, ``eval/``, ``safety/``), TensorBoard logs, checkpoints, the final
models, plots and ``report.json`` (``{"phases": {"before": …, "sft": …, "grpo": …}}``). A run killed at any
point (even with SIGKILL) continues with ``--resume RUN_DIR`` from its last checkpoint: finished phases are
skipped, the phase in progress resumes where its trainer last saved, and the trainer skips the batches it
had already seen.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from sim_bridge.config import ConfigError, from_dict, ranged
from training.model import ModelConfig

PHASES = ("before", "sft", "grpo", "real_world")


@dataclass(frozen=True)
class SimLoopConfig:
    """The main job's settings (YAML keys map 1:1; see configs/tiny-cpu.yaml)."""

    model: str = "embedded"
    """``embedded`` (built locally) or any Hugging Face causal LM id or local path."""
    embedded: ModelConfig = field(default_factory=lambda: ModelConfig(max_length_tokens=2048))
    """Shape of the embedded model (ignored for other models, except ``max_length_tokens``)."""
    task: str = ranged("GcodeWriter-v0", choices=("GcodeWriter-v0", "PrintSupervisor-v1"))
    """Environment the model learns: ``GcodeWriter-v0`` (one layer of G-code per turn) or
    ``PrintSupervisor-v1`` (live-tuning commands between layers; see :mod:`training.supervise`)."""
    multi_turn: bool = False
    """``GcodeWriter-v0`` only: the simulator's feedback on an answer is appended and the model revises it
    (GRPO through TRL's ``rollout_func``, revision examples in the SFT data, revisions in evaluation)."""
    revision_turns: int = ranged(1, 1, 4)
    """Revisions per answer in multi-turn mode."""
    revise: str = ranged("failures", choices=("failures", "always"))
    """Multi-turn mode: send an answer back only when the simulator reported a failure (a refused or fatal
    move, a defect), or always."""
    revision_fraction: float = ranged(0.5, 0.0, 1.0)
    """Multi-turn mode: fraction of the SFT layer rows that also get a revision example."""
    supervisor_episodes: int = ranged(48, 1, 1_000_000)
    """``PrintSupervisor-v1``: expert-supervised training episodes (one SFT/GRPO row per layer)."""
    supervisor_difficulties: list[int] = ranged([2], 2, 4)
    """``PrintSupervisor-v1``: difficulties of the training and evaluation jobs."""
    reward_workers: int = ranged(0, 0, 256)
    """Processes that simulate GRPO rewards in parallel (0: in the training process)."""
    grpo_randomize: bool = False
    """Sim-to-real phase 2: the writer's GRPO rewards come from printers randomised within
    ``configs/randomization.yaml`` (``printer`` ranges), a new one per prompt and step; evaluation stays on
    the nominal printer. Off by default: at the CPU default's budget it lowered the held-out reward
    (docs/results.md)."""
    backend: str = ranged("trl", choices=("trl", "unsloth"))
    """``trl`` (any device) or ``unsloth`` (NVIDIA GPU and the ``gpu`` extra)."""
    lora: bool = False
    """Train LoRA adapters instead of all weights."""
    lora_r: int = ranged(16, 1, 512)
    """LoRA rank."""
    dataset_path: str = ""
    """Supervised dataset folder; made there (or in the run directory when empty) if missing."""
    train_jobs: int = ranged(256, 1, 10_000_000)
    """Jobs in the supervised dataset when it has to be made."""
    train_difficulties: list[int] = ranged([0], 0, 4)
    """Difficulties of the training jobs."""
    part_kinds: list[str] = field(default_factory=lambda: ["rectangle", "polygon"])
    """Part kinds of the training jobs (empty: all)."""
    max_polygon_sides: int = ranged(6, 0, 64)
    """Longest polygon of the training jobs (0: any)."""
    batch_size: int = ranged(4, 1, 4096)
    """SFT batch size (examples per step)."""
    learning_rate: float = ranged(2e-3, 1e-8, 1.0)
    """SFT learning rate."""
    epochs: float = ranged(16.0, 0.01, 1000.0)
    """SFT epochs over the training split."""
    sft_max_steps: int = ranged(-1, -1, 10_000_000)
    """With a positive value, SFT stops after this many steps (overrides ``epochs``)."""
    grpo_steps: int = ranged(150, 0, 10_000_000)
    """GRPO optimisation steps (0 skips phase 2)."""
    grpo_learning_rate: float = ranged(3e-5, 1e-8, 1.0)
    """GRPO learning rate."""
    grpo_batch_size: int = ranged(16, 1, 4096)
    """Completions per GRPO step (a multiple of ``num_generations``)."""
    num_generations: int = ranged(8, 2, 256)
    """Completions per prompt (the group GRPO compares)."""
    max_completion_length: int = ranged(320, 8, 131072)
    """Longest completion in tokens (GRPO and evaluation)."""
    beta: float = ranged(0.05, 0.0, 10.0)
    """KL coefficient against the reference model (0: no reference model, as TRL's default)."""
    ref_model_sync_steps: int = ranged(0, 0, 10_000_000)
    """Move the reference model towards the policy every this many steps (0: the reference stays the model
    as GRPO started; needs beta > 0 and full fine-tuning)."""
    ref_model_mixup_alpha: float = ranged(0.6, 0.0, 1.0)
    """Weight of the policy when the reference is synced: ``ref = alpha · policy + (1 − alpha) · ref``."""
    temperature: float = ranged(0.7, 0.0, 10.0)
    """GRPO sampling temperature."""
    eval_suite: str = "tiny-v0"
    """Held-out suite (envs/suites/NAME.json) for evaluation."""
    eval_episodes: int = ranged(64, 1, 100_000)
    """Episodes per phase evaluation (the suite is cycled)."""
    eval_interval: int = ranged(0, 0, 10_000_000)
    """Evaluate every this many training steps on ``eval_episodes_during`` episodes (0: only at phase ends)."""
    eval_episodes_during: int = ranged(8, 1, 100_000)
    """Episodes of the evaluations during training."""
    checkpoint_interval: int = ranged(25, 1, 10_000_000)
    """Save a checkpoint every this many training steps."""
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
    seed: int = ranged(0, 0, 2**31 - 1)
    """Seed of data order, sampling and initial weights."""
    workers: int = ranged(0, 0, 256)
    """Processes for dataset generation (0: one per core)."""

    def __post_init__(self) -> None:
        if self.multi_turn and self.task != "GcodeWriter-v0":
            raise ConfigError(f"multi_turn: true needs task GcodeWriter-v0 (task is {self.task!r}): only a "
                              "written layer has simulator feedback to revise against")
        if self.grpo_batch_size % self.num_generations:
            raise ConfigError(f"grpo_batch_size = {self.grpo_batch_size} must be a multiple of num_generations = "
                              f"{self.num_generations} (GRPO compares the completions of one prompt): e.g. "
                              f"{self.num_generations * max(1, self.grpo_batch_size // self.num_generations)}")

    def model_config(self) -> ModelConfig:
        return replace(self.embedded, name=self.model, seed=self.seed)


def load_config(path: str | Path | None) -> SimLoopConfig:
    """The config from a YAML file (or the defaults), validated."""
    if path is None:
        return SimLoopConfig()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return from_dict(SimLoopConfig, data, str(path))


class RunLogger:
    """``metrics.jsonl`` plus TensorBoard, namespaced keys (``train/…``, ``eval/…``, ``safety/…``)."""

    def __init__(self, run_dir: Path, log_dir: Path, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        self.enabled = enabled
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(log_dir))
        except ImportError:
            print("warning: tensorboard is not installed; logging to metrics.jsonl only", file=sys.stderr)

    def log(self, phase: str, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"time": round(time.time(), 3), "phase": phase, "step": step, **metrics}
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{phase}/{key}", value, step)
            self.tb.flush()


def _eval_metrics(result: Any) -> dict[str, float]:
    d = result.as_dict()
    return {"eval/success_rate": d["success_rate"], "eval/mean_reward": d["mean_reward"],
            "eval/valid_gcode_rate": d["valid_gcode_rate"], "eval/mean_geometry": d["mean_geometry"],
            "safety/violations_per_1k_lines": d["safety_violations_per_1k_lines"], "eval/episodes": d["episodes"]}


def _policy(model: Any, tokenizer: Any, config: SimLoopConfig) -> Any:
    from training.model import generate

    def act(prompts: list[Any]) -> list[str]:
        was_training = model.training
        model.eval()
        try:
            return generate(model, tokenizer, prompts, max_new_tokens=config.max_completion_length, batch_size=8)
        finally:
            if was_training:
                model.train()

    return act


def _evaluate(model: Any, tokenizer: Any, config: SimLoopConfig, episodes: int) -> Any:
    from training.evaluate import evaluate
    from training.supervise import evaluate_supervisor

    if config.task == "PrintSupervisor-v1":
        return evaluate_supervisor(_policy(model, tokenizer, config), episodes, config.seed,
                                   config.supervisor_difficulties)
    return evaluate(_policy(model, tokenizer, config), config.eval_suite, episodes,
                    revisions=config.revision_turns if config.multi_turn else 0, revise=config.revise)


def _callbacks(phase: str, logger: RunLogger, model: Any, tokenizer: Any, config: SimLoopConfig) -> list[Any]:
    import transformers

    class Metrics(transformers.TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **_: Any) -> None:
            if logs and _is_main():
                logger.log(phase, state.global_step, {f"train/{k}": v for k, v in logs.items()
                                                      if isinstance(v, (int, float))})

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if config.eval_interval and state.global_step % config.eval_interval == 0:
                if _is_main():
                    result = _evaluate(model, tokenizer, config, config.eval_episodes_during)
                    logger.log(phase, state.global_step, _eval_metrics(result))
                _wait_for_everyone()

    return [Metrics()]


# -- several processes (accelerate launch) -------------------------------------------------------------------
def _processes() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _state() -> Any:
    import torch
    from accelerate import PartialState

    # On CPUs (torchrun, gloo) accelerate only forms a process group when told the run is on CPU; the
    # trainers later ask for the same shared state with use_cpu, so both must agree.
    return PartialState(cpu=not torch.cuda.is_available())


def _is_main() -> bool:
    """True in the process that evaluates and writes the run directory (the only one without accelerate)."""
    if _processes() == 1:
        return True
    return _state().is_main_process


def _wait_for_everyone() -> None:
    """Barrier between the processes of an ``accelerate launch`` (no-op in one process)."""
    if _processes() > 1:
        _state().wait_for_everyone()


def _shared_stamp() -> str:
    """The run directory's time stamp, the main process's in every process."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if _processes() == 1:
        return stamp
    from accelerate.utils import broadcast_object_list

    _state()
    return broadcast_object_list([stamp])[0]


def last_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint: a kill can leave a half-written one, which has no trainer state yet
    (the trainer writes it last) and is skipped."""
    complete = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    complete.sort(key=lambda p: int(p.name.split("-")[-1]))
    return str(complete[-1]) if complete else None


def _save_state(run_dir: Path, state: dict[str, Any]) -> None:
    tmp = run_dir / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, run_dir / "state.json")


def _dataset(config: SimLoopConfig, run_dir: Path) -> Path:
    from training.datafmt import DatasetError, read_manifest
    from training.make_dataset import DatasetConfig, make_dataset

    path = Path(config.dataset_path) if config.dataset_path else run_dir / "data"
    try:
        read_manifest(path)
        return path
    except DatasetError:
        pass
    data_config = DatasetConfig(name="loop", kind="simulation", seed=config.seed, jobs=config.train_jobs,
                                difficulties=list(config.train_difficulties), part_kinds=list(config.part_kinds),
                                max_polygon_sides=config.max_polygon_sides, defects_per_job=0, traces=False,
                                images=False, jobs_per_shard=max(1, config.train_jobs // 8), workers=config.workers)
    make_dataset(data_config, path)
    return path


def _sft_rows(config: SimLoopConfig, data: Path, run_dir: Path) -> Any:
    """The writer's SFT rows; in multi-turn mode as chat ``messages``, with revision examples added (made
    once per run and kept in the run directory, so a resumed run trains on the same rows)."""
    import datasets

    from training.data import load_table
    from training.grpo import revision_examples

    rows = load_table(data, "sft", split="train")
    if not config.multi_turn:
        return rows
    cached = run_dir / "revision-examples.jsonl"
    if not cached.is_file():
        examples = revision_examples(list(rows), config.seed, config.revision_fraction, config.revise)
        tmp = cached.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(e) + "\n" for e in examples))
        os.replace(tmp, cached)
    revisions = datasets.Dataset.from_list([json.loads(line) for line in cached.read_text().splitlines()])
    chats = rows.map(lambda r: {"messages": [{"role": "user", "content": r["prompt"]},
                                             {"role": "assistant", "content": r["completion"]}]},
                     remove_columns=rows.column_names)
    print(f"multi-turn: {len(revisions)} revision examples beside {len(chats)} layer rows")
    return datasets.concatenate_datasets([chats, revisions])


def _supervisor_table(config: SimLoopConfig, run_dir: Path) -> Any:
    """``PrintSupervisor-v1`` rows (:func:`training.supervise.supervisor_rows`), made once per run."""
    import datasets

    from training.supervise import supervisor_rows

    cached = run_dir / "supervisor-rows.jsonl"
    if not cached.is_file():
        rows = supervisor_rows(config.supervisor_episodes, config.seed, config.supervisor_difficulties)
        tmp = cached.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, cached)
    return datasets.Dataset.from_list([json.loads(line) for line in cached.read_text().splitlines()])


def _approved_real_world(path: str) -> Any:
    """Phase 3 data: real programs a person marked as good (feedback outcome success) only."""
    from training.data import load_table

    programs = load_table(path, "programs")
    approved = programs.filter(lambda r: r["success"] is True and "feedback" in (r["note"] or ""))
    return approved.map(lambda r: {"prompt": f"Task: write the complete G-code program for {r['part_id']} "
                                             f"on {r['printer'] or 'the printer'}.", "completion": r["gcode"]},
                        remove_columns=programs.column_names)


def run(config: SimLoopConfig, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the loop in ``run_dir``; returns the report."""
    import torch

    from training.backend import check_backend, make_grpo_trainer, make_sft_trainer
    from training.data import load_table, to_grpo, to_sft
    from training.model import load_model_and_tokenizer, save_model

    check_backend(config.backend)
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    torch.manual_seed(config.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"done": [], "report": {"phases": {}}}
    logger = RunLogger(run_dir, Path(config.log_dir) if config.log_dir else run_dir / "tensorboard", _is_main())
    report = state["report"]

    def finish(phase: str, model: Any, tokenizer: Any, step: int) -> None:
        # Under accelerate, the main process evaluates and writes; the others wait, then see the same state.
        if not _is_main():
            state["done"].append(phase)
            _wait_for_everyone()
            return
        result = _evaluate(model, tokenizer, config, config.eval_episodes)
        report["phases"][phase] = {"success_rate": result.success_rate, "mean_reward": result.mean_reward,
                                   "valid_gcode_rate": result.valid_gcode_rate,
                                   "safety_violations_per_1k_lines": result.safety_violations_per_1k_lines,
                                   "episodes": result.episodes, "mean_geometry": result.mean_geometry}
        logger.log(phase, step, _eval_metrics(result))
        state["done"].append(phase)
        _save_state(run_dir, state)
        (run_dir / "report.json").write_text(json.dumps(report, indent=1))
        print(f"[{phase}] " + ", ".join(f"{k} {v:.3f}" for k, v in report["phases"][phase].items()))
        _wait_for_everyone()

    def train_phase(phase: str, trainer: Any) -> Any:
        """Train (resuming from the phase's last complete checkpoint), save the final model, evaluate."""
        for callback in _callbacks(phase, logger, trainer.model, tokenizer, config):
            trainer.add_callback(callback)
        trainer.train(resume_from_checkpoint=last_checkpoint(run_dir / phase))
        tuned = trainer.model
        if config.lora and hasattr(tuned, "merge_and_unload"):
            tuned = tuned.merge_and_unload()
        if _is_main():
            save_model(tuned, tokenizer, run_dir / phase / "final")
        finish(phase, tuned, tokenizer, trainer.state.global_step)
        return tuned

    supervising = config.task == "PrintSupervisor-v1"
    # Data is made once, by the main process; the others read it after the barrier.
    if _is_main():
        data = None if supervising else _dataset(config, run_dir)
        if supervising:
            _supervisor_table(config, run_dir)
        elif config.multi_turn:
            _sft_rows(config, data, run_dir)
    _wait_for_everyone()
    data = None if supervising else _dataset(config, run_dir)
    sft_final, grpo_final = run_dir / "sft" / "final", run_dir / "grpo" / "final"
    model_config = config.model_config()
    if "grpo" in state["done"] and grpo_final.is_dir():
        model_config = replace(model_config, name=str(grpo_final))
    elif "sft" in state["done"] and sft_final.is_dir():
        model_config = replace(model_config, name=str(sft_final))
    # The main process builds (or loads) the model first, so the others find it complete in the cache.
    if _is_main():
        model, tokenizer = load_model_and_tokenizer(model_config)
    _wait_for_everyone()
    if not _is_main():
        model, tokenizer = load_model_and_tokenizer(model_config)

    if "before" not in state["done"]:
        finish("before", model, tokenizer, 0)

    if "sft" not in state["done"]:
        train = _supervisor_table(config, run_dir) if supervising else _sft_rows(config, data, run_dir)
        trainer = make_sft_trainer(
            model, tokenizer, to_sft(train), None, output_dir=str(run_dir / "sft"),
            learning_rate=config.learning_rate, batch_size=config.batch_size, epochs=config.epochs,
            max_steps=config.sft_max_steps, lora=config.lora, lora_r=config.lora_r, seed=config.seed,
            logging_steps=1, save_steps=config.checkpoint_interval,
            max_length_tokens=config.embedded.max_length_tokens, backend=config.backend)
        model = train_phase("sft", trainer)

    if config.grpo_steps > 0 and "grpo" not in state["done"]:
        common = dict(output_dir=run_dir / "grpo", learning_rate=config.grpo_learning_rate,
                      batch_size=config.grpo_batch_size, num_generations=config.num_generations,
                      max_completion_length=config.max_completion_length, beta=config.beta,
                      max_steps=config.grpo_steps, seed=config.seed, save_steps=config.checkpoint_interval,
                      temperature=config.temperature, lora=config.lora, lora_r=config.lora_r, backend=config.backend,
                      ref_model_sync_steps=config.ref_model_sync_steps,
                      ref_model_mixup_alpha=config.ref_model_mixup_alpha)
        if supervising:
            from training.supervise import supervisor_reward

            rows = _supervisor_table(config, run_dir).remove_columns(["completion", "step_kind"])
            trainer = make_grpo_trainer(model, tokenizer, rows, [supervisor_reward], **common | {
                "output_dir": str(common["output_dir"]), "logging_steps": 1})
        else:
            from training.grpo import make_trainer

            trainer = make_trainer(model, tokenizer, to_grpo(load_table(data, "sft", split="train")), **common,
                                   multi_turn=config.multi_turn, revision_turns=config.revision_turns,
                                   revise=config.revise, reward_workers=config.reward_workers,
                                   randomize=config.grpo_randomize)
        model = train_phase("grpo", trainer)

    if config.real_world_dataset and "real_world" not in state["done"]:
        approved = _approved_real_world(config.real_world_dataset)
        if len(approved) == 0:
            print("phase 3: the real-world dataset has no human-approved programs; skipped", file=sys.stderr)
        else:
            trainer = make_sft_trainer(
                model, tokenizer, approved, None, output_dir=str(run_dir / "real_world"),
                learning_rate=config.real_world_learning_rate, batch_size=1, epochs=config.real_world_epochs,
                seed=config.seed, logging_steps=1, save_steps=config.checkpoint_interval,
                max_length_tokens=config.embedded.max_length_tokens, backend=config.backend)
            model = train_phase("real_world", trainer)

    if _is_main():
        _plots(run_dir)
    return report


def _plots(run_dir: Path) -> None:
    """Loss, reward and success per phase from ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, 4, figsize=(19, 4))
    for phase in ("sft", "grpo", "real_world"):
        loss = [(r["step"], r["train/loss"]) for r in rows if r["phase"] == phase and "train/loss" in r]
        if loss and phase != "grpo":
            axes[0].plot(*zip(*loss, strict=True), label=phase)
        reward = [(r["step"], r["train/reward"]) for r in rows if r["phase"] == phase and "train/reward" in r]
        if reward:
            axes[1].plot(*zip(*reward, strict=True), label=f"{phase}: mean reward of the sampled group")
    report = json.loads((run_dir / "report.json").read_text())["phases"] if (run_dir / "report.json").is_file() else {}
    names = [p for p in PHASES if p in report]
    if names:
        axes[2].bar(names, [report[p]["mean_reward"] for p in names], color="tab:green")
        axes[2].axhline(0.0, color="grey", linewidth=0.5)
        width = 0.4
        xs = range(len(names))
        axes[3].bar([x - width / 2 for x in xs], [report[p]["success_rate"] for p in names], width, label="success rate")
        axes[3].bar([x + width / 2 for x in xs], [report[p]["valid_gcode_rate"] for p in names], width,
                    label="valid G-code rate")
        axes[3].set_xticks(list(xs), names)
    axes[0].set_title("SFT loss (per step)")
    axes[1].set_title("GRPO reward (per step)")
    axes[2].set_title("held-out mean reward (per phase)")
    axes[3].set_title("held-out success and validity (per phase)")
    for ax in (axes[0], axes[1], axes[3]):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.sim_loop", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, help="YAML config (default: the embedded default)")
    parser.add_argument("--resume", type=Path, help="continue the run in this directory")
    args = parser.parse_args(argv)
    try:
        if args.resume:
            if not (args.resume / "config.yaml").is_file():
                raise ConfigError(f"{args.resume}: no config.yaml (not a run directory)")
            config = load_config(args.resume / "config.yaml")
            run_dir = args.resume
        else:
            config = load_config(args.config)
            stamp = _shared_stamp()
            run_dir = Path(config.output_dir) / f"{config.task.split('-')[0]}-{config.seed}-{stamp}"
            if _is_main():
                run_dir.mkdir(parents=True, exist_ok=False)
                (run_dir / "config.yaml").write_text(yaml.safe_dump(asdict(config), sort_keys=False))
            _wait_for_everyone()
        print(f"run directory: {run_dir}")
        report = run(config, run_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
