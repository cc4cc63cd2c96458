"""The GRPO reward path: step time and the share of it spent in the reward functions, on the default config.

    .venv/bin/python benchmarks/bench_reward_path.py prepare --out /tmp/rp        # data + a short-SFT model, once
    .venv/bin/python benchmarks/bench_reward_path.py grpo --prep /tmp/rp [--steps 12] [--label after]
    .venv/bin/python benchmarks/bench_reward_path.py score [--label after]          # one group, deeper layers

``prepare`` makes the default run's dataset (``configs/tiny-cpu.yaml``: 256 jobs, difficulty 0, rectangles
and polygons) and fine-tunes the embedded model for a few hundred SFT steps, so that GRPO samples look like
the programs the default run scores (an untrained model's noise simulates in no time and would say
nothing). ``grpo`` then runs GRPO steps with the default run's settings (16 completions per step, 8 per
prompt, 320 tokens, temperature 0.7, beta 0.05) from that model and measures, per step, the trainer's wall
time and the time inside TRL's reward computation (``GRPOTrainer._calculate_rewards``: every reward
function of the batch). The measurement hooks into TRL, not into layerloop, so the same script times
layerloop before and after a change: run it from each checkout on the same ``--prep`` folder, in the same
session, and compare. ``score`` times what one GRPO group asks of the scorer (16 answers to one layer of one
job, through ``envs.scoring.score_layer``) on jobs of difficulty 0 (the default's one-layer parts), 2 and 3
(their last layer, which follows the expert's layers below), on the nominal printer and on a randomised one. Writes
``benchmarks/out/bench_reward_path-LABEL.json`` (``-score-LABEL`` for ``score``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

SFT_STEPS = 400
"""Enough SFT for the embedded model to write whole perimeter programs (most are valid G-code)."""
TRAIN_JOBS = 256


def _reward_functions() -> tuple[list[Any], list[float]]:
    """The single-turn writer's reward functions, from whichever layout of layerloop this is."""
    try:
        from training.rewards import layer_reward_functions  # the layout after the architecture issue
    except ImportError:
        from training.grpo import reward_functions  # the layout before it

        return reward_functions(multi_turn=False)
    return layer_reward_functions(multi_turn=False)


def prepare(out: Path) -> None:
    import torch

    from training.backend import load_model, make_sft_trainer
    from training.data import load_table, to_sft
    from training.make_dataset import DatasetConfig, make_dataset
    from training.model import ModelConfig, save_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = out / "data"
    config = DatasetConfig(name="bench", kind="simulation", seed=0, jobs=TRAIN_JOBS, difficulties=[0],
                           part_kinds=["rectangle", "polygon"], max_polygon_sides=6, defects_per_job=0,
                           traces=False, images=False, jobs_per_shard=TRAIN_JOBS // 8, workers=0)
    make_dataset(config, data)
    model, tokenizer = load_model(ModelConfig(name="embedded", max_length_tokens=2048), "trl", lora=False)
    rows = load_table(data, "sft", split="train")
    sft = make_sft_trainer(model, tokenizer, to_sft(rows), None, output_dir=str(out / "sft"), batch_size=4,
                           max_steps=SFT_STEPS, lora=False, logging_steps=50, backend="trl", learning_rate=0.002)
    sft.train()
    save_model(sft.model, tokenizer, out / "model")


def grpo(prep: Path, steps: int, label: str) -> dict[str, Any]:
    import torch
    import transformers
    import trl

    from training.backend import make_grpo_trainer
    from training.data import load_table, to_grpo
    from training.model import ModelConfig, load_model_and_tokenizer

    torch.set_num_threads(1)
    reward_s: list[float] = []
    original = trl.GRPOTrainer._calculate_rewards

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            reward_s.append(time.perf_counter() - t0)

    trl.GRPOTrainer._calculate_rewards = timed
    step_s: list[float] = []

    class StepTimer(transformers.TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step_s.append(time.perf_counter() - self.t0)

    model, tokenizer = load_model_and_tokenizer(ModelConfig(name=str(prep / "model")), "cpu")
    funcs, weights = _reward_functions()
    rows = load_table(prep / "data", "sft", split="train")
    out = prep / f"grpo-{label}"
    trainer = make_grpo_trainer(model, tokenizer, to_grpo(rows), funcs, reward_weights=weights,
                                output_dir=str(out), learning_rate=3e-5, batch_size=16, num_generations=8,
                                max_completion_length=320, beta=0.05, max_steps=steps, temperature=0.7,
                                logging_steps=1, lora=False, backend="trl")
    trainer.add_callback(StepTimer())
    t0 = time.perf_counter()
    trainer.train()
    total_s = time.perf_counter() - t0
    lengths = [r["completions/mean_length"] for r in trainer.state.log_history if "completions/mean_length" in r]
    # The first step warms caches and kernels; report the steady state beside it.
    steady_step, steady_reward = step_s[1:] or step_s, reward_s[1:] or reward_s
    return {"label": label, "checkout": str(ROOT), "steps": len(step_s), "total_s": round(total_s, 2),
            "step_s_median": round(statistics.median(steady_step), 3),
            "reward_s_median": round(statistics.median(steady_reward), 3),
            "reward_share": round(sum(steady_reward) / sum(steady_step), 3),
            "first_step_s": round(step_s[0], 3), "first_reward_s": round(reward_s[0], 3),
            "mean_completion_tokens": round(statistics.mean(lengths), 1) if lengths else None,
            "rewards_mean": [round(r["reward"], 3) for r in trainer.state.log_history if "reward" in r]}


GROUP = 16
"""Answers per scored group (the default run's completions per GRPO step)."""
SCORE_DIFFICULTIES = (0, 2, 3)
"""Difficulties of the scored jobs; each job's last layer is scored (the most expert layers below it)."""


def score(repeats: int = 5) -> list[dict[str, Any]]:
    import numpy as np

    from envs.sampler import sample_job
    from envs.scoring import score_layer
    from envs.slicer import slice_job

    results = []
    for difficulty in SCORE_DIFFICULTIES:
        job = sample_job(np.random.default_rng(difficulty), difficulty)
        layers = slice_job(job).layers
        layer = len(layers) - 1
        text = layers[layer]
        # Each answer differs (a tenth of a millimetre further along X per answer), as a group's do.
        texts = [text] + [_shifted(text, 0.1 * i) for i in range(1, GROUP)]
        for seed in (None, 123):
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                rewards = [score_layer(t, job, layer, seed).reward for t in texts]
                best = min(best, time.perf_counter() - t0)
            results.append({"difficulty": difficulty, "layer": layer, "layers": len(job.layer_zs()),
                            "physics_seed": seed, "group_ms": round(1000 * best, 1),
                            "mean_reward": round(sum(rewards) / len(rewards), 4)})
    return results


def _shifted(text: str, dx_mm: float) -> str:
    out = []
    for line in text.split("\n"):
        words = line.split(" ")
        if words[0] in ("G0", "G1"):
            words = [f"X{float(w[1:]) + dx_mm:.3f}" if w.startswith("X") else w for w in words]
        out.append(" ".join(words))
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, required=True)
    g = sub.add_parser("grpo")
    g.add_argument("--prep", type=Path, required=True)
    g.add_argument("--steps", type=int, default=12)
    g.add_argument("--label", default="now")
    c = sub.add_parser("score")
    c.add_argument("--label", default="now")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.out)
        return 0
    if args.command == "score":
        result = {"label": f"score-{args.label}", "checkout": str(ROOT), "scores": score()}
        args.label = result["label"]
    else:
        result = grpo(args.prep, args.steps, args.label)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), **result}
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench_reward_path-{args.label}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
