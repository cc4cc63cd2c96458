"""Time per step of a long ``GcodeWriter`` episode: does a step cost the same at layer 100 as at layer 1?

    .venv/bin/python benchmarks/bench_episode.py [--layers 150] [--root CHECKOUT] [--label NAME]

The expert writes every step (start, one step per layer, end) of a 20 x 20 mm rectangle ``--layers``
layers tall; the script times ``env.step`` alone (the expert's program is sliced before timing starts) and
prints the mean step time of the first and the last 20 layer steps and their ratio (1.0: a step costs the
same whatever the episode's length; growing with the layer: the episode is quadratic). ``--root`` runs
another checkout's code (e.g. the git worktree ``benchmarks/bench_startup.py --baseline REV`` makes) to
compare in the same session. Writes ``benchmarks/out/bench_episode-LABEL.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=150, help="layers of the part (default 150)")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose code runs (default: this one)")
    parser.add_argument("--label", default="current")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.root.resolve()))
    # The checkout under test is known only now: its modules load after sys.path points at it.
    from agent.expert import ExpertPolicy
    from envs.gcode_writer import GcodeWriterEnv
    from envs.jobs import PartSpec, PrintJob

    job = PrintJob(job_id="tall", part=PartSpec(size_mm=[20.0, 20.0], height_mm=0.2 * args.layers),
                   start_end=True)
    expert = ExpertPolicy(job)
    programs = [expert.program_for_step(i) for i in range(expert.step_count)]
    env = GcodeWriterEnv(job=job)
    env.reset(seed=0)
    times = []
    for program in programs:
        t0 = time.perf_counter()
        _obs, _reward, terminated, _trunc, info = env.step(program)
        times.append(time.perf_counter() - t0)
        if terminated:
            break
    layers = times[1:-1]
    first, last = statistics.mean(layers[:20]), statistics.mean(layers[-20:])
    result = {"label": args.label, "root": str(args.root), "layers": args.layers, "steps": len(times),
              "success": bool(info["success"]), "first_20_layer_steps_ms": 1e3 * first,
              "last_20_layer_steps_ms": 1e3 * last, "last_over_first": last / first,
              "episode_s": sum(times), "step_s": times}
    print(f"{args.label}: {len(times)} steps, success {info['success']}, first 20 layer steps {1e3 * first:.1f} ms, "
          f"last 20 {1e3 * last:.1f} ms (x{last / first:.2f}), episode {sum(times):.2f} s")
    out = ROOT / "benchmarks" / "out" / f"bench_episode-{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
