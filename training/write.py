"""A trained model writes a whole program for a job, for a person to review:
``python -m training.write --model RUN/grpo/final --suite tiny-v0 --job 0 --out part.gcode [--db approvals.db]``.

The model plays a ``GcodeWriter-v1`` episode (one layer per turn, greedy; with ``--revisions`` the
simulator's feedback on a failing answer goes back to it, as in multi-turn training), and its answers are
joined into one program: for a job without start/end sequences, the expert's heat-and-home setup comes first
and the expert's end sequence last (the model never wrote those). The program is written to ``--out`` and,
with ``--db``, submitted to the approval console's queue with the expert's program for the diff — where the
validator, the simulation and a person decide; nothing here talks to a printer. With ``--advisor FILE`` (a
classifier saved by ``python -m training.predict --save-classifier FILE``) the submission carries its
advisory prediction, which the console shows beside the program (``ask a person`` inside its abstain band).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from agent.llm import LLMPolicy, revise_answers
from agent.policy import Policy
from envs.gcode_writer import GcodeWriterEnv
from envs.jobs import PrintJob
from envs.sampler import load_suite
from envs.scoring import episode_steps
from envs.slicer import slice_job
from safety.approvals import ApprovalStore
from training.model import ModelConfig, load_model_and_tokenizer
from training.predict import Advisor


def write_program(policy: Policy, job: PrintJob, revisions: int = 0) -> tuple[str, float]:
    """The program ``policy`` writes for ``job`` and the episode's reward."""
    env = GcodeWriterEnv(job=job)
    obs, _ = env.reset(seed=0)
    sliced = slice_job(job)
    parts = [] if job.start_end else [sliced.setup]
    total = 0.0
    for _ in episode_steps(job):
        answer = revise_answers(policy, [env], [obs["prompt"]], policy([obs["prompt"]]), revisions)[0]
        parts.append(answer)
        obs, reward, terminated, truncated, _ = env.step(answer)
        total += reward
        if terminated or truncated:
            break
    if not job.start_end:
        parts.append(sliced.end)
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts), total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.write", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a fine-tuned model folder (or a Hugging Face id)")
    parser.add_argument("--suite", default="tiny-v0", help="held-out suite (envs/suites/NAME.json)")
    parser.add_argument("--job", type=int, default=0, help="index of the job in the suite")
    parser.add_argument("--revisions", type=int, default=0, help="revisions of failing answers (multi-turn)")
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--db", type=Path, help="submit to this approval console database")
    parser.add_argument("--user", default="", help="who submits (with --db)")
    parser.add_argument("--advisor", type=Path, help="with --db: a classifier saved by python -m training.predict "
                        "--save-classifier; its advisory prediction goes with the submission")
    args = parser.parse_args(argv)
    try:
        if args.advisor is not None and args.db is None:
            raise ValueError("--advisor: the advisory goes with a submission; give --db too")
        advisor = Advisor.load(args.advisor) if args.advisor is not None else None
        jobs = load_suite(args.suite)
        if not 0 <= args.job < len(jobs):
            raise ValueError(f"--job {args.job}: suite {args.suite} has jobs 0 to {len(jobs) - 1}")
        if args.revisions < 0:
            raise ValueError(f"--revisions {args.revisions}: must be 0 or more")
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    model, tokenizer = load_model_and_tokenizer(ModelConfig(name=args.model))
    job = jobs[args.job]
    program, reward = write_program(LLMPolicy(model, tokenizer, args.max_new_tokens), job, args.revisions)
    args.out.write_text(program)
    print(f"{args.out}: {len(program.splitlines())} lines for {job.job_id} ({job.part.kind}) on {job.printer}; "
          f"episode reward {reward:.3f}")
    if args.db is not None:
        store = ApprovalStore(args.db)
        advisory = advisor(program, job.printer) if advisor is not None else None
        pid = store.submit(program.encode(), printer=job.printer, job=job.job_id,
                           description=f"written by {args.model} ({job.part.kind}, {job.material})",
                           expert_gcode=slice_job(job).text().encode(), submitted_by=args.user, advisory=advisory)
        advice = f"; advisory: {advisory.call} (p = {advisory.p_success:.2f})" if advisory else ""
        print(f"submitted as program {pid}: the validator says {store.program(pid).verdict['verdict']}{advice}; "
              f"review it with python -m safety.console serve --db {args.db}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
