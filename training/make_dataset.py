"""Make a dataset from the reference slicer and the simulator: ``python -m training.make_dataset``.

``python -m training.make_dataset --config configs/dataset-tiny.yaml --out data/sim-tiny``

For each job (sampled from the config's seed; job ``i`` depends only on the seed and ``i``):

* **sft** — supervised pairs for ``GcodeWriter``: the environment's prompt at each step → the reference
  program's G-code for that step;
* **programs** — the reference program and defect variants (:mod:`training.defects`), each labelled with
  the injected defect and the simulated outcome (success, failures with line and layer, time, filament);
* **traces** — each program's sensor time series (temperatures, targets, fan, flow, position) on one time
  base (``t_s``), and a top-view **image** (PNG) of the printed result;
* **jobs** — the job specs.

Jobs are grouped into shards (``jobs_per_shard``); shards are made in parallel processes and written
atomically, the ``jobs`` table last, so a shard with its ``jobs`` file is complete. An interrupted run
resumes: complete shards are kept, partial ones are removed and made again. The same config and seed give
byte-identical shards. ``kind: adaptation`` perturbs every simulated printer within
``configs/randomization.yaml`` (phase 2 data).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import struct
import sys
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from envs.gcode_writer import GcodeWriterEnv
from envs.jobs import PrintJob
from envs.randomization import load_randomization, randomize_simulator
from envs.sampler import heldout_parts, part_key, sample_job
from envs.slicer import slice_job
from sim_bridge.backends import KLIPPER_BATCH, simulate
from sim_bridge.config import ConfigError, check_ranges, load_yaml, ranged
from sim_bridge.options import SimOptions
from sim_bridge.plots import render_rgb
from sim_bridge.report import EMBEDDED, PrintReport
from sim_bridge.simulator import Simulator
from training import datafmt
from training.cli import add_override_arguments
from training.defects import DEFECTS


@dataclass(frozen=True)
class DatasetConfig:
    """What to generate (YAML keys map 1:1; see configs/dataset-tiny.yaml)."""

    name: str = "sim-tiny"
    """Dataset name (also the prefix of its job ids)."""
    kind: str = ranged("simulation", choices=("simulation", "adaptation"))
    """``simulation`` (nominal printers) or ``adaptation`` (printers perturbed within the randomisation ranges)."""
    seed: int = ranged(0, 0, 2**31 - 1)
    """Seed of everything random (jobs, defects, perturbations)."""
    jobs: int = ranged(40, 1, 10_000_000)
    """Number of jobs."""
    difficulties: list[int] = ranged([0, 1, 2, 3, 4], 0, 4)
    """Job ``i`` has difficulty ``difficulties[i % len(difficulties)]``."""
    jobs_per_shard: int = ranged(8, 1, 100_000)
    """Jobs per shard (the unit of parallelism and of resumption)."""
    part_kinds: list[str] = field(default_factory=list)
    """Keep only jobs of these part kinds (others are redrawn from the same generator); empty keeps all."""
    max_polygon_sides: int = ranged(0, 0, 64)
    """With a positive value, polygon parts have at most this many sides (short programs for small models)."""
    defects: list[str] = field(default_factory=lambda: sorted(DEFECTS))
    """Defects to inject (names from training.defects.DEFECTS)."""
    defects_per_job: int = ranged(2, 0, 8)
    """Defect variants per job, drawn without replacement from ``defects``."""
    traces: bool = True
    """Record sensor traces for every program."""
    trace_interval_s: float = ranged(1.0, 0.01, 60.0)
    """Sampling interval of the traces."""
    images: bool = True
    """Write a top-view PNG of every program's result."""
    resolution_mm: float = ranged(0.2, 0.05, 2.0)
    """Height-map cell size of the simulations."""
    workers: int = ranged(0, 0, 256)
    """Parallel processes; 0 means one per CPU core."""
    randomization: str = "configs/randomization.yaml"
    """Ranges for ``kind: adaptation`` (relative to the current directory)."""
    backend: str = ranged(EMBEDDED, choices=(EMBEDDED, KLIPPER_BATCH))
    """Who decides each program's outcome (success, failures, print time): the embedded simulator, or the
    real Klipper host in batch mode (``klipper-batch``; images, traces and filament stay the embedded
    simulator's, and each record's ``note`` names the backend)."""

    def __post_init__(self) -> None:
        check_ranges(self)
        unknown = sorted(set(self.defects) - set(DEFECTS))
        if unknown:
            raise ConfigError(f"defects: unknown {unknown}; known: {', '.join(sorted(DEFECTS))}")
        if self.defects_per_job > len(self.defects):
            raise ConfigError(f"defects_per_job = {self.defects_per_job}: more than the {len(self.defects)} "
                              "defects listed")
        if self.backend != EMBEDDED and self.kind == "adaptation":
            raise ConfigError(f"backend = {self.backend!r} runs the nominal printer: use kind: simulation "
                              "(only the embedded simulator perturbs printers)")
        if not self.difficulties:
            raise ConfigError("difficulties: give at least one level (0-4)")


def job_wanted(config: DatasetConfig, job: Any) -> bool:
    """Whether a sampled job passes the config's part filters; never a part of a held-out suite."""
    if config.part_kinds and job.part.kind not in config.part_kinds:
        return False
    if part_id(job) in heldout_parts():
        return False
    return not (config.max_polygon_sides and job.part.kind == "polygon"
                and job.part.size_mm[1] > config.max_polygon_sides)


def part_id(job: Any) -> str:
    """Identifier of a job's part geometry (jobs of the same part share it; splits are made by it)."""
    return part_key(job.part)


def png_bytes(rgb: np.ndarray) -> bytes:
    """A minimal, deterministic PNG (8-bit RGB, no metadata) of an ``(h, w, 3)`` array."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[row].astype(np.uint8).tobytes() for row in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _simulate(config: DatasetConfig, job: PrintJob, text: str, rng: np.random.Generator
              ) -> tuple[Simulator, PrintReport]:
    sim = Simulator(job.printer, job.material, SimOptions(resolution_mm=config.resolution_mm, traces=config.traces,
                                                          trace_interval_s=config.trace_interval_s))
    if config.kind == "adaptation":
        randomize_simulator(sim, load_randomization(config.randomization).printer, rng)
    report = sim.run(text)
    if config.backend != EMBEDDED:
        report = simulate(text, job.printer, backend=config.backend, options=sim.options, material=job.material)
    return sim, report


def make_job_records(config: DatasetConfig, index: int) -> dict[str, Any]:
    """Every record of job ``index``: rows per table and images (name → PNG bytes)."""
    rng = np.random.default_rng([config.seed, index])
    difficulty = config.difficulties[index % len(config.difficulties)]
    job = sample_job(rng, difficulty, job_id=f"{config.name}-{index:07d}")
    while not job_wanted(config, job):
        job = sample_job(rng, difficulty, job_id=f"{config.name}-{index:07d}")
    pid = part_id(job)
    job_json = job.to_json()
    out: dict[str, Any] = {"jobs": [{"job_id": job.job_id, "part_id": pid, "difficulty": difficulty, "job": job_json}],
                           "sft": [], "programs": [], "traces": [], "images": {}}
    env = GcodeWriterEnv(job=job, resolution_mm=config.resolution_mm)
    obs, _ = env.reset(seed=index)
    for step, (kind, layer) in enumerate(env.steps):
        completion = env.expert_action()
        out["sft"].append({"record_id": f"{job.job_id}-s{step:03d}", "job_id": job.job_id, "part_id": pid,
                           "step": step, "step_kind": kind, "layer": layer, "prompt": obs["prompt"],
                           "completion": completion, "job": job_json})
        obs, *_ = env.step(completion)
    program = slice_job(job).text()
    chosen = list(rng.choice(config.defects, size=config.defects_per_job, replace=False)) if config.defects_per_job else []
    for variant, defect in enumerate(["", *chosen]):
        text = DEFECTS[defect](program, rng) if defect else program
        sim, report = _simulate(config, job, text, rng)
        record_id = f"{job.job_id}-p{variant}"
        image = ""
        if config.images:
            image = f"{record_id}.png"
            out["images"][image] = png_bytes(render_rgb(sim, 128))
        out["programs"].append({
            "record_id": record_id, "job_id": job.job_id, "part_id": pid, "source": "layerloop-slicer",
            "defect": defect, "gcode": text, "job": job_json, "printer": job.printer, "success": report.success,
            "failures": [{"mode": f.mode, "message": f.message, "line": f.line, "layer": f.layer,
                          "fatal": f.fatal, "count": f.count} for f in report.failures],
            "print_time_s": report.print_time_s, "motion_s": report.time_breakdown_s["motion"],
            "heating_s": report.time_breakdown_s["heating"], "filament_mm": report.filament_mm,
            "layer_count": report.layer_count, "image": image,
            "outcome": "completed" if report.stopped_at_line is None else "error",
            "note": "simulated" if config.backend == EMBEDDED else f"simulated ({config.backend})"})
        if config.traces and report.traces:
            tr = report.traces
            keys = ("t_s", "hotend_c", "hotend_target_c", "bed_c", "bed_target_c", "fan", "flow_mm3_s", "x_mm",
                    "y_mm", "z_mm", "e_mm")
            out["traces"].extend({"record_id": record_id, **{k: tr[k][i] for k in keys}}
                                 for i in range(len(tr["t_s"])))
    return out


def shard_complete(out: Path, shard: int) -> bool:
    """A shard is complete when its ``jobs`` table exists (it is written last)."""
    return (out / "tables" / f"jobs-{shard:05d}.parquet").is_file()


def remove_shard(out: Path, shard: int) -> None:
    """Remove what an interrupted run left of a shard."""
    for path in (out / "tables").glob(f"*-{shard:05d}.parquet"):
        path.unlink()
    images = out / "images" / f"{shard:05d}"
    if images.is_dir():
        for path in images.iterdir():
            path.unlink()
        images.rmdir()


def make_shard(args: tuple[DatasetConfig, str, int]) -> int:
    """Make one shard (in a worker process); returns its number."""
    config, out_text, shard = args
    out = Path(out_text)
    tables: dict[str, list[dict[str, Any]]] = {"jobs": [], "sft": [], "programs": [], "traces": []}
    first = shard * config.jobs_per_shard
    for index in range(first, min(first + config.jobs_per_shard, config.jobs)):
        records = make_job_records(config, index)
        for name, data in records["images"].items():
            datafmt.write_bytes(out / "images" / f"{shard:05d}" / name, data)
        for table in tables:
            tables[table].extend(records[table])
    for table in ("sft", "programs", "traces", "jobs"):
        if table == "traces" and not config.traces:
            continue
        datafmt.write_table(out, table, shard, tables[table])
    return shard


def _init_worker() -> None:
    # One BLAS/numba thread per process: two busy threads on two shared cores can be 50x slower.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["NUMBA_NUM_THREADS"] = "1"


def make_dataset(config: DatasetConfig, out: Path, progress: bool = True) -> datafmt.Manifest:
    """Make (or finish) the dataset ``config`` describes in ``out``; returns its manifest."""
    out.mkdir(parents=True, exist_ok=True)
    datafmt.remove_partial_files(out)
    shards = (config.jobs + config.jobs_per_shard - 1) // config.jobs_per_shard
    todo = []
    for shard in range(shards):
        if shard_complete(out, shard):
            continue
        remove_shard(out, shard)
        todo.append(shard)
    workers = config.workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(todo)))
    with Progress(disable=not progress, transient=False) as bar:
        task = bar.add_task(f"{config.name}: shards", total=shards, completed=shards - len(todo))
        if workers == 1 or len(todo) <= 1:
            for shard in todo:
                make_shard((config, str(out), shard))
                bar.advance(task)
        else:
            with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
                for _ in pool.imap_unordered(make_shard, [(config, str(out), s) for s in todo]):
                    bar.advance(task)
    manifest = datafmt.write_manifest(out, config.name, config.kind, asdict(config), config.seed)
    datafmt.write_card(out, f"Dataset {config.name}", [
        f"Kind: {config.kind}. Made by `python -m training.make_dataset` (layerloop {manifest.code_version}).",
        f"Jobs: {config.jobs} (difficulties {config.difficulties}), seed {config.seed}; "
        f"{config.defects_per_job} defect variant(s) per job from {', '.join(config.defects)}.",
        "Tables: " + ", ".join(f"{k} {v} records" for k, v in sorted(manifest.records.items())) + ".",
        "Format, features and splits: docs/data.md. Load with `training.data.load_table(DIR, TABLE)`.",
        "Provenance: every record is simulated by layerloop's embedded simulator from programs written by its "
        "reference slicer (and the injected defects); no real print is in this dataset."
        + ("" if config.backend == EMBEDDED else f" Outcomes (success, failures, print time) come from "
           f"the {config.backend} backend (the real Klipper host)."),
    ])
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.make_dataset", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, help="dataset YAML (keys as configs/dataset-tiny.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder (made or resumed)")
    parser.add_argument("--workers", type=int, help="override the config's workers")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_override_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = load_yaml(DatasetConfig, args.config, args.set, args.seed)
        if args.workers is not None:
            config = replace(config, workers=args.workers)
        manifest = make_dataset(config, args.out, progress=not args.quiet)
    except (ConfigError, datafmt.DatasetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(manifest.records.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
