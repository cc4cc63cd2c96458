"""Smoke run of the real closed loop with a tiny budget: model built, SFT, GRPO, evaluation, checkpoints,
SIGKILL and ``--resume``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from agent.llm import generate
from sim_bridge.config import ConfigError, from_dict
from training.backend import KEEP_CHECKPOINTS
from training.data import load_table, to_grpo
from training.grpo import GRPOSettings
from training.loop_config import GRPO_DATA_DIR, SimLoopConfig, load_config
from training.make_dataset import DatasetConfig, make_dataset
from training.model import ModelConfig, load_model_and_tokenizer
from training.screen import SCREEN_FILE
from training.sft import SFTConfig

ROOT = Path(__file__).parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TRL_EXPERIMENTAL_SILENCE": "1"}


def _config(tmp_path: Path, name: str) -> Path:
    data = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    data["output_dir"] = str(tmp_path / name)
    data["embedded"]["cache_dir"] = str(tmp_path / "models")
    data["dataset_path"] = str(tmp_path / "data")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run_dir(out: Path) -> Path:
    dirs = sorted(out.glob("GcodeWriter-*"))
    assert len(dirs) == 1
    return dirs[0]


def _losses(run_dir: Path, phase: str) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if r["phase"] == phase and "train/loss" in r}


@pytest.mark.slow
def test_smoke_run_kill_and_resume(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "training.sim_loop", "--config"]
    # An uninterrupted run, the reference; its output folder set on the command line (it lands in config.yaml).
    full = subprocess.run([*cmd, str(_config(tmp_path, "elsewhere")), "--set", f"output_dir={tmp_path / 'full'}"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]
    full_dir = _run_dir(tmp_path / "full")
    assert not (tmp_path / "elsewhere").exists()
    assert yaml.safe_load((full_dir / "config.yaml").read_text())["output_dir"] == str(tmp_path / "full")
    report = json.loads((full_dir / "report.json").read_text())
    for phase in ("before", "sft", "grpo"):
        for key in ("success_rate", "mean_reward", "valid_gcode_rate", "safety_violations_per_1k_lines", "episodes"):
            assert key in report["phases"][phase]
    sft = _losses(full_dir, "sft")
    assert sorted(sft) == list(range(1, 13))
    assert sft[12] < sft[1], "the SFT loss falls"
    assert (full_dir / "curves.png").is_file() and (full_dir / "tensorboard").is_dir()
    metrics = [json.loads(line) for line in (full_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith("train/rewards/") for r in metrics for k in r)
    # Each GRPO step logs the time its reward functions took, and their share of the step.
    timed = [r for r in metrics if r["phase"] == "grpo" and "train/reward_time_s" in r]
    assert [r["step"] for r in timed] == [1, 2]
    assert all(r["train/reward_time_s"] > 0 and 0 < r["train/reward_share"] < 1 for r in timed)
    # The phases side by side with intervals, as python -m training.evaluate writes them.
    phases = json.loads((full_dir / "eval" / "report.json").read_text())["policies"]
    assert list(phases) == ["before", "sft", "grpo"]
    assert phases["grpo"]["metrics"]["success_rate"]["value"] == report["phases"]["grpo"]["success_rate"]
    assert "| success rate |" in (full_dir / "eval" / "report.md").read_text()
    # GRPO samples its own fresh jobs (grpo_jobs), drawn from another stream than the supervised dataset's.
    phase2 = load_table(full_dir / GRPO_DATA_DIR, "jobs")
    supervised = load_table(tmp_path / "data", "jobs")
    def drawn(table: Any) -> set[str]:  # a job as drawn, without the id naming its dataset
        return {json.dumps({k: v for k, v in json.loads(j).items() if k != "job_id"}, sort_keys=True)
                for j in table["job"]}

    assert len(phase2) == 8 and not drawn(phase2) & drawn(supervised)
    # GRPO trained on prompts screened by the SFT model (smoke.yaml: grpo.screen_geometry); 12 SFT steps and
    # 48 tokens write no whole layer, so every prompt is still wrong, and all are kept.
    screening = json.loads((full_dir / "grpo" / SCREEN_FILE).read_text())
    layer_rows = len(to_grpo(load_table(full_dir / GRPO_DATA_DIR, "sft", split="train")))
    assert screening["candidates"] == layer_rows and screening["hard"] == layer_rows
    assert sorted(screening["kept"]) == list(range(layer_rows))
    # Only the newest checkpoints stay on disk (KEEP_CHECKPOINTS), not one per interval.
    assert len(list((full_dir / "sft").glob("checkpoint-*"))) <= KEEP_CHECKPOINTS

    # The same run killed with SIGKILL after its first SFT checkpoint, then resumed.
    config = _config(tmp_path, "killed")
    proc = subprocess.Popen([*cmd, str(config)], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        dirs = list((tmp_path / "killed").glob("GcodeWriter-*/sft/checkpoint-4/trainer_state.json"))
        if dirs:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_dir = _run_dir(tmp_path / "killed")
    assert "sft" not in json.loads((killed_dir / "state.json").read_text())["done"]
    resumed = subprocess.run([sys.executable, "-m", "training.sim_loop", "--resume", str(killed_dir)], cwd=ROOT,
                             env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    losses = _losses(killed_dir, "sft")
    # Steps after the checkpoint see exactly the batches of the uninterrupted run: same losses, none lost.
    for step in range(5, 13):
        assert losses[step] == pytest.approx(sft[step], rel=1e-4), step
    state = json.loads((killed_dir / "state.json").read_text())
    assert state["done"] == ["before", "sft", "grpo"]

    # The final model reloads, carries the training (it is not the untrained model), and generates.
    grpo_model, tokenizer = load_model_and_tokenizer(ModelConfig(name=str(killed_dir / "grpo" / "final")))
    smoke = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())["embedded"]
    untrained, _ = load_model_and_tokenizer(ModelConfig(**smoke, cache_dir=str(tmp_path / "models")))
    assert any(not torch.equal(a, b) for a, b in zip(grpo_model.parameters(), untrained.parameters(), strict=True))
    prompt = ["Task: write the G-code for layer 1 of 1 at Z=0.200 mm."]
    text = generate(grpo_model, tokenizer, prompt, max_new_tokens=8)
    assert len(tokenizer(text[0], add_special_tokens=False)["input_ids"]) <= 8
    assert text == generate(grpo_model, tokenizer, prompt, max_new_tokens=8), "greedy decoding is repeatable"


def test_config_errors_name_key_and_range(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo:\n  batch_size: 6\n  num_generations: 4\n")
    with pytest.raises(ConfigError, match="grpo.batch_size = 6 must be a multiple of num_generations"):
        load_config(bad)
    bad.write_text("sft:\n  learning_rate: 5\n")
    with pytest.raises(ConfigError, match=r"sft.learning_rate = 5.0: out of range"):
        load_config(bad)
    bad.write_text("sft:\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"sft.lerning_rate: unknown key \(did you mean 'learning_rate'\?\)"):
        load_config(bad)
    bad.write_text("eval_episodes: 0\n")
    with pytest.raises(ConfigError, match=r"eval_episodes = 0: out of range"):
        load_config(bad)
    assert load_config(ROOT / "configs" / "tiny-cpu.yaml") == load_config(None)
    # Every shipped loop config loads and validates (the GPU one included: it cannot run here).
    for name in ("gpu", "tiny-cpu-multiturn", "supervisor-tiny", "smoke", "smoke-multiturn", "smoke-supervisor"):
        load_config(ROOT / "configs" / f"{name}.yaml")
    gpu = load_config(ROOT / "configs" / "gpu.yaml")
    assert gpu.embedded.num_layers > 4 and gpu.grpo.randomize and not gpu.grpo.use_vllm


def test_seed_and_set_override_the_yaml_and_are_checked_like_it(tmp_path: Path) -> None:
    config = load_config(ROOT / "configs" / "tiny-cpu.yaml", ["grpo.max_steps=7", "grpo.randomize=true",
                                                              "train_difficulties=[0, 1]", "eval_suite=tiny-v0"], 2)
    assert (config.seed, config.grpo.max_steps, config.grpo.randomize, config.train_difficulties) == (2, 7, True, [0, 1])
    # Exponent notation without a dot is a number, though YAML 1.1 reads it as a string.
    assert load_config(None, ["grpo.learning_rate=1e-4"]).grpo.learning_rate == 1e-4
    assert load_config(None, [], 1).seed == 1
    with pytest.raises(ConfigError, match=r"grpo.max_stps: unknown key \(did you mean 'max_steps'\?\)"):
        load_config(None, ["grpo.max_stps=7"])
    with pytest.raises(ConfigError, match=r"sft.learning_rate = 5.0: out of range"):
        load_config(None, ["sft.learning_rate=5"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["grpo.max_steps"])
    with pytest.raises(ConfigError, match="seed is a value, not a section"):
        load_config(ROOT / "configs" / "tiny-cpu.yaml", ["seed.x=1"])
    with pytest.raises(ConfigError, match="seed = -1: out of range"):
        load_config(None, [], -1)
    done = subprocess.run([sys.executable, "-m", "training.sim_loop", "--set", "grpo.beta=lots"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "grpo.beta" in done.stderr, done.stderr[-2000:]
    done = subprocess.run([sys.executable, "-m", "training.make_dataset", "--out", str(tmp_path / "d"), "--set",
                           "jobs=0"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "jobs = 0" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "d").exists()


def test_old_flat_keys_name_their_new_place(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text("grpo_steps: 10\nlearning_rate: 0.001\nlora: true\n")
    with pytest.raises(ConfigError) as err:
        load_config(old)
    assert "grpo_steps moved to grpo.max_steps" in str(err.value)
    assert "learning_rate moved to sft.learning_rate" in str(err.value)
    assert "lora moved to sft.lora and grpo.lora" in str(err.value)
    old.write_text("grpo:\n  output_dir: elsewhere\n")
    with pytest.raises(ConfigError, match=r"grpo.output_dir: the loop sets it; use output_dir \(top level"):
        load_config(old)


def test_loop_config_checks_itself_when_built_in_python() -> None:
    """Ranges and cross-field rules hold for configs made in Python too, before anything runs: the GRPO
    section's reference-sync rule, its temperature range (the loop's own copy once allowed 0), and the
    keys the loop sets."""
    with pytest.raises(ConfigError, match="needs beta > 0"):
        SimLoopConfig(grpo=GRPOSettings(ref_model_sync_steps=10, beta=0.0))
    with pytest.raises(ConfigError, match="temperature = 0.0: out of range"):
        SimLoopConfig(grpo=GRPOSettings(temperature=0.0))
    with pytest.raises(ConfigError, match="sft.seed: the loop sets it"):
        SimLoopConfig(sft=SFTConfig(seed=3))
    with pytest.raises(ConfigError, match="max_polygon_sides = 65: out of range"):
        SimLoopConfig(max_polygon_sides=65)
    with pytest.raises(ConfigError, match="grpo.multi_turn: true needs task GcodeWriter-v1"):
        SimLoopConfig(task="PrintSupervisor-v1", grpo=GRPOSettings(multi_turn=True))
    config = SimLoopConfig(seed=4)
    assert config.grpo_phase(Path("r/grpo")).seed == 4 and config.sft_phase(Path("r/sft")).output_dir == "r/sft"
    # The run directory's config.yaml holds only the keys a user writes, and reads back to the same config.
    assert "seed" not in config.to_dict()["sft"] and "output_dir" not in config.to_dict()["grpo"]
    assert from_dict(SimLoopConfig, config.to_dict()) == config


def test_sft_runs_on_its_own(tmp_path: Path) -> None:
    """``python -m training.sft --config`` trains (LoRA) on a dataset folder and saves a merged model."""

    make_dataset(DatasetConfig(name="s", jobs=4, difficulties=[0], defects_per_job=0, traces=False, images=False,
                               workers=1), tmp_path / "data", progress=False)
    smoke = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    config = {"model": "embedded", "embedded": {**smoke["embedded"], "cache_dir": str(tmp_path / "models")},
              "dataset_path": str(tmp_path / "data"), "batch_size": 1, "max_steps": 9, "checkpoint_interval": 2,
              "output_dir": str(tmp_path / "sft"), "lora": True, "lora_r": 4}
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "training.sft", "--config", str(path), "--set", "max_steps=3",
                           "--seed", "4"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "sft" / "checkpoint-4").exists()  # --set max_steps=3 won over the file's 9
    # The LoRA adapter is merged: the final model is a whole model, no adapter beside it.
    assert (tmp_path / "sft" / "final" / "model.safetensors").is_file()
    assert not (tmp_path / "sft" / "final" / "adapter_config.json").exists()
    assert (tmp_path / "sft" / "checkpoint-2" / "trainer_state.json").is_file()
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_size: 0\n")
    assert subprocess.run([sys.executable, "-m", "training.sft", "--config", str(bad)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120).returncode == 2


@pytest.mark.slow
def test_two_processes_share_one_run_directory(tmp_path: Path) -> None:
    """Data-parallel training (torchrun on CPU with gloo; ``accelerate launch`` on GPUs runs the same code):
    one run directory, the main process alone evaluates and writes, every phase finishes."""
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "training.sim_loop", "--config",
                           str(_config(tmp_path, "ddp"))], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = _run_dir(tmp_path / "ddp")
    assert done.stdout.count(f"run directory: {run_dir}") == 2, "both processes use the main process's directory"
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["phases"]) == {"before", "sft", "grpo"}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in rows if r["phase"] == "sft" and "train/loss" in r) == list(range(1, 13)), \
        "one process logs each step once"
