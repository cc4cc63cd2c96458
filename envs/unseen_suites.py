"""Held-out suites of what training never shows: unseen shapes, unseen materials, unseen printers.

``python -m envs.unseen_suites`` writes them to ``envs/suites`` (run once; kept for reproducibility):

* ``unseen-shapes-v0`` — ``stl`` parts, never sampled in training: trimesh primitives (cone, hexagonal
  prism, annulus, capsule, torus, a box turned 30°; written to ``envs/suites/meshes``) and the shapes the
  Debian package of PrusaSlicer ships (``/usr/share/PrusaSlicer/shapes``: bunny, cone, pyramid, torus,
  sphere, the M3 nut, the PLA recycling symbol, the helper disk), scaled to a 15–30 mm footprint. Tall
  parts are printed as their bottom few layers (the job's height), so outlines change layer by layer,
  grow (overhangs) or shrink, carry holes and thin features. Each part appears at difficulty 2 (layers
  with infill) and 4 (whole print with start and end);
* ``unseen-materials-v0`` — ABS, which no training job uses, at every difficulty, and PETG at the low
  difficulties where training only uses PLA; temperatures and fan for the material;
* ``unseen-printers-v0`` — every difficulty on the bundled printers training never samples (the Prusa
  MK3S on Marlin, and the Prunt3D test printer); ``NAME:randomized`` (perturbed profiles) is the other
  unseen-printer suite.

Job ids carry the suite's name, so :func:`envs.sampler.sample_job` refuses them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from envs.jobs import PartSpec, PrintJob
from envs.sampler import SUITE_DIR, TRAIN_PRINTERS, _bed_center, _sample

MESH_DIR = SUITE_DIR / "meshes"
PRUSASLICER_SHAPES = Path("/usr/share/PrusaSlicer/shapes")
UNSEEN_PRINTERS = ("mk3s-marlin", "prunt-sim")
MATERIAL_PROCESS = {"PLA": (210.0, 60.0, 1.0), "PETG": (235.0, 80.0, 0.5), "ABS": (245.0, 100.0, 0.2)}
"""Material → (hotend °C, bed °C, fan) of its jobs."""
SHAPES = (
    # (name, mesh, scale, height mm): meshes relative to envs/suites, or PrusaSlicer's.
    ("cone", "meshes/cone.stl", 1.0, 1.6),
    ("hex_prism", "meshes/hex_prism.stl", 1.0, 1.2),
    ("annulus", "meshes/annulus.stl", 1.0, 1.0),
    ("capsule", "meshes/capsule.stl", 1.0, 1.2),
    ("torus", "meshes/torus.stl", 1.0, 1.2),
    ("box_turned", "meshes/box_turned.stl", 1.0, 1.0),
    ("ps_bunny", str(PRUSASLICER_SHAPES / "bunny.stl"), 0.25, 1.2),
    ("ps_cone", str(PRUSASLICER_SHAPES / "cone.stl"), 0.8, 1.6),
    ("ps_pyramid", str(PRUSASLICER_SHAPES / "pyramid.stl"), 1.0, 1.6),
    ("ps_torus", str(PRUSASLICER_SHAPES / "torus.stl"), 0.8, 1.2),
    ("ps_sphere", str(PRUSASLICER_SHAPES / "sphere.stl"), 0.8, 1.0),
    ("ps_m3_nut", str(PRUSASLICER_SHAPES / "M3_hex_nut.stl"), 4.0, 1.6),
    ("ps_pla_symbol", str(PRUSASLICER_SHAPES / "PLA_recycling_symbol.stl"), 1.5, 0.4),
    ("ps_helper_disk", str(PRUSASLICER_SHAPES / "helper_disk.stl"), 1.5, 0.2),
)


def write_primitive_meshes(folder: Path = MESH_DIR) -> None:
    """The trimesh primitives of :data:`SHAPES` as binary STL files."""
    import trimesh  # only when the suites are (re)made

    folder.mkdir(parents=True, exist_ok=True)
    box = trimesh.creation.box([24.0, 12.0, 6.0])
    box.apply_transform(trimesh.transformations.rotation_matrix(np.radians(30.0), [0, 0, 1]))
    meshes = {
        "cone": trimesh.creation.cone(radius=12.0, height=10.0, sections=48),
        "hex_prism": trimesh.creation.cylinder(radius=11.0, height=6.0, sections=6),
        "annulus": trimesh.creation.annulus(r_min=5.0, r_max=11.0, height=4.0, sections=48),
        "capsule": trimesh.creation.capsule(height=10.0, radius=9.0, count=[24, 24]),
        "torus": trimesh.creation.torus(major_radius=9.0, minor_radius=4.0, major_sections=48, minor_sections=16),
        "box_turned": box,
    }
    for name, mesh in meshes.items():
        mesh.export(folder / f"{name}.stl", file_type="stl")


def _with_material(job: PrintJob, material: str) -> PrintJob:
    hotend, bed, fan = MATERIAL_PROCESS[material]
    process = dataclasses.replace(job.process, hotend_temp_c=hotend, bed_temp_c=bed, fan=fan)
    return dataclasses.replace(job, material=material, process=process)


def unseen_shapes(rng: np.random.Generator) -> list[PrintJob]:
    jobs = []
    for name, mesh, scale, height in SHAPES:
        for difficulty in (2, 4):
            template = _sample(rng, difficulty, "template", TRAIN_PRINTERS)
            part = PartSpec(kind="stl", size_mm=[scale], height_mm=height, center_mm=_bed_center(template.printer),
                            stl_path=mesh)
            process = dataclasses.replace(template.process, perimeters=2, infill_density=0.2,
                                          solid_layers=1 if height <= 0.6 else 2)
            jobs.append(dataclasses.replace(template, job_id=f"unseen-shapes-v0-{name}-d{difficulty}", part=part,
                                            process=process))
    return jobs


def unseen_materials(rng: np.random.Generator, per_difficulty: int = 3) -> list[PrintJob]:
    jobs = []
    for difficulty in range(5):
        materials = ["ABS"] * per_difficulty + (["PETG"] * per_difficulty if difficulty < 3 else [])
        for k, material in enumerate(materials):
            job = _with_material(_sample(rng, difficulty, None, TRAIN_PRINTERS), material)
            jobs.append(dataclasses.replace(job, job_id=f"unseen-materials-v0-d{difficulty}-{k:02d}"))
    return jobs


def unseen_printers(rng: np.random.Generator, per_difficulty: int = 3) -> list[PrintJob]:
    jobs = []
    for printer in UNSEEN_PRINTERS:
        for difficulty in range(5):
            for k in range(per_difficulty):
                job = _sample(rng, difficulty, f"unseen-printers-v0-{printer}-d{difficulty}-{k:02d}", (printer,))
                jobs.append(job)
    return jobs


def write_suites(seed: int = 7) -> list[Path]:
    """Write the three suites (and the primitive meshes); returns the suite files."""
    write_primitive_meshes()
    rng = np.random.default_rng(seed)
    written = []
    for name, jobs in (("unseen-shapes-v0", unseen_shapes(rng)), ("unseen-materials-v0", unseen_materials(rng)),
                       ("unseen-printers-v0", unseen_printers(rng))):
        path = SUITE_DIR / f"{name}.json"
        data = {"name": name, "version": 0, "seed": seed, "jobs": [j.to_dict() for j in jobs]}
        path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for written in write_suites():
        print(f"wrote {written}")
