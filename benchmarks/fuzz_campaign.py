"""Fuzzing at scale (issue 17 §5): random and mutated G-code through the reader, the validator, the embedded
simulator and, on a small sample, the Klippy batch backend, each input under a time and a memory bound.

Run from the repository root (not part of CI; a full run takes tens of minutes on two cores)::

    nice -n 10 .venv/bin/python benchmarks/fuzz_campaign.py --seed 1 --count 100000 --workers 2
    .venv/bin/python benchmarks/fuzz_campaign.py --resume            # go on after an interruption
    .venv/bin/python benchmarks/fuzz_campaign.py --replay 4711       # one input again, in this process

Inputs are made by ``benchmarks/fuzz_inputs.py`` (input ``i`` depends only on ``--seed`` and ``i``) and run by
``benchmarks/fuzz_targets.py`` in a pool of worker processes, each with ``RLIMIT_AS`` = ``--mem-mb`` and in
its own process group. The parent gives each target of an input ``--timeout-s`` (Klippy: ``--klippy-timeout-s``);
past it, the worker and its children are killed, the input is a ``hang`` finding and a fresh worker goes on.
Inputs go in chunks of ``--chunk``; after each chunk a line of ``chunks.jsonl`` and the report are written,
so ``--resume`` skips finished chunks. Output (``--out``, default ``benchmarks/out/fuzz_campaign``, git-ignored):
``report.json`` (counts per target, outcome, mutation kind and seed origin, the slowest inputs, peak memory,
every finding grouped by signature) and ``findings/`` (each finding's input, at most
:data:`SAVED_PER_SIGNATURE` per signature; the rest are regenerated with ``--replay``).
"""

from __future__ import annotations

import os

# One thread per worker: BLAS/numba thread pools would fight the other worker for the two cores.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402 - after the thread settings, which must precede numpy's import
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter, deque  # noqa: E402
from multiprocessing.connection import wait  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from fuzz_inputs import FuzzInput, Seed, load_seeds, make_input  # noqa: E402
from fuzz_targets import FINDING_OUTCOMES, TARGETS, run_target, worker_main  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "fuzz_campaign"
SAVED_PER_SIGNATURE = 25
ROWS_PER_SIGNATURE = 200
SLOWEST_KEPT = 10
BASE_TARGETS = ("reader", "validator", "simulator")


class Worker:
    """One worker process and the input it is running: which target it is on and until when it may be."""

    def __init__(self, ctx: Any, mem_mb: int, workdir: Path) -> None:
        self.ctx, self.mem_mb, self.workdir = ctx, mem_mb, workdir
        self.restarts = -1
        self.start()

    def start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=worker_main, args=(child, self.mem_mb, str(self.workdir)), daemon=True)
        self.proc.start()
        child.close()
        self.restarts += 1
        self.job: FuzzInput | None = None
        self.targets: list[str] = []
        self.deadline = 0.0

    def assign(self, inp: FuzzInput, targets: list[str], timeouts: dict[str, float]) -> None:
        self.job, self.targets, self.timeouts = inp, list(targets), timeouts
        self.conn.send((inp, targets))
        self._arm()

    def _arm(self) -> None:
        if self.targets:
            self.deadline = time.monotonic() + self.timeouts[self.targets[0]]

    def advance(self) -> None:
        self.targets.pop(0)
        self._arm()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the worker leads its group: Klippy children die too
        self.proc.join(5)

    def stop(self) -> None:
        try:
            self.conn.send(None)
            self.proc.join(10)
        except (OSError, ValueError):
            pass
        if self.proc.is_alive():
            self.kill()


def run_jobs(workers: list[Worker], jobs: list[tuple[FuzzInput, list[str]]], timeouts: dict[str, float],
             record: Any) -> None:
    """Run every job on the pool; ``record(inp, result)`` gets each target's result, hangs and deaths too."""
    queue = deque(jobs)
    while queue or any(w.job is not None for w in workers):
        for w in workers:
            if w.job is None and queue:
                w.assign(*queue.popleft(), timeouts)
        busy = [w for w in workers if w.job is not None]
        ready = wait([w.conn for w in busy], max(0.0, min(w.deadline for w in busy) - time.monotonic()))
        for w in busy:
            inp = w.job
            assert inp is not None
            if w.conn in ready:
                try:
                    kind, _index, result = w.conn.recv()
                except (EOFError, OSError):
                    w.proc.join(5)
                    record(inp, {"target": w.targets[0], "outcome": "died", "error": "WorkerDied",
                                 "message": f"worker exited with status {w.proc.exitcode}", "location": "",
                                 "elapsed_s": 0.0})
                    w.kill()
                    w.start()
                    continue
                if kind == "result":
                    record(inp, result)
                    w.advance()
                else:
                    w.job = None
            elif time.monotonic() >= w.deadline:
                limit = w.timeouts[w.targets[0]]
                record(inp, {"target": w.targets[0], "outcome": "hang", "error": "Timeout", "location": "",
                             "message": f"no answer within {limit:.0f} s", "elapsed_s": limit})
                w.kill()
                w.start()


def _signature(result: dict[str, Any]) -> str:
    """What makes two findings the same bug: target, outcome, exception type and place (or message shape)."""
    where = result.get("location") or re.sub(r"-?[0-9][0-9.e+-]*|'[^']*'", "#", result.get("message", ""))[:80]
    return f"{result['target']}|{result['outcome']}|{result.get('error', '')}|{where}"


class Stats:
    """Counts, the slowest inputs and the findings of one chunk (JSON-ready) or of the whole run (merged)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.data: dict[str, Any] = {"inputs": 0, "targets": {}, "mutations": {}, "origins": {}, "forms": {},
                                     "printers": {}, "target_time_s": {}, "slowest": [], "peak_rss_mb": 0.0,
                                     "peak_rss_index": None, "findings": [], "saved": {}}
        self.saved: Counter[str] = Counter()
        self.rows: Counter[str] = Counter()

    def add_input(self, inp: FuzzInput) -> None:
        d = self.data
        d["inputs"] += 1
        for key, values in (("mutations", set(inp.mutations)), ("forms", [inp.form]), ("printers", [inp.printer]),
                            ("origins", {s.split("/")[0] for s in inp.seeds} or {"generated"})):
            for value in values:
                d[key][value] = d[key].get(value, 0) + 1

    def add_result(self, inp: FuzzInput, result: dict[str, Any]) -> None:
        d = self.data
        target, outcome = result["target"], result["outcome"]
        counts = d["targets"].setdefault(target, {})
        counts[outcome] = counts.get(outcome, 0) + 1
        d["target_time_s"][target] = d["target_time_s"].get(target, 0.0) + result["elapsed_s"]
        row = {"elapsed_s": round(result["elapsed_s"], 4), "target": target, "index": inp.index,
               "bytes": len(inp.data), "lines": inp.data.count(b"\n"), "mutations": inp.mutations,
               "seeds": inp.seeds, "printer": inp.printer, "outcome": outcome}
        d["slowest"] = sorted([*d["slowest"], row], key=lambda r: -r["elapsed_s"])[: SLOWEST_KEPT * len(TARGETS)]
        if result.get("rss_mb", 0.0) > d["peak_rss_mb"]:
            d["peak_rss_mb"], d["peak_rss_index"] = round(result["rss_mb"], 1), inp.index
        if outcome in FINDING_OUTCOMES:
            sig = _signature(result)
            finding = {**row, "signature": sig, "form": inp.form, "deposition": inp.deposition,
                       "reader_options": inp.reader_options,
                       **{k: result.get(k) for k in ("error", "message", "location", "kernels", "traceback")}}
            if self.saved[sig] < SAVED_PER_SIGNATURE:
                self.saved[sig] += 1
                folder = self.out / "findings"
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{inp.index:06d}-{target}-{outcome}.gcode"
                path.write_bytes(inp.data)
                finding["file"] = str(path.relative_to(self.out))
            self.rows[sig] += 1
            # A bug met thousands of times keeps its first rows whole and only the indices of the rest.
            d["findings"].append(finding if self.rows[sig] <= ROWS_PER_SIGNATURE else
                                 {"signature": sig, "index": inp.index, "target": target})

    def merge(self, other: dict[str, Any]) -> None:
        d = self.data
        d["inputs"] += other["inputs"]
        for key in ("mutations", "origins", "forms", "printers", "target_time_s"):
            for k, v in other[key].items():
                d[key][k] = d[key].get(k, 0) + v
        for target, counts in other["targets"].items():
            mine = d["targets"].setdefault(target, {})
            for k, v in counts.items():
                mine[k] = mine.get(k, 0) + v
        d["slowest"] = sorted([*d["slowest"], *other["slowest"]], key=lambda r: -r["elapsed_s"])
        if other["peak_rss_mb"] > d["peak_rss_mb"]:
            d["peak_rss_mb"], d["peak_rss_index"] = other["peak_rss_mb"], other["peak_rss_index"]
        d["findings"] += other["findings"]


def _report(header: dict[str, Any], total: Stats, wall_s: float, done: int) -> dict[str, Any]:
    d = total.data
    groups: dict[str, dict[str, Any]] = {}
    for f in d["findings"]:
        g = groups.setdefault(f["signature"], {"signature": f["signature"], "count": 0, "indices": [],
                                                "example": f, "files": []})
        g["count"] += 1
        g["indices"].append(f["index"])
        if f.get("file"):
            g["files"].append(f["file"])
    slowest = {t: [r for r in d["slowest"] if r["target"] == t][:SLOWEST_KEPT] for t in TARGETS}
    return {**header, "inputs_done": done, "wall_s": round(wall_s, 1), "inputs": d["inputs"],
            "inputs_per_s": round(d["inputs"] / wall_s, 1) if wall_s else None,
            "per_target": d["targets"], "target_time_s": {k: round(v, 1) for k, v in d["target_time_s"].items()},
            "mutations": dict(sorted(d["mutations"].items())), "origins": d["origins"], "forms": d["forms"],
            "printers": d["printers"], "peak_rss_mb": d["peak_rss_mb"], "peak_rss_index": d["peak_rss_index"],
            "slowest": d["slowest"][:SLOWEST_KEPT], "slowest_per_target": slowest,
            "findings_total": len(d["findings"]), "findings": sorted(groups.values(), key=lambda g: -g["count"])}


def klippy_indices(count: int, klippy: int) -> set[int]:
    """The inputs that also run on the Klippy batch backend: ``klippy`` of them, spread over the run."""
    return {int((k + 0.5) * count / klippy) for k in range(klippy)} if klippy else set()


def _header(args: argparse.Namespace, seeds: list[Seed]) -> dict[str, Any]:
    corpus = hashlib.sha256("\n".join(f"{s.name}:{len(s.lines)}" for s in seeds).encode()).hexdigest()[:16]
    origins = Counter(s.origin for s in seeds)
    return {"kind": "header", "seed": args.seed, "count": args.count, "chunk": args.chunk, "klippy": args.klippy,
            "workers": args.workers, "timeout_s": args.timeout_s, "klippy_timeout_s": args.klippy_timeout_s,
            "mem_mb": args.mem_mb, "corpus": {"files": len(seeds), "by_origin": dict(origins), "digest": corpus}}


def campaign(args: argparse.Namespace) -> int:
    out: Path = args.out
    seeds = load_seeds()
    header = _header(args, seeds)
    log = out / "chunks.jsonl"
    total = Stats(out)
    done_chunks: set[int] = set()
    wall_before = 0.0
    if args.resume and log.is_file():
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        old = {k: v for k, v in rows[0].items() if k != "workers"}
        if old != {k: v for k, v in header.items() if k != "workers"}:
            print(f"{log}: made with other settings or corpus; not resuming", file=sys.stderr)
            return 2
        for row in rows[1:]:
            done_chunks.add(row["chunk_index"])
            total.merge(row["stats"])
            total.saved.update(Counter(f["signature"] for f in row["stats"]["findings"] if f.get("file")))
            total.rows.update(Counter(f["signature"] for f in row["stats"]["findings"]))
            wall_before += row["wall_s"]
    else:
        shutil.rmtree(out / "findings", ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        log.write_text(json.dumps(header) + "\n")
    klippy_at = klippy_indices(args.count, args.klippy)
    timeouts = {t: args.timeout_s for t in BASE_TARGETS} | {"klippy": args.klippy_timeout_s}
    ctx = mp.get_context("fork")  # the workers start with the project already imported
    workers = [Worker(ctx, args.mem_mb, out / "work" / f"w{i}") for i in range(args.workers)]
    n_chunks = -(-args.count // args.chunk)
    started = time.monotonic()
    try:
        for chunk in range(n_chunks):
            if chunk in done_chunks:
                continue
            t0 = time.monotonic()
            stats = Stats(out)
            stats.saved, stats.rows = total.saved, total.rows
            jobs = []
            for index in range(chunk * args.chunk, min((chunk + 1) * args.chunk, args.count)):
                inp = make_input(args.seed, index, seeds, klippy=index in klippy_at)
                stats.add_input(inp)
                jobs.append((inp, [*BASE_TARGETS, *(["klippy"] if inp.klippy else [])]))
            run_jobs(workers, jobs, timeouts, stats.add_result)
            wall = time.monotonic() - t0
            with log.open("a") as fh:
                fh.write(json.dumps({"kind": "chunk", "chunk_index": chunk, "wall_s": wall, "stats": stats.data}) + "\n")
            total.merge(stats.data)
            elapsed = wall_before + time.monotonic() - started
            report = _report(header, total, elapsed, total.data["inputs"])
            (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
            left = args.count - total.data["inputs"]
            rate = total.data["inputs"] / elapsed
            print(f"[{time.strftime('%H:%M:%S')}] chunk {chunk + 1}/{n_chunks}: {total.data['inputs']} inputs, "
                  f"{rate:.1f}/s, eta {left / rate / 60:.1f} min, findings {report['findings_total']} "
                  f"({len(report['findings'])} distinct), peak {total.data['peak_rss_mb']} MB, "
                  f"restarts {sum(w.restarts for w in workers)}", flush=True)
    finally:
        for w in workers:
            w.stop()
    report = json.loads((out / "report.json").read_text())
    print(json.dumps({k: report[k] for k in ("inputs", "wall_s", "per_target", "findings_total")}, indent=1))
    for g in report["findings"]:
        print(f"  {g['count']:6d}  {g['signature']}  e.g. #{g['indices'][0]}: {g['example'].get('message', '')[:150]}")
    return 0


def replay(args: argparse.Namespace) -> int:
    """Regenerate one input and run its targets here, with full tracebacks."""
    seeds = load_seeds()
    inp = make_input(args.seed, args.replay, seeds, klippy=args.replay in klippy_indices(args.count, args.klippy))
    print(json.dumps({k: v for k, v in vars(inp).items() if k != "data"}), f"{len(inp.data)} bytes")
    if args.save:
        args.save.write_bytes(inp.data)
        print(f"saved to {args.save}")
    work = args.out / "work" / "replay"
    work.mkdir(parents=True, exist_ok=True)
    for target in [*BASE_TARGETS, *(["klippy"] if inp.klippy else [])]:
        if args.target and target != args.target:
            continue
        result = run_target(target, inp, work)
        print(f"{target}: {result['outcome']} in {result['elapsed_s']:.3f} s {result.get('error', '')} "
              f"{result.get('message', '')[:300]}")
        if result.get("traceback"):
            print(result["traceback"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=1000, help="inputs per chunk (one progress line, one resume point)")
    parser.add_argument("--klippy", type=int, default=30, help="inputs that also run on the Klippy batch backend")
    parser.add_argument("--timeout-s", type=float, default=20.0, help="time bound per target per input")
    parser.add_argument("--klippy-timeout-s", type=float, default=300.0, help="time bound of a Klippy input")
    parser.add_argument("--mem-mb", type=int, default=2048, help="address-space bound per worker (RLIMIT_AS)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--resume", action="store_true", help="skip the chunks chunks.jsonl already has")
    parser.add_argument("--replay", type=int, help="run input INDEX of this --seed/--count/--klippy here and stop")
    parser.add_argument("--target", choices=TARGETS, help="with --replay: only this target")
    parser.add_argument("--save", type=Path, help="with --replay: write the input to this file")
    args = parser.parse_args(argv)
    if args.replay is not None:
        return replay(args)
    return campaign(args)


if __name__ == "__main__":
    sys.exit(main())
