"""The closed loop: ``python -m training.sim_loop [--config configs/tiny-cpu.yaml] [--resume RUN_DIR]``.

A language model learns to write G-code: imitation on the reference program, then reinforcement on
simulated outcomes, evaluated on a held-out suite before and after every phase.

1. **Phase 1, simulation-first** — build or load the model; make the supervised dataset if it is missing
   (``training.make_dataset``); evaluate ("before"); SFT (``sft:``, :mod:`training.sft`); evaluate ("sft").
2. **Phase 2, sim-to-real** — GRPO on the environment's reward (``grpo:``, :mod:`training.grpo`); with
   ``grpo.screen_geometry`` > 0 on prompts screened by the SFT model, those it still gets wrong first
   (:mod:`training.screen`; the record in ``grpo/screen.json``); evaluate ("grpo").
3. **Phase 3, real-world refinement** — only when ``real_world_dataset`` is set: SFT on human-approved real
   programs only, at a conservative learning rate; evaluate ("real_world").

The config (:class:`training.loop_config.SimLoopConfig`) has the loop-wide keys at the top and one section
per trainer. Everything lands in a run directory (``runs/TASK-SEED-TIME``): ``config.yaml``, ``state.json``
(finished phases), ``metrics.jsonl`` (``train/``, ``eval/``, ``safety/``; GRPO steps also
``train/reward_time_s`` and ``train/reward_share``), TensorBoard logs, checkpoints, the final models (LoRA
merged), plots and ``report.json`` (``{"phases": {"before": …, "sft": …, "grpo": …}}``). A run killed at
any point (even with SIGKILL) continues with ``--resume RUN_DIR`` from its last checkpoint: finished
phases are skipped, the phase in progress resumes where its trainer last saved, and the trainer skips the
batches it had already seen.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
import yaml

from agent.llm import LLMPolicy
from sim_bridge.config import ConfigError
from training import grpo, sft
from training.backend import check_backend
from training.checkpoints import FINAL_DIR, train_and_save
from training.cli import add_override_arguments
from training.data import load_table, to_grpo, to_sft
from training.datafmt import DatasetError, read_manifest
from training.evaluate import EVAL_DIR, save_episodes, write_phase_report
from training.loop_config import GRPO_DATA_DIR, GRPO_SEED_OFFSET, SimLoopConfig, load_config
from training.make_dataset import DatasetConfig, make_dataset
from training.model import load_model_and_tokenizer
from training.processes import is_main, shared_stamp, wait_for_everyone
from training.revisions import revision_examples
from training.rewards import SupervisorReward
from training.run_log import RunLogger, plot_curves
from training.supervise import SupervisorEvalResult, evaluate_supervisor, supervisor_rows
from training.writer_eval import EvalResult, eval_metrics, evaluate, scalar_fields

EVAL_BATCH = 8
"""Prompts the evaluations generate together."""
PHASES = ("before", "sft", "grpo", "real_world")
"""The loop's evaluated phases, in order."""


def _evaluate(model: Any, tokenizer: Any, config: SimLoopConfig, episodes: int, randomized: bool = False
              ) -> EvalResult | SupervisorEvalResult:
    policy = LLMPolicy(model, tokenizer, max_new_tokens=config.grpo.max_completion_length, batch_size=EVAL_BATCH)
    if config.supervising:
        return evaluate_supervisor(policy, episodes, config.seed, config.supervisor_difficulties)
    return evaluate(policy, config.eval_suite, episodes,
                    revisions=config.grpo.revision_turns if config.grpo.multi_turn else 0, revise=config.grpo.revise,
                    randomized=randomized)


class _Metrics(transformers.TrainerCallback):
    """The trainer's logs to the run's logger (``train/…``), and held-out evaluations every
    ``eval_interval`` steps."""

    def __init__(self, phase: str, logger: RunLogger, model: Any, tokenizer: Any, config: SimLoopConfig) -> None:
        self.phase, self.logger, self.model, self.tokenizer, self.config = phase, logger, model, tokenizer, config

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **_: Any) -> None:
        if logs and is_main():
            self.logger.log(self.phase, state.global_step, {f"train/{k}": v for k, v in logs.items()
                                                            if isinstance(v, (int, float))})

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if self.config.eval_interval and state.global_step % self.config.eval_interval == 0:
            if is_main():
                result = _evaluate(self.model, self.tokenizer, self.config, self.config.eval_episodes_during)
                self.logger.log(self.phase, state.global_step, eval_metrics(result))
            wait_for_everyone()


def _save_state(run_dir: Path, state: dict[str, Any]) -> None:
    tmp = run_dir / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, run_dir / "state.json")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def _read_jsonl(path: Path) -> datasets.Dataset:
    return datasets.Dataset.from_list([json.loads(line) for line in path.read_text().splitlines()])


def _dataset(config: SimLoopConfig, run_dir: Path, phase2: bool = False) -> Path:
    """The supervised dataset (``dataset_path``, or made in the run directory), or with ``phase2`` GRPO's own
    fresh jobs (``grpo_jobs``; made in the run directory)."""
    if phase2:
        path, name, seed, jobs = run_dir / GRPO_DATA_DIR, "loop-grpo", config.seed + GRPO_SEED_OFFSET, config.grpo_jobs
    else:
        path = Path(config.dataset_path) if config.dataset_path else run_dir / "data"
        name, seed, jobs = "loop", config.seed, config.train_jobs
    try:
        read_manifest(path)
        return path
    except DatasetError:
        pass
    data_config = DatasetConfig(name=name, kind="simulation", seed=seed, jobs=jobs,
                                difficulties=list(config.train_difficulties), part_kinds=list(config.part_kinds),
                                max_polygon_sides=config.max_polygon_sides, defects_per_job=0, traces=False,
                                images=False, jobs_per_shard=max(1, jobs // 8), workers=config.workers)
    make_dataset(data_config, path)
    return path


def _sft_rows(config: SimLoopConfig, data: Path, run_dir: Path) -> datasets.Dataset:
    """The writer's SFT rows; in multi-turn mode as chat ``messages``, with revision examples added (made
    once per run and kept in the run directory, so a resumed run trains on the same rows)."""
    rows = load_table(data, "sft", split="train")
    if not config.grpo.multi_turn:
        return rows
    cached = run_dir / "revision-examples.jsonl"
    if not cached.is_file():
        _write_jsonl(cached, revision_examples(list(rows), config.seed, config.revision_fraction, config.grpo.revise))
    revisions = _read_jsonl(cached)
    chats = rows.map(lambda r: {"messages": [{"role": "user", "content": r["prompt"]},
                                             {"role": "assistant", "content": r["completion"]}]},
                     remove_columns=rows.column_names)
    print(f"multi-turn: {len(revisions)} revision examples beside {len(chats)} layer rows")
    return datasets.concatenate_datasets([chats, revisions])


def _supervisor_table(config: SimLoopConfig, run_dir: Path) -> datasets.Dataset:
    """``PrintSupervisor-v1`` rows (:func:`training.supervise.supervisor_rows`), made once per run."""
    cached = run_dir / "supervisor-rows.jsonl"
    if not cached.is_file():
        _write_jsonl(cached, supervisor_rows(config.supervisor_episodes, config.seed, config.supervisor_difficulties))
    return _read_jsonl(cached)


def _approved_real_world(path: str) -> datasets.Dataset:
    """Phase 3 data: real programs a person marked as good (feedback outcome success) only."""
    programs = load_table(path, "programs")
    approved = programs.filter(lambda r: r["success"] is True and "feedback" in (r["note"] or ""))
    return approved.map(lambda r: {"prompt": f"Task: write the complete G-code program for {r['part_id']} "
                                             f"on {r['printer'] or 'the printer'}.", "completion": r["gcode"]},
                        remove_columns=programs.column_names)


def run(config: SimLoopConfig, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the loop in ``run_dir``; returns the report."""
    check_backend(config.backend)
    if not torch.cuda.is_available():
        passive = os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
        torch.set_num_threads(min(config.cpu_threads, os.cpu_count() or 1) if passive else 1)
    torch.manual_seed(config.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"done": [], "report": {"phases": {}}}
    logger = RunLogger(run_dir, Path(config.log_dir) if config.log_dir else run_dir / "tensorboard", is_main())
    report = state["report"]

    def finish(phase: str, model: Any, tokenizer: Any, step: int) -> None:
        # Under accelerate, the main process evaluates and writes; the others wait, then see the same state.
        if not is_main():
            state["done"].append(phase)
            wait_for_everyone()
            return
        result = _evaluate(model, tokenizer, config, config.eval_episodes)
        report["phases"][phase] = scalar_fields(result)
        logger.log(phase, step, eval_metrics(result))
        if config.eval_randomized and not config.supervising:
            randomized = _evaluate(model, tokenizer, config, config.eval_episodes, randomized=True)
            report.setdefault("randomized", {})[phase] = scalar_fields(randomized)
            logger.log(phase, step, {f"randomized/{k}": v for k, v in randomized.as_dict().items()})
            print(f"[{phase}, randomised printers] "
                  + ", ".join(f"{k} {v:.3f}" for k, v in report["randomized"][phase].items()))
        if isinstance(result, EvalResult):
            save_episodes(result, run_dir / EVAL_DIR / f"{phase}.json")
            write_phase_report(run_dir, [p for p in PHASES if p in (*state["done"], phase)], config.eval_suite,
                               config.eval_episodes, config.seed)
        state["done"].append(phase)
        _save_state(run_dir, state)
        (run_dir / "report.json").write_text(json.dumps(report, indent=1))
        print(f"[{phase}] " + ", ".join(f"{k} {v:.3f}" for k, v in report["phases"][phase].items()))
        wait_for_everyone()

    def train_phase(phase: str, trainer: Any) -> Any:
        """Train (resuming from the phase's last complete checkpoint), save the final model, evaluate."""
        trainer.add_callback(_Metrics(phase, logger, trainer.model, tokenizer, config))
        tuned = train_and_save(trainer, tokenizer, run_dir / phase, save=is_main())
        finish(phase, tuned, tokenizer, trainer.state.global_step)
        return tuned

    # Data is made once, by the main process; the others read it after the barrier.
    if is_main():
        data = None if config.supervising else _dataset(config, run_dir)
        if config.supervising:
            _supervisor_table(config, run_dir)
        elif config.grpo.multi_turn:
            _sft_rows(config, data, run_dir)
        if not config.supervising and config.grpo_jobs and config.grpo.max_steps > 0:
            _dataset(config, run_dir, phase2=True)
    wait_for_everyone()
    data = None if config.supervising else _dataset(config, run_dir)
    sft_final, grpo_final = run_dir / "sft" / FINAL_DIR, run_dir / "grpo" / FINAL_DIR
    model_config = config.model_config()
    if "grpo" in state["done"] and grpo_final.is_dir():
        model_config = replace(model_config, name=str(grpo_final))
    elif "sft" in state["done"] and sft_final.is_dir():
        model_config = replace(model_config, name=str(sft_final))
    # The main process builds (or loads) the model first, so the others find it complete in the cache.
    if is_main():
        model, tokenizer = load_model_and_tokenizer(model_config)
    wait_for_everyone()
    if not is_main():
        model, tokenizer = load_model_and_tokenizer(model_config)

    if "before" not in state["done"]:
        finish("before", model, tokenizer, 0)

    if "sft" not in state["done"]:
        rows = _supervisor_table(config, run_dir) if config.supervising else _sft_rows(config, data, run_dir)
        model = train_phase("sft", sft.make_trainer(model, tokenizer, to_sft(rows), config.sft_phase(run_dir / "sft")))

    if config.grpo.max_steps > 0 and "grpo" not in state["done"]:
        settings = config.grpo_phase(run_dir / "grpo")
        if config.supervising:
            rows = _supervisor_table(config, run_dir).remove_columns(["completion", "step_kind"])
            trainer = grpo.make_trainer(model, tokenizer, rows, settings, reward_funcs=[SupervisorReward()])
        else:
            prompts = _dataset(config, run_dir, phase2=True) if config.grpo_jobs else data
            rows = to_grpo(load_table(prompts, "sft", split="train"), reference=settings.expert_guidance)
            # The main process screens and writes the record; the others read it.
            if is_main():
                grpo.screened_rows(model, tokenizer, rows, settings)
            wait_for_everyone()
            trainer = grpo.make_trainer(model, tokenizer, grpo.screened_rows(model, tokenizer, rows, settings),
                                        settings)
        model = train_phase("grpo", trainer)

    if config.real_world_dataset and "real_world" not in state["done"]:
        approved = _approved_real_world(config.real_world_dataset)
        if len(approved) == 0:
            print("phase 3: the real-world dataset has no human-approved programs; skipped", file=sys.stderr)
        else:
            phase3 = config.sft_phase(run_dir / "real_world", learning_rate=config.real_world_learning_rate,
                                      batch_size=1, epochs=config.real_world_epochs, max_steps=-1)
            model = train_phase("real_world", sft.make_trainer(model, tokenizer, approved, phase3))

    if is_main():
        plot_curves(run_dir)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.sim_loop", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, help="YAML config (default: the embedded default)")
    parser.add_argument("--resume", type=Path, help="continue the run in this directory")
    add_override_arguments(parser)
    args = parser.parse_args(argv)
    try:
        if args.resume and (args.set or args.seed is not None):
            raise ConfigError("--resume continues a run with its own config.yaml: --set/--seed apply to new runs only")
        if args.resume:
            if not (args.resume / "config.yaml").is_file():
                raise ConfigError(f"{args.resume}: no config.yaml (not a run directory)")
            config = load_config(args.resume / "config.yaml")
            run_dir = args.resume
        else:
            config = load_config(args.config, args.set, args.seed)
            stamp = shared_stamp()
            run_dir = Path(config.output_dir) / f"{config.task.split('-')[0]}-{config.seed}-{stamp}"
            if is_main():
                run_dir.mkdir(parents=True, exist_ok=False)
                (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
            wait_for_everyone()
        print(f"run directory: {run_dir}")
        report = run(config, run_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
