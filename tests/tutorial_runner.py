"""Runs docs/tutorial.md as a newcomer would: every ``bash`` block in order, in one shell, in a fresh folder.

A ``bash`` block is run; a ``bash gpu`` block needs an NVIDIA GPU and is only read. A ``text`` block right
after a ``bash`` block is what that block prints, trimmed: each of its lines must appear in the block's
output, in order, *in shape* — numbers may differ (a tiny budget trains a worse model), words may not. A line
``…`` stands for lines left out, and ``…`` inside a line for any text.

The training commands run on tiny budgets (:data:`TINY`): the same commands, with ``--set`` overrides
appended, so CI walks the whole tutorial in minutes. ``python -m tests.tutorial_runner --keep DIR`` runs it
by hand and leaves the folder and every block's output (``DIR/block-N.out``) for a look.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"

TINY: dict[str, str] = {
    "-m training.sft ": "--set max_steps=4",
    "-m training.grpo ": "--set max_steps=1 --set batch_size=4 --set num_generations=4",
    "-m training.sim_loop --config": (
        "--set train_jobs=48 --set grpo_jobs=16 --set sft.max_steps=40 --set sft.warmup_steps=4"
        " --set grpo.max_steps=1 --set grpo.batch_size=4 --set grpo.num_generations=4 --set eval_episodes=4"
        " --set embedded.corpus_jobs=8"),
    "-m training.evaluate": "--episodes 4",
}
"""What CI appends to each training command of the tutorial (matched by substring): budgets of minutes."""

MARK = "@@layerloop-tutorial-block"
_FENCE = re.compile(r"^```(\S*)[ \t]*(\S*)[ \t]*$")
_NUMBER = r"(?:[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"


@dataclass
class Block:
    """One fenced block of the tutorial."""

    line: int
    """Line of the opening fence (1-based)."""
    lang: str
    tag: str
    text: str
    expected: str | None = None
    """The ``text`` block that follows it, if any."""


def blocks(markdown: str) -> list[Block]:
    """The fenced blocks, each ``bash`` block with the ``text`` block after it (only blank lines between)."""
    found: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence or not fence.group(1):
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{TUTORIAL.name}:{start + 1}: a ``` block that never closes")
        found.append(Block(start + 1, fence.group(1), fence.group(2), "\n".join(body) + "\n"))
        i += 1
    paired: list[Block] = []
    for block in found:
        previous = paired[-1] if paired else None
        if (block.lang == "text" and previous is not None and previous.lang == "bash" and previous.expected is None
                and not "".join(lines[previous.line + previous.text.count("\n") + 1:block.line - 1]).strip()):
            previous.expected = block.text
        else:
            paired.append(block)
    return paired


def tiny(command: str) -> tuple[str, set[str]]:
    """The block's commands with :data:`TINY`'s budgets appended, and which keys matched."""
    out, used, logical = [], set(), ""
    for line in command.splitlines():
        logical += line
        if line.endswith("\\"):
            logical += "\n"
            continue
        for key, extra in TINY.items():
            if key in logical and not logical.lstrip().startswith("#"):
                logical = f"{logical} {extra}"
                used.add(key)
        out.append(logical)
        logical = ""
    return "\n".join(out) + "\n", used


def script(runnable: list[Block]) -> tuple[str, set[str]]:
    """One bash script running the blocks in order, each announced by :data:`MARK`."""
    parts, used = ["set -euo pipefail\nexec 2>&1\n"], set()
    for n, block in enumerate(runnable):
        text, keys = tiny(block.text)
        used |= keys
        parts.append(f"echo '{MARK} {n}@@'\ndate +%s.%N >> .tutorial-times\n{text}")
    parts.append(f"echo '{MARK} end@@'\ndate +%s.%N >> .tutorial-times\n")
    return "".join(parts), used


def link_workdir(workdir: Path) -> None:
    """A fresh folder that looks like the clone (its files linked in), so what the tutorial writes lands here."""
    workdir.mkdir(parents=True, exist_ok=True)
    for entry in ROOT.iterdir():
        if entry.name in {".git", "runs", "data", "approvals.db"} or (workdir / entry.name).exists():
            continue
        (workdir / entry.name).symlink_to(entry)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def run_session(command: list[str], cwd: Path, env: dict[str, str], timeout_s: float) -> tuple[str, int]:
    """Run ``command`` in a session of its own: its output and exit status (124 past ``timeout_s``). Every
    process of the session is stopped when it ends, times out, or this process is interrupted or sent
    SIGTERM (``make test`` stopped by Ctrl-C or by CI): the tutorial's servers never outlive the runner."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        # Python's default SIGTERM ends the process without running ``finally``: raise instead, so it runs.
        previous = signal.signal(signal.SIGTERM, _terminate)
    proc = subprocess.Popen(command, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        rc = 124
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return output, rc


def run(workdir: Path, timeout_s: float = 1500.0) -> tuple[list[Block], list[str], int, set[str]]:
    """Run the tutorial's ``bash`` blocks in ``workdir``: the blocks, each block's output, the exit status and
    the :data:`TINY` keys used. Every process the tutorial starts is stopped at the end (its own session)."""
    runnable = [b for b in blocks(TUTORIAL.read_text()) if b.lang == "bash" and b.tag != "gpu"]
    text, used = script(runnable)
    link_workdir(workdir)
    (workdir / "tutorial.sh").write_text(text)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", MPLBACKEND="Agg", TRL_EXPERIMENTAL_SILENCE="1")
    output, rc = run_session(["bash", str(workdir / "tutorial.sh")], workdir, env, timeout_s)
    pieces = re.split(rf"^{MARK} (\d+|end)@@$", output, flags=re.M)
    outputs = [""] * len(runnable)
    for index, piece in zip(pieces[1::2], pieces[2::2], strict=True):
        if index != "end":
            outputs[int(index)] = piece
    return runnable, outputs, rc, used


def line_pattern(line: str) -> str:
    """A shown output line as a regex: numbers may differ, ``…`` is any text, runs of spaces any spacing."""
    parts = re.split(rf"({_NUMBER}|…|\s+)", line.strip())
    out = []
    for part in parts:
        if not part:
            continue
        if part == "…":
            out.append(".*?")
        elif part.isspace():
            out.append(r"\s+")
        elif re.fullmatch(_NUMBER, part):
            out.append(_NUMBER)
        else:
            out.append(re.escape(part))
    return "".join(out)


def missing_lines(expected: str, output: str) -> list[str]:
    """The lines of ``expected`` that do not appear, in shape and in order, in ``output``."""
    missing, at = [], 0
    for line in expected.splitlines():
        if not line.strip() or line.strip() == "…":
            continue
        match = re.compile(line_pattern(line)).search(output, at)
        if match is None:
            missing.append(line)
        else:
            at = match.end()
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tutorial_runner", description=__doc__.split("\n")[0])
    parser.add_argument("--keep", type=Path, required=True, help="folder to run in (left in place)")
    args = parser.parse_args(argv)
    runnable, outputs, rc, _ = run(args.keep.resolve())
    times = [float(t) for t in (args.keep / ".tutorial-times").read_text().split()]
    for n, (block, output) in enumerate(zip(runnable, outputs, strict=True)):
        (args.keep / f"block-{n}.out").write_text(output)
        gone = missing_lines(block.expected or "", output)
        took = f"{times[n + 1] - times[n]:.1f} s" if n + 1 < len(times) else "-"
        print(f"block {n} (tutorial.md:{block.line}, {took}): "
              f"{'ok' if not gone else 'not in shape: ' + ' | '.join(gone)}")
    if rc != 0:
        last = max((n for n, out in enumerate(outputs) if out), default=0)
        print(f"exit status {rc} in block {last} (tutorial.md:{runnable[last].line}):\n{outputs[last][-3000:]}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
