"""Seeded task sampling by difficulty, and the fixed held-out suites.

Difficulty levels:

0. one layer, one perimeter (rectangle, circle or polygon), no infill;
1. one or two layers, two or three perimeters, no infill;
2. two to four layers with infill (the first and last solid);
3. parts with holes (ring, hole plate) or an L-shape, three to six layers;
4. whole parts (any kind, a bridge too) of four to twelve layers, with the start and end sequences.

Held-out suites live in ``envs/suites/NAME.json`` as lists of jobs; no training data is drawn from them
(:func:`sample_job` refuses ids that collide with a suite, and suite ids carry the suite's name).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from envs.jobs import PartSpec, PrintJob, ProcessSettings
from sim_bridge.printers import load_printer

SUITE_DIR = Path(__file__).parent / "suites"
SIMPLE_KINDS = ("rectangle", "circle", "polygon")
HOLE_KINDS = ("ring", "hole_plate", "l_shape")
ALL_KINDS = ("rectangle", "circle", "ring", "l_shape", "polygon", "hole_plate", "bridge")
TRAIN_PRINTERS = ("ender3-klipper", "corexy300-klipper")


def _bed_center(printer: str) -> list[float]:
    p = load_printer(printer)
    return [round((p.position_min_mm[0] + p.position_max_mm[0]) / 2.0, 1),
            round((p.position_min_mm[1] + p.position_max_mm[1]) / 2.0, 1)]


def _part(kind: str, rng: np.random.Generator, height_mm: float, center: list[float]) -> PartSpec:
    def u(lo: float, hi: float) -> float:
        return round(float(rng.uniform(lo, hi)), 1)

    if kind == "rectangle":
        size = [u(10, 30), u(10, 30)]
    elif kind == "circle":
        size = [u(10, 30)]
    elif kind == "ring":
        outer = u(16, 32)
        size = [outer, round(outer * float(rng.uniform(0.35, 0.6)), 1)]
    elif kind == "l_shape":
        w, d = u(20, 34), u(20, 34)
        size = [w, d, round(min(w, d) * float(rng.uniform(0.3, 0.45)), 1)]
    elif kind == "polygon":
        size = [u(12, 30), float(rng.integers(3, 9))]
    elif kind == "hole_plate":
        w, d = u(18, 32), u(18, 32)
        size = [w, d, round(min(w, d) * float(rng.uniform(0.25, 0.45)), 1)]
    else:  # bridge
        size = [u(6, 12), u(5, 8), u(6, 10), 0.6]
    return PartSpec(kind=kind, size_mm=size, height_mm=round(height_mm, 3), center_mm=list(center))


def sample_job(rng: np.random.Generator, difficulty: int, job_id: str | None = None,
               printers: tuple[str, ...] = TRAIN_PRINTERS) -> PrintJob:
    """A random job of the given difficulty (0–4), reproducible from ``rng``; never a held-out job id."""
    if job_id is not None and job_id in heldout_ids():
        raise ValueError(f"job id {job_id!r} belongs to a held-out suite")
    return _sample(rng, difficulty, job_id, printers)


def _sample(rng: np.random.Generator, difficulty: int, job_id: str | None, printers: tuple[str, ...]) -> PrintJob:
    if not 0 <= difficulty <= 4:
        raise ValueError(f"difficulty {difficulty}: out of range, allowed 0..4")
    printer = str(rng.choice(printers))
    center = _bed_center(printer)
    layer_h = 0.2
    perimeters, density, start_end = 1, 0.0, False
    if difficulty == 0:
        kind, layers = str(rng.choice(SIMPLE_KINDS)), 1
    elif difficulty == 1:
        kind, layers, perimeters = str(rng.choice(SIMPLE_KINDS)), int(rng.integers(1, 3)), int(rng.integers(2, 4))
    elif difficulty == 2:
        kind, layers, perimeters = str(rng.choice(SIMPLE_KINDS)), int(rng.integers(2, 5)), 2
        density = float(rng.choice([0.15, 0.2, 0.3]))
    elif difficulty == 3:
        kind, layers, perimeters = str(rng.choice(HOLE_KINDS)), int(rng.integers(3, 7)), 2
        density = float(rng.choice([0.15, 0.2, 0.3]))
    else:
        kind, layers, perimeters = str(rng.choice(ALL_KINDS)), int(rng.integers(4, 13)), 2
        density, start_end = float(rng.choice([0.15, 0.2, 0.3])), True
        if kind == "bridge":
            layers = max(layers, 5)
    part = _part(kind, rng, layers * layer_h, center)
    temps = {"PLA": (210.0, 60.0), "PETG": (235.0, 80.0), "ABS": (245.0, 100.0)}
    material = "PLA" if difficulty < 3 else str(rng.choice(["PLA", "PETG"]))
    hotend, bed = temps[material]
    # Levels 0 and 1 are perimeters only: no solid layers either.
    solid = 0 if difficulty <= 1 else (1 if layers <= 3 else 2)
    process = ProcessSettings(perimeters=perimeters, infill_density=density, hotend_temp_c=hotend, bed_temp_c=bed,
                              solid_layers=solid, fan=1.0 if material == "PLA" else 0.5)
    if job_id is None:
        job_id = f"d{difficulty}-{int(rng.integers(0, 2**31)):010d}"
    return PrintJob(job_id=job_id, part=part, printer=printer, material=material, process=process,
                    difficulty=difficulty, start_end=start_end)


class JobSource:
    """Where an environment's jobs come from: a fixed job, a held-out suite in order (cycling), or the
    seeded sampler at a difficulty (or one drawn from ``difficulties`` when ``difficulty`` is None).

    ``reset`` options override per episode: ``job`` (a PrintJob or its dict), ``job_index`` (into the
    suite), ``difficulty``.
    """

    def __init__(self, job: PrintJob | dict | None, suite: str | None, difficulty: int | None,
                 difficulties: tuple[int, ...] = (0, 1, 2, 3, 4)) -> None:
        self.fixed_job = PrintJob.from_dict(job) if isinstance(job, dict) else job
        self.suite = load_suite(suite) if suite else None
        self.difficulty = difficulty
        self.difficulties = difficulties
        self._cursor = 0

    def next(self, rng: np.random.Generator, options: dict | None = None) -> PrintJob:
        """The job of the next episode."""
        options = options or {}
        if "job" in options:
            job = options["job"]
            return PrintJob.from_dict(job) if isinstance(job, dict) else job
        if self.fixed_job is not None:
            return self.fixed_job
        if self.suite is not None:
            index = int(options.get("job_index", self._cursor))
            self._cursor = (index + 1) % len(self.suite)
            return self.suite[index % len(self.suite)]
        difficulty = options.get("difficulty", self.difficulty)
        if difficulty is None:
            difficulty = int(rng.choice(self.difficulties))
        return sample_job(rng, int(difficulty))


def load_suite(name: str) -> list[PrintJob]:
    """A held-out suite by name (``envs/suites/NAME.json``)."""
    path = SUITE_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SUITE_DIR.glob("*.json")))
        raise FileNotFoundError(f"suite {name!r}: no {path} (known suites: {known})")
    return [PrintJob.from_dict(_resolve_mesh(d)) for d in json.loads(path.read_text())["jobs"]]


def _resolve_mesh(job: dict) -> dict:
    """A suite job whose ``stl`` mesh path is relative to the suite folder, with that path made whole."""
    part = job.get("part", {})
    if part.get("stl_path") and not Path(part["stl_path"]).is_absolute():
        return {**job, "part": {**part, "stl_path": str(SUITE_DIR / part["stl_path"])}}
    return job


@lru_cache(maxsize=1)
def heldout_ids() -> frozenset[str]:
    """Every job id in every held-out suite."""
    ids: set[str] = set()
    for path in SUITE_DIR.glob("*.json"):
        ids.update(d["job_id"] for d in json.loads(path.read_text())["jobs"])
    return frozenset(ids)


def part_key(part: PartSpec) -> str:
    """Identifier of a part's geometry (jobs of the same part share it; dataset splits are made by it)."""
    text = f"{part.kind}|{part.size_mm}|{part.height_mm}|{part.stl_path}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def heldout_parts() -> frozenset[str]:
    """:func:`part_key` of every part in every held-out suite: training data must not use these parts (small
    parts are drawn from a small space, so a training job can repeat a held-out job's part by chance)."""
    keys: set[str] = set()
    for path in SUITE_DIR.glob("*.json"):
        keys.update(part_key(PrintJob.from_dict(d).part) for d in json.loads(path.read_text())["jobs"])
    return frozenset(keys)


def make_suite(name: str, seed: int, per_difficulty: int) -> dict[str, object]:
    """Build a suite's content (used once to write ``envs/suites/NAME.json``; kept for reproducibility)."""
    rng = np.random.default_rng(seed)
    jobs = []
    for difficulty in range(5):
        for k in range(per_difficulty):
            jobs.append(_sample(rng, difficulty, f"{name}-d{difficulty}-{k:02d}", TRAIN_PRINTERS).to_dict())
    return {"name": name, "version": 0, "seed": seed, "jobs": jobs}
