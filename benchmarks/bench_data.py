"""Records per second of dataset generation and loading.

``.venv/bin/python benchmarks/bench_data.py [--jobs 40] [--workers 2]`` makes a simulated dataset of
``--jobs`` jobs into benchmarks/out/bench-data (removed first), times it, then times loading every table
(with and without SHA-256 verification) and converting the SFT table; prints a markdown table and writes
benchmarks/out/bench_data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from training import datafmt  # noqa: E402
from training.data import load_table, to_grpo, to_sft  # noqa: E402
from training.make_dataset import DatasetConfig, make_dataset  # noqa: E402

OUT = Path(__file__).parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    root = OUT / "bench-data"
    shutil.rmtree(root, ignore_errors=True)
    config = replace(DatasetConfig(name="bench"), jobs=args.jobs, jobs_per_shard=max(1, args.jobs // (2 * args.workers)),
                     workers=args.workers)
    make_dataset(replace(config, jobs=1, name="warm"), OUT / "bench-warm", progress=False)  # numba JIT, imports
    shutil.rmtree(OUT / "bench-warm")
    t0 = time.perf_counter()
    manifest = make_dataset(config, root, progress=False)
    gen_s = time.perf_counter() - t0
    rows = [("generate (all tables, images)", f"{args.jobs} jobs", gen_s, args.jobs / gen_s, "jobs/s")]
    programs = manifest.records["programs"]
    rows.append(("generate", f"{programs} program records", gen_s, programs / gen_s, "records/s"))
    t0 = time.perf_counter()
    problems = datafmt.verify(root)
    rows.append(("verify (SHA-256 of every shard)", f"{len(manifest.shards)} shards", time.perf_counter() - t0,
                 len(manifest.shards) / (time.perf_counter() - t0), "shards/s"))
    assert not problems, problems
    for table in ("sft", "programs", "traces"):
        t0 = time.perf_counter()
        ds = load_table(root, table, verify_hashes=False)
        n = sum(1 for _ in ds)
        dt = time.perf_counter() - t0
        rows.append((f"load + iterate {table}", f"{n} records", dt, n / dt, "records/s"))
    t0 = time.perf_counter()
    n = len(to_sft(load_table(root, "sft", verify_hashes=False))) + len(to_grpo(load_table(root, "sft", verify_hashes=False)))
    dt = time.perf_counter() - t0
    rows.append(("load + convert sft to SFT and GRPO formats", f"{n} records", dt, n / dt, "records/s"))
    print("| task | size | seconds | rate | unit |\n|---|---|---:|---:|---|")
    for task, size, secs, rate, unit in rows:
        print(f"| {task} | {size} | {secs:.2f} | {rate:,.1f} | {unit} |")
    info = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
            "cpus": os.cpu_count(), "workers": args.workers, "jobs": args.jobs,
            "rows": [dict(zip(("task", "size", "seconds", "rate", "unit"), r, strict=True)) for r in rows]}
    (OUT / "bench_data.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
