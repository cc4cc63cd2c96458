"""One command, one report: ``python -m training.evaluate --policy P [--policy Q ...] --suite NAME``.

Each policy plays the suite's ``GcodeWriter-v1`` episodes (:func:`training.writer_eval.evaluate`); the report
puts the policies side by side with 95 % confidence intervals (Wilson for rates, bootstrap for means), the
time and filament of each episode against the reference program's (the expert) and PrusaSlicer's on the
same job, the size error of the printed part per axis (X and Y of each layer against its plan, Z of the
highest extrusion against the job's height), and with ``--backend klipper-batch`` whether the real Klipper
host accepts each whole program. It writes ``report.json``, ``report.md`` and plots into ``--out``.

Policies (``--policy``): a run directory of ``training.sim_loop`` (its GRPO model, else its SFT model), a
model folder or Hugging Face id, ``expert`` (the reference program), ``slicer`` (PrusaSlicer's own program for
the same job, :mod:`agent.prusa_policy`), ``random`` (random G-code-alphabet text,
seeded) or ``noop`` (an empty answer). Suites (``--suite``): the held-out suites in ``envs/suites`` by name;
``NAME:randomized`` runs the same jobs each on a printer perturbed within ``configs/randomization.yaml``
(unseen printers); ``supervisor`` compares supervisors instead (:func:`run_supervisor`: also ``rule`` and
``sb3:FOLDER``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.baselines import NO_CHANGE, RandomTextPolicy, load_ppo, rule_supervisor_action, sb3_tuning
from agent.expert import expert_policy
from agent.llm import LLMPolicy, load_pretrained
from agent.policy import Policy
from agent.prusa_policy import PrusaSlicerPolicy
from envs.sampler import load_suite
from envs.slicer import cached_slice
from sim_bridge.backends import EMBEDDED, KLIPPER_BATCH, simulate
from sim_bridge.prusa_slicer import SlicerError
from training.eval_stats import Estimate, bootstrap_mean, json_safe, wilson
from training.supervise import evaluate_supervisor
from training.writer_eval import EpisodeRecord, EvalResult, evaluate, xy_moves

BUILTIN_POLICIES = ("expert", "slicer", "random", "noop")
"""Policies named by a word rather than a path."""
RANDOMIZED_SUFFIX = ":randomized"
"""Appended to a suite name: the same jobs on randomised printers."""
MAX_NEW_TOKENS = 1024
"""Longest answer a language-model policy may write per step."""


# -- policies ------------------------------------------------------------------------------------------------------
def model_folder(spec: str) -> str:
    """The model a ``--policy`` path means: a run directory's latest final model (phase 3's, else GRPO's,
    else SFT's); any other folder or name as given."""
    path = Path(spec)
    for sub in ("real_world/final", "grpo/final", "sft/final"):
        if (path / sub / "config.json").is_file():
            return str(path / sub)
    if path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(f"--policy {spec}: neither a run directory (no grpo/final or sft/final) nor a model folder "
                         "(no config.json)")
    return spec


def make_policy(spec: str, suite: str, seed: int = 0) -> Policy:
    """The policy ``spec`` names (see the module docstring)."""
    if spec == "expert":
        return expert_policy(suite)
    if spec == "slicer":
        return PrusaSlicerPolicy(suite)
    if spec == "random":
        return RandomTextPolicy(seed=seed)
    if spec == "noop":
        return lambda prompts: ["" for _ in prompts]
    model, tokenizer = load_pretrained(model_folder(spec))
    model.eval()
    return LLMPolicy(model, tokenizer, max_new_tokens=MAX_NEW_TOKENS)


def parse_suite(name: str) -> tuple[str, bool]:
    """``(suite, randomized)`` of a ``--suite`` value; an unknown suite is a clear error."""
    randomized = name.endswith(RANDOMIZED_SUFFIX)
    base = name[: -len(RANDOMIZED_SUFFIX)] if randomized else name
    load_suite(base)  # raises naming the suites there are
    return base, randomized


# -- metrics -------------------------------------------------------------------------------------------------------
@dataclass
class PolicyReport:
    """One policy's results on one suite."""

    policy: str
    result: EvalResult
    metrics: dict[str, Estimate]
    klippy_accepted: Estimate | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    """What the reader must know about this policy's run (PrusaSlicer's layer-count mismatches)."""


def _ratios(records: Sequence[EpisodeRecord], reference: Sequence[EpisodeRecord], attr: str) -> list[float]:
    """Per-episode policy/reference ratios of ``attr``, over episodes both completed successfully."""
    return [getattr(r, attr) / getattr(e, attr) for r, e in zip(records, reference, strict=True)
            if r.success and e.success and getattr(e, attr) > 0]


def episode_metrics(records: Sequence[EpisodeRecord], reference: Sequence[EpisodeRecord] | None, seed: int = 0,
                    slicer: Sequence[EpisodeRecord] | None = None) -> dict[str, Estimate]:
    """The report's metrics with confidence intervals from per-episode records (``reference``: the
    expert's records on the same episodes, ``slicer``: PrusaSlicer's, for the time and filament ratios)."""
    n = len(records)
    out = {
        "success_rate": wilson(sum(r.success for r in records), n),
        "mean_reward": bootstrap_mean([r.reward for r in records], seed),
        "valid_program_rate": wilson(sum(r.valid for r in records), n),
        "mean_geometry": bootstrap_mean([r.geometry for r in records], seed),
        "refused_per_1k_lines": Estimate(1000.0 * sum(r.violations for r in records)
                                         / max(sum(r.lines for r in records), 1), math.nan, math.nan, n),
    }
    for axis, i in (("x", 0), ("y", 1)):
        out[f"size_error_{axis}_mm"] = bootstrap_mean(
            [abs(r.size_error_mm[i]) for r in records if math.isfinite(r.size_error_mm[i])], seed)
    out["size_error_z_mm"] = bootstrap_mean(
        [abs(r.size_error_z_mm) for r in records if math.isfinite(r.size_error_z_mm)], seed)
    if reference is not None:
        out["time_vs_expert"] = bootstrap_mean(_ratios(records, reference, "print_time_s"), seed)
        out["filament_vs_expert"] = bootstrap_mean(_ratios(records, reference, "filament_mm"), seed)
    if slicer is not None:
        out["time_vs_slicer"] = bootstrap_mean(_ratios(records, slicer, "print_time_s"), seed)
        out["filament_vs_slicer"] = bootstrap_mean(_ratios(records, slicer, "filament_mm"), seed)
    return out


def klippy_acceptance(records: Sequence[EpisodeRecord], suite: str, episodes: int) -> Estimate:
    """Whether the real Klipper host (batch mode) runs each episode's whole program without an error: the
    answers joined, after the heat-and-home setup the environment ran first for a job without its own start.
    Klippy runs the job's nominal printer config, also for a randomised suite (its perturbations are the
    embedded simulator's)."""
    jobs = load_suite(suite)
    accepted = 0
    for i, record in enumerate(records):
        job = jobs[i % len(jobs)]
        setup = "" if job.start_end else cached_slice(job).setup
        program = setup + "\n".join(record.answers) + "\n"
        report = simulate(program, job.printer, backend=KLIPPER_BATCH, material=job.material)
        accepted += not any(f.fatal and f.source == KLIPPER_BATCH for f in report.failures)
    return wilson(accepted, len(records))


# -- writing -------------------------------------------------------------------------------------------------------
METRIC_LABELS = {
    "success_rate": "success rate", "mean_reward": "mean reward", "valid_program_rate": "valid programs",
    "mean_geometry": "mean geometry", "refused_per_1k_lines": "refused / 1k lines",
    "size_error_x_mm": "|size error X| (mm)", "size_error_y_mm": "|size error Y| (mm)",
    "size_error_z_mm": "|size error Z| (mm)",
    "time_vs_expert": "time / expert", "filament_vs_expert": "filament / expert",
    "time_vs_slicer": "time / PrusaSlicer", "filament_vs_slicer": "filament / PrusaSlicer",
    "klippy_accepted": "accepted by Klippy",
}


def _cell(est: Estimate | None) -> str:
    if est is None or est.n == 0 or math.isnan(est.value):
        return "—"
    if math.isnan(est.low):
        return f"{est.value:.3f}"
    return f"{est.value:.3f} [{est.low:.3f}, {est.high:.3f}]"


def write_report(reports: Sequence[PolicyReport], suite: str, episodes: int, out: Path) -> dict[str, Any]:
    """``report.json``, ``report.md`` and plots of ``reports`` in ``out``; returns the JSON object."""
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"suite": suite, "episodes": episodes, "policies": {}}
    for rep in reports:
        metrics = {k: v.as_dict() for k, v in rep.metrics.items()}
        if rep.klippy_accepted is not None:
            metrics["klippy_accepted"] = rep.klippy_accepted.as_dict()
        data["policies"][rep.policy] = {
            "metrics": metrics, "notes": rep.notes,
            "episodes": [{"job_id": r.job_id, "part_kind": r.part_kind, "reward": r.reward, "success": r.success,
                          "geometry": r.geometry, "valid": r.valid, "print_time_s": r.print_time_s,
                          "filament_mm": r.filament_mm} for r in rep.result.per_episode]}
    (out / "report.json").write_text(json.dumps(json_safe(data), indent=2) + "\n", encoding="utf-8")
    keys = [k for k in METRIC_LABELS if any(k in r.metrics or (k == "klippy_accepted" and r.klippy_accepted)
                                            for r in reports)]
    lines = [f"# Evaluation on `{suite}` ({episodes} episodes)", "",
             "Values with 95 % confidence intervals (Wilson for rates, bootstrap for means); "
             "docs/evaluation.md defines each metric.", "",
             "| metric | " + " | ".join(f"`{r.policy}`" for r in reports) + " |",
             "| --- |" + " ---: |" * len(reports)]
    for key in keys:
        cells = [_cell(r.klippy_accepted if key == "klippy_accepted" else r.metrics.get(key)) for r in reports]
        lines.append(f"| {METRIC_LABELS[key]} | " + " | ".join(cells) + " |")
    notes = [f"- `{r.policy}`: {note}" for r in reports for note in r.notes]
    if notes:
        lines += ["", "Notes:", "", *notes]
    lines += ["", "![metrics](metrics.png)", "", "![reward distributions](rewards.png)", "",
              "![best and worst layers](toolpaths.png)", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    _plots(reports, suite, out)
    return data


def _plots(reports: Sequence[PolicyReport], suite: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = ["success_rate", "valid_program_rate", "mean_reward", "mean_geometry"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(reports), 1)
    for j, rep in enumerate(reports):
        est = [rep.metrics[k] for k in rates]
        values = np.array([e.value for e in est])
        err = np.array([[e.value - e.low for e in est], [e.high - e.value for e in est]])
        ax.bar(np.arange(len(rates)) + j * width, values, width, yerr=np.clip(np.nan_to_num(err), 0, None), capsize=3,
               label=rep.policy)
    ax.set_xticks(np.arange(len(rates)) + width * (len(reports) - 1) / 2, [METRIC_LABELS[k] for k in rates])
    ax.set_ylim(min(0.0, *(rep.metrics[k].low for rep in reports for k in rates if math.isfinite(rep.metrics[k].low))),
                max(1.05, *(rep.metrics[k].high for rep in reports for k in rates if math.isfinite(rep.metrics[k].high))))
    ax.set_title(f"{suite}: 95 % intervals")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    for rep in reports:
        ax.hist([r.reward for r in rep.result.per_episode], bins=20, alpha=0.5, label=rep.policy)
    ax.set_xlabel("episode reward")
    ax.set_ylabel("episodes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rewards.png", dpi=100)
    plt.close(fig)

    jobs = load_suite(parse_suite(suite)[0])
    fig, axes = plt.subplots(len(reports), 2, figsize=(8, 4 * len(reports)), squeeze=False)
    for row, rep in zip(axes, reports, strict=True):
        episodes = rep.result.per_episode
        order = sorted(range(len(episodes)), key=lambda i: episodes[i].reward)
        for ax, index, title in ((row[0], order[-1], "best"), (row[1], order[0], "worst")):
            job = jobs[index % len(jobs)]
            plan = cached_slice(job).layer_paths[0] if cached_slice(job).layer_paths else []
            for path in plan:
                # The toolpath keeps the numbers as the reference writes them (text).
                xs = [float(path.start[0]), *(float(m[0]) for m in path.moves)]
                ys = [float(path.start[1]), *(float(m[1]) for m in path.moves)]
                ax.plot(xs, ys, color="0.7", lw=4)
            answers = episodes[index].answers
            layer = next((a for a in answers if ";LAYER_CHANGE" in a), next((a for a in answers if "E" in a), ""))
            ax.plot(*_extruded_xy(layer), color="C3", lw=1, label="answer")
            short = "/".join(Path(rep.policy).parts[-2:]) if "/" in rep.policy else rep.policy
            ax.set_title(f"{short}: {title} ({job.job_id}, reward {episodes[index].reward:.2f})", fontsize=8)
            ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(out / "toolpaths.png", dpi=100)
    plt.close(fig)


def _extruded_xy(text: str) -> tuple[list[float], list[float]]:
    """XY of the answer's extruding moves, nan-separated where it travels (for drawing)."""
    xs: list[float] = []
    ys: list[float] = []
    for x0, y0, x1, y1, extruding in xy_moves(text):
        xs += [x0, x1] if extruding else [math.nan]
        ys += [y0, y1] if extruding else [math.nan]
    return xs, ys


# -- the loop's phases ---------------------------------------------------------------------------------------------
EVAL_DIR = "eval"
"""Folder of a run directory holding each phase's episodes and the phases' report."""


def save_episodes(result: EvalResult, path: Path) -> None:
    """Every episode record of ``result`` as JSON (a finished phase's evaluation, kept for the report)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([dataclasses.asdict(r) for r in result.per_episode]) + "\n", encoding="utf-8")


def load_episodes(path: Path) -> list[EpisodeRecord]:
    rows = json.loads(path.read_text(encoding="utf-8"))
    return [EpisodeRecord(**{**r, "size_error_mm": tuple(r["size_error_mm"])}) for r in rows]


def write_phase_report(run_dir: Path, phases: Sequence[str], suite: str, episodes: int, seed: int = 0) -> None:
    """The loop's phases side by side (each phase's model as a policy), with the same intervals and ratios
    as ``python -m training.evaluate``: ``RUN_DIR/eval/report.md``. The expert's episodes are evaluated once
    and kept beside the phases'."""
    folder = run_dir / EVAL_DIR
    expert_path = folder / f"expert-{suite}-{episodes}.json"  # a resumed run may evaluate another suite
    if not expert_path.is_file():
        save_episodes(evaluate(expert_policy(suite), suite, episodes), expert_path)
    reference = load_episodes(expert_path)
    reports = []
    for phase in phases:
        if (folder / f"{phase}.json").is_file():
            records = load_episodes(folder / f"{phase}.json")
            result = EvalResult(0.0, 0.0, 0.0, 0.0, len(records), per_episode=records)
            reports.append(PolicyReport(phase, result, episode_metrics(records, reference, seed)))
    if reports:
        write_report(reports, suite, episodes, folder)


# -- the supervisor's table ---------------------------------------------------------------------------------------
SUPERVISOR_SUITE = "supervisor"
"""``--suite supervisor``: seeded ``PrintSupervisor-v1`` episodes (difficulty 2) instead of a writer suite."""


def run_supervisor(policies: Sequence[str], episodes: int, out: Path, seed: int = 0) -> dict[str, Any]:
    """The supervisor baselines side by side on the same seeded episodes: ``noop``, ``random``, ``rule``,
    ``sb3:FOLDER`` (a PPO model of ``python -m agent.baselines ppo``) and language models (run directories of
    ``task: PrintSupervisor-v1``, or model folders)."""
    rows: dict[str, Any] = {}
    for spec in policies:
        print(f"evaluate: {spec} supervising {episodes} episodes", flush=True)
        if spec == "rule":
            result = evaluate_supervisor(None, episodes, seed, env_policy=rule_supervisor_action)
        elif spec.startswith("sb3:"):
            ppo = load_ppo(spec[4:])
            result = evaluate_supervisor(None, episodes, seed, env_policy=lambda env, p=ppo: sb3_tuning(p, env))
        elif spec == "noop":
            result = evaluate_supervisor(lambda prompts: [NO_CHANGE for _ in prompts], episodes, seed)
        else:
            result = evaluate_supervisor(make_policy(spec, "tiny-v0", seed), episodes, seed)
        rows[spec] = {"success_rate": wilson(round(result.success_rate * episodes), episodes).as_dict(),
                      "mean_reward": result.mean_reward, "valid_gcode_rate": result.valid_gcode_rate,
                      "refused_per_1k_lines": result.safety_violations_per_1k_lines,
                      "rule_mean_reward": result.rule_mean_reward}
    out.mkdir(parents=True, exist_ok=True)
    data = {"suite": SUPERVISOR_SUITE, "episodes": episodes, "policies": {k: {"metrics": v} for k, v in rows.items()}}
    (out / "report.json").write_text(json.dumps(json_safe(data), indent=2) + "\n", encoding="utf-8")
    lines = [f"# Supervisors on {episodes} seeded `PrintSupervisor-v1` episodes (difficulty 2)", "",
             "| policy | success rate [95 %] | mean reward per layer | valid answers | refused / 1k lines |",
             "| --- | --- | ---: | ---: | ---: |"]
    for spec, m in rows.items():
        sr = m["success_rate"]
        lines.append(f"| `{spec}` | {sr['value']:.3f} [{sr['low']:.3f}, {sr['high']:.3f}] | {m['mean_reward']:.3f} | "
                     f"{m['valid_gcode_rate']:.3f} | {m['refused_per_1k_lines']:.2f} |")
    if rows:
        lines += ["", f"The rule supervisor's mean reward on the same episodes: "
                  f"{next(iter(rows.values()))['rule_mean_reward']:.3f}.", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return data


# -- command -------------------------------------------------------------------------------------------------------
def run(policies: Sequence[str], suite: str, episodes: int, out: Path, backend: str = EMBEDDED,
        seed: int = 0) -> dict[str, Any]:
    """Evaluate every policy on ``suite`` and write the report (see the module docstring)."""
    if suite == SUPERVISOR_SUITE:
        return run_supervisor(policies, episodes, out, seed)
    base, randomized = parse_suite(suite)
    results: dict[str, EvalResult] = {}
    notes: dict[str, list[str]] = {}
    # The expert and PrusaSlicer are the references of the time and filament ratios.
    for spec in dict.fromkeys([*policies, "expert", "slicer"]):
        print(f"evaluate: {spec} on {suite}, {episodes} episodes", flush=True)
        try:
            policy = make_policy(spec, base, seed)
        except SlicerError as err:
            if spec in policies:
                raise
            # Only the ratios against PrusaSlicer need it: the report goes on without them.
            print(f"evaluate: no ratios against PrusaSlicer: {err}", flush=True)
            continue
        results[spec] = evaluate(policy, base, episodes, randomized=randomized)
        notes[spec] = list(getattr(policy, "notes", []))
        for note in notes[spec]:
            print(f"evaluate: {spec}: {note}", flush=True)
    reference = results["expert"].per_episode
    slicer_records = results["slicer"].per_episode if "slicer" in results else None
    reports = []
    for spec in policies:
        rep = PolicyReport(spec, results[spec], episode_metrics(results[spec].per_episode, reference, seed,
                                                                slicer_records), notes=notes[spec])
        if backend == KLIPPER_BATCH:
            print(f"evaluate: {spec}'s programs through the real Klipper host", flush=True)
            rep.klippy_accepted = klippy_acceptance(results[spec].per_episode, base, episodes)
        reports.append(rep)
    return write_report(reports, suite, episodes, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", action="append", required=True,
                        help="RUN_DIR, model folder or HF id, or one of " + ", ".join(BUILTIN_POLICIES)
                        + "; with --suite supervisor also rule and sb3:FOLDER (repeatable)")
    parser.add_argument("--suite", default="tiny-v0", help="held-out suite (envs/suites), NAME:randomized for "
                        "randomised printers")
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--backend", choices=(EMBEDDED, KLIPPER_BATCH), default=EMBEDDED,
                        help="klipper-batch also runs every program through the real Klipper host")
    parser.add_argument("--out", type=Path, default=Path("eval"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes {args.episodes}: must be at least 1")
    try:
        data = run(args.policy, args.suite, args.episodes, args.out, args.backend, args.seed)
    except (ValueError, OSError, SlicerError) as err:
        parser.exit(2, f"evaluate: {err}\n")
    for name, entry in data["policies"].items():
        m = entry["metrics"]
        reward = m["mean_reward"]["value"] if isinstance(m["mean_reward"], dict) else m["mean_reward"]
        print(f"{name}: success {m['success_rate']['value']:.3f}, mean reward {reward:.3f}")
    print(f"report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
