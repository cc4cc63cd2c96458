"""Training throughput: SFT and GRPO steps of the embedded model (or any model), per backend.

    .venv/bin/python benchmarks/bench_training.py [--model embedded] [--backend trl unsloth] [--steps 20]

Reports, per backend that can run on this machine: SFT training tokens/s (prompt and completion tokens the
trainer consumed, from TRL's ``num_tokens``), GRPO completions/s and generated tokens/s, and peak memory
(CUDA's max allocated on a GPU, the process's max RSS on a CPU). A backend that cannot run here (Unsloth
without an NVIDIA GPU) is reported with the reason instead of a number. Writes
``benchmarks/out/bench_training.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def _peak_memory_mib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _dataset(folder: Path, jobs: int) -> Path:
    from training.make_dataset import DatasetConfig, make_dataset

    config = DatasetConfig(name="bench", kind="simulation", seed=0, jobs=jobs, difficulties=[0],
                           part_kinds=["rectangle", "polygon"], max_polygon_sides=6, defects_per_job=0, traces=False,
                           images=False, jobs_per_shard=jobs, workers=1)
    make_dataset(config, folder)
    return folder


def bench(backend: str, model_name: str, data: Path, steps: int, out: Path) -> dict:
    import torch

    from training.backend import BackendError, check_backend, load_model, make_grpo_trainer, make_sft_trainer
    from training.data import load_table, to_grpo, to_sft
    from training.model import ModelConfig
    from training.rewards import layer_reward_functions as reward_functions

    try:
        check_backend(backend)
    except BackendError as exc:
        return {"backend": backend, "skipped": str(exc)}
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    config = ModelConfig(name=model_name, max_length_tokens=2048)
    lora = backend == "unsloth" or model_name != "embedded"
    model, tokenizer = load_model(config, backend, lora=lora)
    rows = load_table(data, "sft", split="train")
    sft = make_sft_trainer(model, tokenizer, to_sft(rows), None, output_dir=str(out / f"sft-{backend}"),
                           batch_size=4, max_steps=steps, lora=lora, logging_steps=steps, backend=backend)
    t0 = time.perf_counter()
    sft.train()
    sft_s = time.perf_counter() - t0
    sft_tokens = float(sft.state.num_input_tokens_seen or
                       next(r["num_tokens"] for r in reversed(sft.state.log_history) if "num_tokens" in r))
    funcs, weights = reward_functions(multi_turn=False)
    grpo = make_grpo_trainer(sft.model, tokenizer, to_grpo(rows), funcs, reward_weights=weights,
                             output_dir=str(out / f"grpo-{backend}"), batch_size=8, num_generations=4,
                             max_completion_length=320, max_steps=max(2, steps // 4), logging_steps=1, lora=False,
                             backend=backend)
    t0 = time.perf_counter()
    grpo.train()
    grpo_s = time.perf_counter() - t0
    lengths = [r["completions/mean_length"] for r in grpo.state.log_history if "completions/mean_length" in r]
    completions = 8 * len(lengths)
    return {"backend": backend, "model": model_name, "lora": lora, "device": "cuda" if torch.cuda.is_available()
            else "cpu", "sft_steps": steps, "sft_seconds": round(sft_s, 2),
            "sft_tokens_per_s": round(sft_tokens / sft_s, 1), "grpo_steps": len(lengths),
            "grpo_seconds": round(grpo_s, 2), "grpo_completions_per_s": round(completions / grpo_s, 3),
            "grpo_generated_tokens_per_s": round(sum(lengths) * 8 / grpo_s, 1),
            "peak_memory_mib": round(_peak_memory_mib(), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--backend", nargs="+", default=["trl", "unsloth"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "bench_training.json",
                        help="the JSON report")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = _dataset(Path(tmp) / "data", args.jobs)
        results = [bench(b, args.model, data, args.steps, Path(tmp)) for b in args.backend]
    report = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
