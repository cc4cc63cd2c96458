"""What a run of the closed loop logs: ``metrics.jsonl`` and TensorBoard (namespaced keys: ``train/…``,
``eval/…``, ``safety/…``), and ``curves.png`` drawn from them at the end."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from matplotlib.figure import Figure

PHASES = ("before", "sft", "grpo", "real_world")
"""The phases of a run, in order (``before``: the untrained model's evaluation)."""


class RunLogger:
    """``metrics.jsonl`` plus TensorBoard, namespaced keys (``train/…``, ``eval/…``, ``safety/…``)."""

    def __init__(self, run_dir: Path, log_dir: Path, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        self.enabled = enabled
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import (
                SummaryWriter,  # tensorboard is optional: without it, jsonl only
            )

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


def plot_curves(run_dir: Path) -> None:
    """Loss, reward and success per phase from ``metrics.jsonl`` and ``report.json``, to ``curves.png``."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    # A bare Figure draws to files without pyplot, so no GUI backend is chosen for the caller.
    fig = Figure(figsize=(19, 4))
    axes = fig.subplots(1, 4)
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
