"""Revision examples for multi-turn SFT: a wrong layer, the simulator's real feedback on it, and the
reference layer as the revision (the format multi-turn GRPO and evaluation then use).

Wrong layers are plausible slips (:func:`perturb_layer`), written with :mod:`sim_bridge.gcode`'s parser and
formatter (:func:`training.defects.edit_moves`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from agent.llm import conversation, needs_revision
from envs.jobs import PrintJob
from envs.scoring import layer_feedback
from sim_bridge.gcode import Command, format_number, parse_line
from training.defects import E_DECIMALS, XYZ_DECIMALS, edit_moves

PERTURBATIONS = ("under_extrusion", "over_extrusion", "shifted", "truncated", "digit", "extrusion_spike")
"""What :func:`perturb_layer` can do to a layer."""
DRAWS_PER_ROW = 4
"""Perturbations tried per row until the simulator reports a failure (``revise: failures``)."""


def _first_coordinate(cmd: Command) -> str | None:
    """The first of X, Y written as a plain non-negative number (where a digit can be doubled)."""
    return next((k for k in ("X", "Y") if cmd.get(k) is not None and cmd.params[k] >= 0), None)


def _positive_e(cmd: Command) -> bool:
    return cmd.get("E") is not None and cmd.params["E"] >= 0


def _doubled_digit(value: float, rng: np.random.Generator) -> float:
    """``value`` with one digit of its whole part written twice (``157.2`` → ``1557.2``)."""
    whole, _, frac = format_number(value).partition(".")
    k = int(rng.integers(0, len(whole)))
    return float(whole[: k + 1] + whole[k:] + ("." + frac if frac else ""))


def perturb_layer(text: str, rng: np.random.Generator, kind: str | None = None) -> tuple[str, str]:
    """A plausible wrong version of a layer's G-code and the name of what was done to it: extrusion scaled
    down or up, the outline shifted in X, the second half of the moves dropped, one digit of one coordinate
    doubled (the slip a small model makes: ``X1557.2`` for ``X157.2``), or one move extruding 10–20 times
    its share."""
    kind = kind or str(rng.choice(PERTURBATIONS))
    lines = text.splitlines()
    if kind == "truncated":
        return "\n".join(lines[: max(1, len(lines) // 2)]) + "\n", kind
    if kind == "shifted":
        dx = float(rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 3.0))
        return edit_moves(text, lambda cmd: {**cmd.params, "X": round(cmd.params["X"] + dx, XYZ_DECIMALS)}
                          if cmd.get("X") is not None else None), kind
    if kind in ("digit", "extrusion_spike"):
        wanted = (lambda c: _first_coordinate(c) is not None) if kind == "digit" else _positive_e
        commands = [parse_line(line) for line in lines]
        candidates = [i for i, cmd in enumerate(commands) if cmd is not None and cmd.code == "G1" and wanted(cmd)]
        if not candidates:
            return perturb_layer(text, rng, "truncated")
        i = int(rng.choice(candidates))
        cmd = commands[i]
        assert cmd is not None
        if kind == "digit":
            letter = _first_coordinate(cmd)
            assert letter is not None
            new = {**cmd.params, letter: _doubled_digit(cmd.params[letter], rng)}
        else:
            new = {**cmd.params, "E": round(cmd.params["E"] * rng.uniform(10.0, 20.0), E_DECIMALS)}
        return edit_moves("\n".join(lines) + "\n", lambda _: new, range(i, i + 1)), kind
    factor = rng.uniform(0.4, 0.7) if kind == "under_extrusion" else rng.uniform(1.4, 1.9)
    return edit_moves(text, lambda cmd: {**cmd.params, "E": round(cmd.params["E"] * factor, E_DECIMALS)}
                      if cmd.get("E") is not None else None), kind


def revision_examples(rows: Sequence[dict[str, Any]], seed: int, fraction: float, revise: str = "failures"
                      ) -> list[dict[str, Any]]:
    """Supervised revision examples (``messages``) from ``fraction`` of the layer rows of an ``sft`` table:
    the task, a perturbed answer (:func:`perturb_layer`), the simulator's real feedback on it, and the
    reference layer as the revision. With ``revise="failures"`` only perturbations the simulator reports a
    failure for are used (a few draws per row), as only those are sent back in that mode."""
    rng = np.random.default_rng(seed)
    out = []
    for row in rows:
        if row["step_kind"] != "layer" or rng.random() >= fraction:
            continue
        job = PrintJob.from_json(row["job"])
        for _ in range(DRAWS_PER_ROW):
            wrong, _ = perturb_layer(row["completion"], rng)
            scores, feedback = layer_feedback(wrong, job, int(row["layer"]))
            if needs_revision(revise, scores.fatal, scores.defects):
                out.append({"messages": [*conversation(row["prompt"], [wrong], [feedback]),
                                         {"role": "assistant", "content": row["completion"]}]})
                break
    return out
