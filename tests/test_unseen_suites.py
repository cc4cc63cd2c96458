"""The held-out suites of unseen shapes, materials and printers: what training never samples."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.expert import expert_policy
from envs.jobs import PartSpec
from envs.sampler import SUITE_DIR, TRAIN_PRINTERS, load_suite, sample_job
from envs.unseen_suites import UNSEEN_PRINTERS, unseen_materials, unseen_printers, unseen_shapes
from training.writer_eval import evaluate

SUITES = ("unseen-shapes-v0", "unseen-materials-v0", "unseen-printers-v0")


def _training_draws(n: int = 300) -> list:
    rng = np.random.default_rng(123)
    return [sample_job(rng, d) for d in range(5) for _ in range(n // 5)]


def test_training_never_samples_what_the_suites_hold() -> None:
    draws = _training_draws()
    assert {j.part.kind for j in draws}.isdisjoint({"stl"})
    assert "ABS" not in {j.material for j in draws}
    assert {j.material for j in draws if j.difficulty < 3} == {"PLA"}
    assert {j.printer for j in draws} <= set(TRAIN_PRINTERS)
    shapes, materials, printers = (load_suite(name) for name in SUITES)
    assert {j.part.kind for j in shapes} == {"stl"}
    assert all(j.material == "ABS" or (j.material == "PETG" and j.difficulty < 3) for j in materials)
    assert {j.printer for j in printers} == set(UNSEEN_PRINTERS)
    with pytest.raises(ValueError, match="held-out"):
        sample_job(np.random.default_rng(0), 2, job_id=shapes[0].job_id)


def test_the_suite_files_are_what_the_script_writes() -> None:
    rng = np.random.default_rng(json.loads((SUITE_DIR / "unseen-shapes-v0.json").read_text())["seed"])
    written = [unseen_shapes(rng), unseen_materials(rng), unseen_printers(rng)]
    for name, jobs in zip(SUITES, written, strict=True):
        stored = json.loads((SUITE_DIR / f"{name}.json").read_text())["jobs"]
        assert [j.to_dict() for j in jobs] == stored, name


def test_mesh_sections_keep_holes_and_change_with_height() -> None:
    annulus = PartSpec(kind="stl", size_mm=[1.0], height_mm=1.0, center_mm=[100.0, 100.0],
                       stl_path=str(SUITE_DIR / "meshes" / "annulus.stl"))
    ring = annulus.outline(0.2)
    assert len(ring.interiors) == 1
    assert ring.area == pytest.approx(np.pi * (11.0**2 - 5.0**2), rel=0.01)  # 48 sections
    assert ring.centroid.x == pytest.approx(100.0, abs=1e-6)
    cone = PartSpec(kind="stl", size_mm=[1.0], height_mm=1.6, center_mm=[0.0, 0.0],
                    stl_path=str(SUITE_DIR / "meshes" / "cone.stl"))
    # Radius 12 at the base, shrinking 1.2 mm per mm of height.
    assert cone.outline(1.0).area == pytest.approx(np.pi * 10.8**2, rel=0.01)
    assert cone.outline(1.0).area < cone.outline(0.2).area


@pytest.mark.parametrize("index", [0, 13, 25])
def test_the_reference_prints_unseen_shapes(index: int) -> None:
    job = load_suite("unseen-shapes-v0")[index]
    result = evaluate(lambda prompts: [""] * len(prompts), [job], 1)  # nothing printed
    assert result.success_rate == 0.0
    result = evaluate(expert_policy([job]), [job], 1)
    assert result.success_rate == 1.0 and result.mean_geometry > 0.95
