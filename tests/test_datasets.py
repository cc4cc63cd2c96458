"""Datasets: generation → load → convert, corruption, interruption and resume, determinism, splits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from envs.sampler import part_key
from envs.scoring import layer_reward
from training import datafmt
from training.data import SPLITS, load_table, main, split_of, to_grpo, to_sft
from training.make_dataset import DatasetConfig, make_dataset

ROOT = Path(__file__).parent.parent
TINY = DatasetConfig(name="t", jobs=6, difficulties=[0, 2, 3], jobs_per_shard=2, defects_per_job=2,
                     workers=1, trace_interval_s=2.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "tiny"
    make_dataset(TINY, out, progress=False)
    return out


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): datafmt.sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).parts[0] in {"tables", "images"}}


def test_round_trip_generation_load_and_conversion(tiny: Path) -> None:
    manifest = datafmt.read_manifest(tiny)
    assert manifest.records["jobs"] == 6 and manifest.records["programs"] == 18
    assert manifest.records["images"] == 18 and manifest.records["traces"] > 0
    assert datafmt.verify(tiny) == []
    sft = load_table(tiny, "sft")
    assert sft.num_rows == manifest.records["sft"]
    row = sft[0]
    assert row["prompt"].startswith("Task: write") and row["completion"].startswith(";LAYER_CHANGE")
    assert set(to_sft(sft).column_names) == {"prompt", "completion"}
    messages = to_sft(sft, chat=True)[0]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    grpo = to_grpo(sft)
    assert set(grpo.column_names) == {"prompt", "job", "layer"}
    # The GRPO columns feed the reward function directly; the reference completion scores as the expert.
    first = sft.filter(lambda r: r["step_kind"] == "layer")[0]
    assert layer_reward([first["completion"]], job=[first["job"]], layer=[first["layer"]])[0] > 0.95
    programs = load_table(tiny, "programs")
    labels = {(r["defect"], r["success"]) for r in programs}
    assert ("", True) in labels, "reference programs succeed"
    assert any(not ok for defect, ok in labels if defect), "some injected defects fail"
    traces = load_table(tiny, "traces")
    ids = set(programs["record_id"])
    assert set(traces["record_id"]) <= ids
    streamed = load_table(tiny, "programs", streaming=True)
    assert next(iter(streamed))["record_id"] == programs[0]["record_id"]


def test_splits_never_share_a_part(tiny: Path) -> None:
    parts = {split: set(load_table(tiny, "sft", split=split)["part_id"]) for split in SPLITS}
    assert sum(len(p) for p in parts.values()) == len(set(load_table(tiny, "sft")["part_id"]))
    assert not (parts["train"] & parts["validation"]) and not (parts["train"] & parts["test"])
    assert all(split_of(p) == s for s, ps in parts.items() for p in ps)


def test_no_training_job_uses_a_held_out_part(tmp_path: Path) -> None:
    """Small parts come from a small space: without the check, 9 of tiny-v0's 64 parts were drawn again
    among 1,024 training jobs (5 of its prompts verbatim)."""
    from envs.sampler import heldout_parts, load_suite

    suite_parts = {part_key(job.part) for job in load_suite("tiny-v0")}
    assert suite_parts <= heldout_parts()
    out = tmp_path / "d"
    make_dataset(DatasetConfig(name="loop", seed=0, jobs=300, difficulties=[0], part_kinds=["rectangle", "polygon"],
                               max_polygon_sides=6, defects_per_job=0, traces=False, images=False, jobs_per_shard=100,
                               workers=1), out, progress=False)
    assert not set(load_table(out, "jobs")["part_id"]) & heldout_parts()


def test_corruption_and_missing_shards_are_named(tiny: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(tiny), str(broken)], check=True)
    shard = sorted((broken / "tables").glob("programs-*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = datafmt.verify(broken)
    assert problems and shard.name in problems[0] and "SHA-256" in problems[0]
    with pytest.raises(datafmt.DatasetError, match="SHA-256 mismatch"):
        load_table(broken, "programs")
    assert main(["verify", str(broken)]) == 1
    shard.unlink()
    assert "missing shard" in datafmt.verify(broken)[0]
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(datafmt.DatasetError, match="schema_version 99 is not known"):
        datafmt.read_manifest(broken)
    assert main(["verify", str(tiny)]) == 0


def test_same_config_and_seed_give_identical_shards(tiny: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    make_dataset(replace(TINY, workers=2), again, progress=False)
    assert _hashes(again) == _hashes(tiny)
    other = tmp_path / "other"
    make_dataset(replace(TINY, seed=1, jobs=2), other, progress=False)
    assert _hashes(other) != {k: v for k, v in _hashes(tiny).items() if k in _hashes(other)}


def test_interrupted_generation_resumes_without_duplicates(tiny: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text("name: t\njobs: 6\ndifficulties: [0, 2, 3]\njobs_per_shard: 2\ndefects_per_job: 2\n"
                      "workers: 1\ntrace_interval_s: 2.0\n")
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "training.make_dataset", "--config", str(config), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "tables" / "jobs-00000.parquet").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "killed before the end"
    (out / "tables" / "sft-00002.parquet.tmp").write_bytes(b"half a shard")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _hashes(out) == _hashes(tiny)
    assert pq.read_table(out / "tables" / "jobs-00000.parquet").num_rows == 2
    assert not list(out.rglob("*.tmp"))


def test_adaptation_kind_perturbs_the_printers(tmp_path: Path) -> None:
    nominal = tmp_path / "nominal"
    adapted = tmp_path / "adapted"
    base = replace(TINY, jobs=2, difficulties=[2], defects_per_job=0, images=False, traces=False)
    make_dataset(base, nominal, progress=False)
    make_dataset(replace(base, kind="adaptation", randomization=str(ROOT / "configs" / "randomization.yaml")),
                 adapted, progress=False)
    assert datafmt.read_manifest(adapted).kind == "adaptation"
    times = [load_table(d, "programs")["print_time_s"] for d in (nominal, adapted)]
    assert times[0] != times[1], "perturbed printers print the same programs in other times"
    assert load_table(nominal, "programs")["gcode"] == load_table(adapted, "programs")["gcode"]
