"""The expert policy: the slicer's program, one step at a time (an upper bound for every metric).

Steps follow the ``GcodeWriter`` environment: with the job's start/end sequences, step 0 is the start
sequence, steps ``1 … N`` are the layers and step ``N + 1`` the end; without them, steps ``0 … N − 1`` are
the layers (the environment runs :attr:`~envs.slicer.SlicedJob.setup` silently before the episode).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from agent.policy import Policy, Prompt
from envs.gcode_writer import GcodeWriterEnv
from envs.jobs import PrintJob
from envs.prompts import task_key
from envs.sampler import load_suite
from envs.scoring import episode_steps
from envs.slicer import SlicedJob, cached_slice, slice_job


def expert_program(job: PrintJob) -> str:
    """The expert's whole program for ``job`` (start or setup, layers, end)."""
    return slice_job(job).text()


class ExpertPolicy:
    """Writes the slicer's G-code for each step of one job (sliced once, on first use)."""

    def __init__(self, job: PrintJob) -> None:
        self.job = job
        self._sliced: SlicedJob | None = None

    @property
    def sliced(self) -> SlicedJob:
        """The job's sliced program."""
        if self._sliced is None:
            self._sliced = slice_job(self.job)
        return self._sliced

    @property
    def step_count(self) -> int:
        """Number of steps in an episode: the layers, plus start and end when the job has them."""
        return self.job.layer_count + (2 if self.job.start_end else 0)

    def program_for_step(self, step: int) -> str:
        """The G-code of step ``step`` (see the module docstring)."""
        if not 0 <= step < self.step_count:
            raise ValueError(f"step {step}: out of range, job {self.job.job_id!r} has steps 0..{self.step_count - 1}")
        sliced = self.sliced
        if not self.job.start_end:
            return sliced.layers[step]
        if step == 0:
            return sliced.start
        if step == self.step_count - 1:
            return sliced.end
        return sliced.layers[step - 1]

    def act(self, observation: dict[str, Any]) -> str:
        """The action for an observation of the ``GcodeWriter`` environment (its ``step`` index)."""
        return self.program_for_step(int(observation["step"]))


def scripted_policy(jobs: Sequence[PrintJob], step_text: Callable[[PrintJob, str, int], str]) -> Policy:
    """A fixed program per job as a :class:`~agent.policy.Policy` over the jobs' ``GcodeWriter-v1`` prompts,
    matched by prompt (:func:`~envs.prompts.task_key`: feedback and machine state left out, so a step is
    answered the same on a perturbed printer): ``step_text(job, kind, layer)`` is the answer of each step of
    :func:`~envs.scoring.episode_steps`; the prompts are collected by playing each job with those answers.
    A revision request is answered with the same step's text as its task."""
    answers: dict[str, str] = {}
    for job in jobs:
        env = GcodeWriterEnv(job=job)
        obs, _ = env.reset(seed=0)
        for kind, k in episode_steps(job):
            text = step_text(job, kind, k)
            answers[task_key(obs["prompt"])] = text
            obs, *_ = env.step(text)

    def act(prompts: Sequence[Prompt]) -> list[str]:
        return [answers.get(task_key(p if isinstance(p, str) else p[0]["content"]), "") for p in prompts]

    return act


def expert_policy(suite: str | Sequence[PrintJob] = "tiny-v0") -> Policy:
    """The reference program as a :class:`~agent.policy.Policy` over a suite's ``GcodeWriter-v1`` prompts."""
    jobs = load_suite(suite) if isinstance(suite, str) else list(suite)

    def step_text(job: PrintJob, kind: str, k: int) -> str:
        sliced = cached_slice(job)
        return sliced.start if kind == "start" else sliced.end if kind == "end" else sliced.layers[k]

    return scripted_policy(jobs, step_text)
