"""``python -m training.evaluate``: policies side by side with confidence intervals, on any suite."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from training.evaluate import episode_metrics, main, model_folder
from training.writer_eval import EpisodeRecord, top_extruded_z

ROOT = Path(__file__).parent.parent


def _record(reward: float, success: bool, time_s: float, filament_mm: float, z_mm: float = -0.2) -> EpisodeRecord:
    return EpisodeRecord("j", "rectangle", reward, success, reward, True, 10, 0, time_s, filament_mm, (0.5, -0.25), [],
                         z_mm)


def test_episode_metrics_by_hand() -> None:
    records = [_record(1.0, True, 12.0, 3.0), _record(0.5, False, 30.0, 1.0), _record(1.0, True, 8.0, 2.0)]
    reference = [_record(1.0, True, 10.0, 2.0), _record(1.0, True, 10.0, 2.0), _record(1.0, True, 10.0, 2.0)]
    m = episode_metrics(records, reference)
    assert m["success_rate"].value == pytest.approx(2 / 3) and m["mean_reward"].value == pytest.approx(2.5 / 3)
    # Ratios over the episodes both completed: 12/10 and 8/10; 3/2 and 2/2.
    assert m["time_vs_expert"].value == pytest.approx(1.0) and m["time_vs_expert"].n == 2
    assert m["filament_vs_expert"].value == pytest.approx(1.25)
    assert m["size_error_x_mm"].value == 0.5 and m["size_error_y_mm"].value == 0.25  # absolute errors
    assert m["refused_per_1k_lines"].value == 0.0
    assert m["size_error_z_mm"].value == pytest.approx(0.2)  # absolute, of signed per-episode errors
    slicer = [_record(1.0, True, 20.0, 4.0), _record(1.0, False, 10.0, 2.0), _record(1.0, True, 4.0, 1.0)]
    m = episode_metrics(records, reference, slicer=slicer)
    # 12/20 and 8/4; 3/4 and 2/1 (the second episode failed for both).
    assert m["time_vs_slicer"].value == pytest.approx(1.3) and m["filament_vs_slicer"].value == pytest.approx(1.375)


def test_the_height_error_follows_z_through_relative_moves() -> None:
    program = "G90\nG1 Z0.2\nG1 X1 Y1 E0.5\nG91\nG1 Z0.2\nG90\nG1 X2 E0.5\nG1 Z5 X3\nG1 E1\n"
    assert top_extruded_z(program) == pytest.approx(0.4)  # the lift to Z5 and the extrude-only move don't count
    assert math.isnan(top_extruded_z("G1 X1 Y1\nG1 Z3 E1\n"))


def test_a_run_directory_means_its_latest_model(tmp_path: Path) -> None:
    for sub in ("sft/final", "grpo/final"):
        (tmp_path / "run" / sub).mkdir(parents=True)
        (tmp_path / "run" / sub / "config.json").write_text("{}")
    assert model_folder(str(tmp_path / "run")) == str(tmp_path / "run" / "grpo" / "final")
    assert model_folder("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a run directory"):
        model_folder(str(tmp_path / "empty"))


def test_the_command_compares_policies_with_intervals(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert main(["--policy", "expert", "--policy", "random", "--suite", "tiny-v0", "--episodes", "3",
                 "--out", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    expert, random = data["policies"]["expert"]["metrics"], data["policies"]["random"]["metrics"]
    assert expert["success_rate"]["value"] == 1.0 and random["success_rate"]["value"] == 0.0
    # Wilson's interval for 3 of 3: [0.438, 1].
    assert expert["success_rate"]["low"] == pytest.approx(0.4385, abs=1e-4) and expert["success_rate"]["high"] == 1.0
    assert expert["time_vs_expert"]["value"] == 1.0 and random["time_vs_expert"]["value"] is None  # no NaN in JSON
    assert len(data["policies"]["random"]["episodes"]) == 3
    for name in ("report.md", "metrics.png", "rewards.png", "toolpaths.png"):
        assert (out / name).is_file(), name
    assert "| success rate | 1.000 [0.439, 1.000] | 0.000 [0.000, 0.561] |" in (out / "report.md").read_text()


def test_randomised_printers_and_real_klippy(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert main(["--policy", "expert", "--suite", "tiny-v0:randomized", "--episodes", "2", "--backend",
                 "klipper-batch", "--out", str(out)]) == 0
    metrics = json.loads((out / "report.json").read_text())["policies"]["expert"]["metrics"]
    assert metrics["klippy_accepted"]["value"] == 1.0 and metrics["klippy_accepted"]["n"] == 2
    assert "| accepted by Klippy | 1.000" in (out / "report.md").read_text()


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "training.evaluate", "--policy", "expert", "--suite", "nosuch",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "suite 'nosuch'" in done.stderr and "tiny-v0" in done.stderr, done.stderr


def test_supervisor_baselines_on_the_same_episodes(tmp_path: Path) -> None:
    from agent.baselines import main as baselines_main

    assert baselines_main(["ppo", "--steps", "512", "--out", str(tmp_path / "ppo")]) == 0
    assert (tmp_path / "ppo" / "ppo.zip").is_file()
    out = tmp_path / "sup"
    assert main(["--suite", "supervisor", "--episodes", "3", "--out", str(out), "--policy", "noop",
                 "--policy", "rule", "--policy", f"sb3:{tmp_path / 'ppo'}"]) == 0
    rows = json.loads((out / "report.json").read_text())["policies"]
    rule = rows["rule"]["metrics"]
    # The rule, played through the table, scores what the evaluation's own rule baseline scores.
    assert rule["mean_reward"] == pytest.approx(rule["rule_mean_reward"])
    assert rows["noop"]["metrics"]["mean_reward"] != rule["mean_reward"]
    assert math.isfinite(rows[f"sb3:{tmp_path / 'ppo'}"]["metrics"]["mean_reward"])
    assert "| `rule` |" in (out / "report.md").read_text()
